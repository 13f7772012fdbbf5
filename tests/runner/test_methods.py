"""The method registry: every distill kind fits (through the public dode.learn API) and loads its
correction; a distill config may name its own ``fit: module:function``."""
from __future__ import annotations

import json

import pytest
import torch

from dode import Correction
from dode.errors import UserError
from dode.runner.methods import METHODS, Method, method_of
from dode.runner.points import points_from_overrides
from dode.runner.results import read_runs
from runner_helpers import CONF, compose, custom_fit, dode_run, run_main

SMALL = {"iters": 4, "round_iters": 2, "rounds": 1, "grid_evals": 4, "teacher_nfe": 19, "fine": 12}


def _point(option: str, *overrides: str):
    """The fitted point of ``distill=<option>`` at NFE 4, K = 4 (config nodes only: no files needed)."""
    return points_from_overrides([f"distill={option}", "nfe=[4]", "scale=4", *overrides], with_files=False)[-1]


def _fit(models, point, seed: int = 19) -> Correction:
    noise = torch.randn(8, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # the runner fits under no_grad; S4S turns gradients back on itself
        return point.method.fit(models["edm"], noise, point, False, {"fit_seed": 0})


@pytest.mark.parametrize("name", ["iia", "s4s", "s4s_alt", "ld3", "gits", "amed", "pas"])
def test_distill_configs_and_registered_learned_methods(name, models):
    cfg = compose(f"distill={name}").distill
    assert cfg.name == name and cfg.kind == name and name in METHODS and "fit" not in cfg
    assert "fit:" not in (CONF / "distill" / f"{name}.yaml").read_text()  # registered once, in dode.runner.methods
    point = _point(name, *(f"distill.{k}={v}" for k, v in SMALL.items() if k in cfg))
    assert point.method is METHODS[name] and point.fits
    corr = _fit(models, point)
    assert corr.provenance["fit_seed"] == 0 and corr.provenance["method"] == name and len(corr.theta) == 4


@pytest.mark.parametrize("name", ["gits", "amed"])
def test_the_guard_option_reaches_gits_and_amed(name, models):
    small = "distill.fine=12" if name == "gits" else "distill.iters=2"
    on = _fit(models, _point(name, small)).provenance
    assert on["guard"] and on["kept"] != on["fallback"] and on["distance_fit"] >= 0 and on["distance_base"] > 0
    off = _fit(models, _point(name, small, "distill.guard=false")).provenance
    assert "guard" not in off and off["grid_learned"]


def test_dode_fixed_and_none_through_the_registry(models, tmp_path):
    dode = _fit(models, _point("dode"))
    assert dode.form == "dode" and len(dode.theta) == 4 and dode.provenance["fit_seed"] == 0
    assert all(len(t) == 1 for t in dode.theta) and any(t[0] != 0 for t in dode.theta)
    again = METHODS["dode"].load(dode.save(tmp_path / "lambdas.json"))
    assert again.theta == dode.theta and again.form == "dode"
    fixed = _fit(models, _point("fixed", "distill.lam=0.3"))
    assert not METHODS["fixed"].fits and fixed.theta == [[0.3]] * 4
    assert fixed.provenance["fixed_lambda"] == 0.3 and fixed.provenance["fit_seconds"] == 0.0
    lookahead = _fit(models, _point("lookahead"))
    assert lookahead.form == "lookahead" and lookahead.theta == [[0.1]] * 4
    assert METHODS["none"] == Method(None, None, fits=False) and not _point("none").fits


def test_a_distill_config_may_name_its_own_fit():
    own = method_of({"kind": "test-custom", "fit": "runner_helpers:custom_fit"})
    assert own.fit is custom_fit and own.load == Correction.load and own.fits
    assert not method_of({"kind": "test-custom", "fit": "runner_helpers:custom_fit", "fits": False}).fits
    assert method_of({"kind": "iia", "load": "dode.core.path:Correction.load"}).fit is METHODS["iia"].fit
    with pytest.raises(UserError, match="not registered; valid kinds: none, dode, fixed, iia, s4s, s4s_alt"):
        method_of({"kind": "nope"})
    with pytest.raises(UserError, match="runner_helpers:nope.*cannot be imported"):
        method_of({"kind": "test-custom", "fit": "runner_helpers:nope"})


def test_own_fit_runs_end_to_end(tiny_conf, tmp_path):
    assert dode_run(tiny_conf, tmp_path, "distill=test-custom", "compare_base=false", "seeds=[0]") == 0
    (lambdas,) = tmp_path.rglob("lambdas.json")
    assert lambdas.parent.name.startswith("ddim-nfe4-test-custom-K4-B16-")  # K, B and the fit seed matter
    saved = json.loads(lambdas.read_text())
    assert saved["theta"] == [[0.25]] * 4 and saved["provenance"]["fit_batch"] == 16
    assert read_runs(tmp_path)["distill"].tolist() == ["test-custom"]


def test_gits_runs_end_to_end_on_the_embedded_digits_model(tmp_path):
    """dode-run distill=gits on the default (embedded digits-ddpm, FD-digits): the grid is fitted once,
    saved in lambdas.json and sampled with, next to the base solver's row."""
    assert run_main(f"results_dir={tmp_path}", "progress=false", "distill=gits", "nfe=[4]", "seeds=[0]",
                    "num_samples=200", "shard_size=200", "batch=16", "distill.fine=24") == 0
    df = read_runs(tmp_path).set_index("distill")
    assert set(df.index) == {"none", "gits"} and (df.metric == "fd_digits").all() and df.loc["gits", "fit_seconds"] > 0
    (lambdas,) = tmp_path.rglob("lambdas.json")
    prov = json.loads(lambdas.read_text())["provenance"]
    grid = prov["grid"]
    assert prov["method"] == "gits" and prov["grid_learned"] and prov["fine"] == 24 and prov["batch"] == 16
    assert len(grid) == 5 and grid[-1] == 0 and all(a > b for a, b in zip(grid, grid[1:]))


def test_amed_runs_end_to_end_on_the_embedded_model(tmp_path, capsys):
    """distill=amed on the embedded digits model: fitted, its grid and AFS replayed at NFE 5."""
    assert run_main(f"results_dir={tmp_path}", "progress=false", "distill=amed", "nfe=[5]", "seeds=[0]",
                    "num_samples=200", "shard_size=200", "batch=20", "scale=2", "distill.iters=3",
                    "distill.guard=false") == 0  # 3 Adam steps lose to DDIM: the guard would give DDIM back
    (lambdas,) = tmp_path.rglob("lambdas.json")
    corr = Correction.load(lambdas)
    assert corr.form == "amed" and corr.afs is not None and len(corr.theta) == 5 and corr.provenance["grid_learned"]
    assert set(read_runs(tmp_path)["distill"]) == {"none", "amed"}
    assert "AMED-Plugin (DDIM) (amed)" in capsys.readouterr().out  # conf/distill/amed.yaml's label


def test_s4s_alt_starts_from_dmn_steps_unless_the_run_sets_its_own_grid(models, tmp_path, capsys):
    """distill.init_grid (S4S-Alt's default dmn): the search starts from DMN's steps on the run's protocol;
    a run's own solver.grid wins; null starts from the protocol grid; a bad name is refused before work."""
    from dode.core.sampling import solver_grid
    from dode.runner.methods import check_init_grid, start_grid

    default, own, off = (_point("s4s_alt", *extra) for extra in
                         ((), ("solver.grid=logsnr",), ("distill.init_grid=null",)))
    assert start_grid(default).spacing == "dmn" and start_grid(own).spacing == "logsnr"
    assert start_grid(off) == off.grid and start_grid(own) == own.grid
    fitted = _fit(models, _point("s4s_alt", "distill.iters=2", "distill.round_iters=1", "distill.rounds=1",
                                 "distill.grid_iters=2"))
    dmn = solver_grid(models["edm"], "ddim", 4, start_grid(default))[1]
    assert fitted.provenance["base_sigmas"] == [float(v) for v in dmn]
    with pytest.raises(UserError, match="init_grid='dnm'.*valid: .*dmn"):
        check_init_grid({"init_grid": "dnm"})
    assert run_main(f"results_dir={tmp_path}", "distill=s4s_alt", "distill.init_grid=dnm", "nfe=[4]") == 2
    assert "init_grid='dnm'" in capsys.readouterr().err and not list(tmp_path.rglob("run.json"))
