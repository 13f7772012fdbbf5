"""Points: typed records built from a config, checked before any work starts."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from dode.errors import UserError
from dode.runner.distributed import Context
from dode.runner.loading import load_model
from dode.runner.points import Choices, Point, build_points, check_point
from dode.runner.seeds import FIT_BLOCK
from dode.runner.stages import execute
from runner_helpers import CHOICES, dode_run, oracle, point_cfg


def test_points_are_typed_and_stored_in_run_json_order(tmp_path):
    base, dode = build_points(point_cfg(tmp_path), CHOICES)
    assert isinstance(dode, Point) and dode.choices == Choices(**CHOICES)
    assert base.choices.distill == "none" and base.distill["kind"] == "none" and not base.fits and dode.fits
    assert (dode.nfe, dode.scale, dode.batch, dode.seeds, dode.results_dir) == (4, 4, 16, (0, 1), str(tmp_path))
    data = json.loads(json.dumps(dode.to_dict()))
    assert list(data) == ["dataset", "checkpoint", "eval", "solver", "scale", "batch", "fit_seed", "num_samples",
                          "batch_size", "shard_size", "dtype", "results_dir", "progress", "seeds", "choices", "nfe",
                          "distill", "precision", "compile", "channels_last"]
    assert data["choices"] == CHOICES and data["seeds"] == [0, 1] and data["distill"]["kind"] == "dode"


def test_points_reject_what_cannot_run():
    point = build_points(point_cfg(Path("r")), CHOICES)[0]
    with pytest.raises(UserError):
        check_point(dataclasses.replace(point, seeds=(FIT_BLOCK,)))
    with pytest.raises(UserError, match="fit_seed must be in"):
        check_point(dataclasses.replace(point, fit_seed=29))
    with pytest.raises(UserError, match="scale must be an integer, got 4.5"):
        build_points(point_cfg(Path("r"), scale=4.5), CHOICES)
    with pytest.raises(UserError, match="nfe must be an integer"):
        build_points(point_cfg(Path("r"), nfe=["4"]), CHOICES)
    with pytest.raises(UserError, match="dtype must be float32 or float64"):
        dataclasses.replace(point, dtype="float16").torch_dtype()


def test_teacher_longer_than_T_is_explained(tmp_path):
    point = build_points(point_cfg(tmp_path, nfe=300, scale=10), CHOICES)[-1]
    with pytest.raises(UserError, match=r"K·N = 10·300 = 3000 .* T = 1000 .* scale ≤ 3"):
        execute(Context(), {"points": [point]})
    assert not list(tmp_path.rglob("*.npz"))  # it fails before any work


def test_load_model_gives_the_runners_point_and_model():
    den, point = load_model("digits", "digits-edm")
    assert isinstance(point, Point) and point.choices.checkpoint == "digits-edm"
    assert point.checkpoint["name"] == "digits-edm" and point.dataset["name"] == "digits"
    assert not den.training and not any(p.requires_grad for p in den.parameters())


def _images(results: Path) -> dict:
    """run folder's seed/shard → uint8 images of every shard under ``results``."""
    out = {}
    for p in sorted(results.rglob("shard-*.npz")):
        with np.load(p) as z:
            out[str(p.relative_to(p.parents[2]))] = z["images"]
    return out


def test_a_list_of_sigma_as_solver_grid_is_an_explicit_grid(tiny_conf, tmp_path, capsys):
    """solver.grid=[σ_0, …, 0]: the protocol's own grid as a list gives the same images as the protocol
    (in another run folder: the list is hashed); another list gives other images; a list whose length
    does not fit the NFE, or that is not decreasing, is refused before any work."""
    from dode.core.sampling import solver_grid

    args = ("solver=unipc2_bh2", "nfe=[4]", "seeds=[0]", "distill=none")
    sigmas = solver_grid(oracle(), "unipc2_bh2", 4)[1].tolist()
    as_list = "solver.grid=[" + ",".join(repr(s) for s in sigmas) + "]"
    assert dode_run(tiny_conf, tmp_path / "protocol", *args) == 0
    assert dode_run(tiny_conf, tmp_path / "list", *args, as_list) == 0
    (run,) = (tmp_path / "list").rglob("run.json")
    assert json.loads(run.read_text())["point"]["solver"]["grid"] == sigmas
    (other,) = (tmp_path / "protocol").rglob("run.json")
    assert run.parent.name != other.parent.name  # the list enters the run hash
    same, listed = _images(tmp_path / "protocol"), _images(tmp_path / "list")
    assert same.keys() == listed.keys() and all(np.array_equal(same[k], listed[k]) for k in same)
    assert dode_run(tiny_conf, tmp_path / "ays", *args, "solver.grid=[150.0,20.0,2.0,0.3,0.0]") == 0
    assert not all(np.array_equal(a, b) for a, b in zip(same.values(), _images(tmp_path / "ays").values()))
    capsys.readouterr()
    assert dode_run(tiny_conf, tmp_path / "bad", *args, "solver.grid=[150.0,20.0,2.0,0.0]") == 2
    err = capsys.readouterr().err
    assert "solver.grid lists 4 σ (3 steps), but this solver at NFE 4 needs 5 σ" in err and "Traceback" not in err
    assert dode_run(tiny_conf, tmp_path / "bad", *args, "solver.grid=[150.0,200.0,2.0,0.3,0.0]") == 2
    assert "must be strictly decreasing" in capsys.readouterr().err
    assert not list((tmp_path / "bad").rglob("*.npz"))
