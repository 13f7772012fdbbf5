"""mk/paper.mk: every make target is expanded with `make -n` and every dode-run command it prints is
split into its Hydra jobs (as Hydra's basic sweeper does) and turned into the runner's points by
the runner's own code, which checks names, NFE, seeds, sizes and — on digits — K·N ≤ T with the
model. The render commands must parse with the report's command line."""
from __future__ import annotations

import functools
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from dode.report import cli
from dode.report.protocol import protocol
from dode.report.render import ARTIFACTS
from dode.runner.points import points_from_overrides

REPO = Path(__file__).resolve().parents[2]
MK = REPO / "mk" / "paper.mk"

TARGETS = ["fig-fid-nfe", "table-time", "table-formulations", "table-ablation-scale", "table-ablation-batch",
           "table-lookahead", "table-learned", "fig-cosine", "fig-trajectory", "fig-samples", "paper"]


@functools.lru_cache(maxsize=None)
def _make_n(target: str, *args: str, query: bool) -> str:
    """`make -n` of a target. The makefile reads conf/paper.yaml and the registry through `python -m
    dode.report query make` (about 2 s a call); unless ``query``, the answer is computed here by the
    same function and given on the command line (PAPER_QUERY=…), which the makefile then uses."""
    dataset = next((a.split("=", 1)[1] for a in args if a.startswith("DATASET=")), "digits")
    given = [] if query else ["PAPER_QUERY=" + " ".join(cli.make_variables(dataset))]
    return subprocess.run(["make", "--no-print-directory", "-n", "-f", str(MK), target, *args, *given], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout


def make_commands(target: str, *args: str, query: bool = False) -> list[list[str]]:
    """The commands `make -n target args` prints, split at `&&` and `;` (a lone `true` left out)."""
    return split_commands(_make_n(target, *args, query=query))


def split_commands(out: str) -> list[list[str]]:
    """The commands of `make -n` output, one token list each (split at `&&` and `;`, a lone `true` left out)."""
    cmds = []
    for line in out.splitlines():
        tokens = shlex.split(line)
        cmd: list[str] = []
        for tok in tokens + ["&&"]:
            if tok in ("&&", ";"):
                if cmd and cmd != ["true"]:
                    cmds.append(cmd)
                cmd = []
            else:
                cmd.append(tok)
    return cmds


def compose_jobs(cmd: list[str]) -> list[list[str]]:
    """A `dode-run -m ...` command → the override lists of its Hydra jobs (basic sweeper's split)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert Path(cmd[0]).name == "dode-run", cmd
    args = [a for a in cmd[1:] if a not in ("-m", "--multirun")]
    assert all("=" in a for a in args), args
    parsed = OverridesParser.create().parse_overrides(args)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


_COMPOSED: dict = {}


def _points(overrides: list[str], with_files: bool):
    """The runner's points of one job (cached: `make paper` repeats the jobs of every target)."""
    key = (tuple(overrides), with_files)
    if key not in _COMPOSED:
        _COMPOSED[key] = points_from_overrides(overrides, with_files)
    return _COMPOSED[key]


_MODELS: dict = {}
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@needs_make
@pytest.mark.parametrize("target", TARGETS)
def test_make_target_expands_to_valid_dode_run_commands_on_digits(target):
    import torch

    from dode.runner.loading import load_denoiser
    from dode.runner.points import check_with_model

    cmds = make_commands(target)
    runs = [c for c in cmds if Path(c[0]).name == "dode-run"]
    renders = [c for c in cmds if c[:3] == ["python", "-m", "dode.report"]]
    assert renders, cmds
    assert all(Path(c[0]).name in ("dode-run", "python") for c in cmds), cmds
    for c in renders:
        a = cli.parser().parse_args(c[3:])
        assert all(w in ARTIFACTS for w in a.what) and a.dataset == "digits"
    if target not in ("fig-cosine", "fig-trajectory"):
        assert runs, f"{target} runs no sweep"
    for cmd in runs:
        assert "progress=false" in cmd and "num_samples=2000" in cmd  # digits: the small documented sweep
        for job in compose_jobs(cmd):
            points = _points(job, with_files=True)
            assert points
            for p in points:  # K·N ≤ T and the grid, with the (small) embedded model
                ck = p.choices.checkpoint
                if ck not in _MODELS:
                    _MODELS[ck] = load_denoiser(p, "cpu")
                with torch.no_grad():
                    check_with_model(p, _MODELS[ck])


@needs_make
@pytest.mark.parametrize("target", ["fig-fid-nfe", "table-formulations", "table-ablation-scale", "table-lookahead",
                                    "fig-samples"])
def test_make_target_uses_paper_settings_on_a_real_checkpoint(target):
    cmds = make_commands(target, "DATASET=cifar10")
    runs = [c for c in cmds if Path(c[0]).name == "dode-run"]
    assert runs
    for cmd in runs:
        assert "dataset=cifar10" in cmd and not any(a.startswith("num_samples=") for a in cmd)
        for job in compose_jobs(cmd):
            for p in _points(job, with_files=False):
                assert p.num_samples == 50000 and p.eval["name"] == "fid50k"
                assert p.choices.checkpoint in ("ddpm-cifar10", "edm-cifar10-32x32-uncond-vp")
                # FID as the paper computed it: pytorch-fid for the noise model, EDM's fid.py for the EDM one
                want = "legacy_pytorch" if p.choices.checkpoint == "ddpm-cifar10" else "legacy_tensorflow"
                assert p.eval["mode"] == want, (cmd, p.eval)
                if p.distill.get("kind") == "dode" and target != "table-ablation-scale":
                    assert p.scale == 10 and p.batch == 100
                if p.choices.checkpoint == "ddpm-cifar10":  # K·N ≤ T = 1000 for the discrete model
                    assert p.scale * p.nfe <= 1000


@needs_make
def test_fig_samples_falls_back_to_the_noise_model():
    cmds = make_commands("fig-samples", "DATASET=celeba64")
    runs = [c for c in cmds if Path(c[0]).name == "dode-run"]
    assert len(runs) == 1 and "checkpoint=ddpm-celeba64" in runs[0] and "solver=ddim" in runs[0]
    for job in compose_jobs(runs[0]):
        assert _points(job, with_files=False)


@needs_make
def test_runs_learned_runs_each_base_at_the_learned_nfe_on_both_models():
    """conf/paper.yaml's learned.bases (SOLVER or SOLVER@GRID) reach dode-run through `query make`:
    distill=none, solver.grid only where given, the learned NFE, both models; LEARNED_BASES overrides."""
    nfe = "nfe=[" + ",".join(map(str, protocol().learned_nfe)) + "]"
    for ck in ("digits-ddpm", "digits-edm"):
        runs = [c for c in make_commands("runs-learned") if f"checkpoint={ck}" in c and "distill=none" in c]
        by_solver = {next(a for a in c if a.startswith("solver=")): c for c in runs}
        assert {"solver=unipc3_bh2", "solver=dpmpp2m"} <= set(by_solver)
        unipc = by_solver["solver=unipc3_bh2"]
        assert nfe in unipc and not any("solver.grid" in a for a in unipc)
        assert nfe in by_solver["solver=dpmpp2m"] and "solver.grid=dmn" in by_solver["solver=dpmpp2m"]
    runs = [c for c in make_commands("runs-learned", "LEARNED_BASES=ipndm@logsnr") if "distill=none" in c]
    assert [a for c in runs for a in c if a.startswith("solver.grid=")] == ["solver.grid=logsnr"] * 2


@needs_make
def test_runs_learned_fits_the_extra_batches_on_both_models():
    """conf/paper.yaml's learned.extra_batches (METHOD:B) reach dode-run as distill=METHOD batch=B at the
    learned NFE on both digits models; LEARNED_EXTRA overrides (empty: none)."""
    nfe = "nfe=[" + ",".join(map(str, protocol().learned_nfe)) + "]"
    runs = [c for c in make_commands("runs-learned") if "batch=400" in c]
    assert sorted(next(a for a in c if a.startswith("checkpoint=")) for c in runs) == \
        ["checkpoint=digits-ddpm", "checkpoint=digits-edm"]
    assert all("distill=s4s_alt_fd" in c and "solver=ddim" in c and nfe in c for c in runs)
    for job in compose_jobs(runs[0]):
        assert all(p.batch == 400 for p in _points(job, with_files=False))
    runs = [c for c in make_commands("runs-learned", "LEARNED_EXTRA=s4s:50") if any(a.startswith("batch=") for a in c)]
    assert len(runs) == 2 and all("distill=s4s" in c and "batch=50" in c for c in runs)
    assert not [c for c in make_commands("runs-learned", "LEARNED_EXTRA=") if any(a.startswith("batch=") for a in c)]


@needs_make
def test_make_checkpoint_override_reaches_every_command():
    cmds = make_commands("table-formulations", "DATASET=cifar10", "CHECKPOINT=diffusers-ddpm-cifar10-32", query=True)
    assert any("checkpoint=diffusers-ddpm-cifar10-32" in c for c in cmds)
    assert any("--checkpoint" in c and "diffusers-ddpm-cifar10-32" in c for c in cmds)


@needs_make
def test_make_artifacts_are_the_registry():
    """`make paper` renders every registered artifact, in the registry's order, each after its sweeps;
    the checkpoints come from conf/paper.yaml (no list of its own in the makefile)."""
    cmds = make_commands("paper", query=True)
    assert cmds == make_commands("paper")  # the makefile's own query gives what the tests give it
    renders = [cli.parser().parse_args(c[3:]).what for c in cmds if c[:3] == ["python", "-m", "dode.report"]]
    assert [w for what in renders for w in what] == list(ARTIFACTS)
    assert all(len(what) == 1 for what in renders)
    assert "ifeq ($(DATASET),cifar10)" not in MK.read_text() and "ddim:1000" not in MK.read_text()
    for name, a in ARTIFACTS.items():  # a make target per artifact: its sweep target's commands, then its render
        if a.sweep == "runs-samples" or a.sweep is None:
            cmds = make_commands(name)
            assert cmds[:-1] == (make_commands(a.sweep) if a.sweep else []) and name in cmds[-1]


@needs_make
def test_table_learned_on_edm_cifar10_runs_the_field_protocol_on_that_model_only():
    """`make table-learned-edm-cifar10` (issue 18): every learned method and base of conf/paper.yaml on EDM's
    CIFAR-10 model only, FID as EDM's fid.py (legacy_tensorflow), the dataset's 50K samples, three seeds,
    the teacher row, and the report of that model alone."""
    cmds = make_commands("table-learned-edm-cifar10", query=True)
    runs = [c for c in cmds if Path(c[0]).name == "dode-run"]
    assert runs and all("checkpoint=edm-cifar10-32x32-uncond-vp" in c and "eval.mode=legacy_tensorflow" in c
                        and "dataset=cifar10" in c and "'seeds=[0,1,2]'" not in c and "seeds=[0,1,2]" in c
                        and not any(a.startswith("num_samples=") for a in c) for c in runs)
    learned = next(c for c in runs if "distill=none" not in c)
    methods = next(a for a in learned if a.startswith("distill=")).split("=")[1].split(",")
    assert methods == list(protocol().learned_for("cifar10")) and "amed" in methods and "s4s_fd" not in methods
    assert any("solver=heun" in c and "nfe=399" in c for c in runs)
    (report,) = [c for c in cmds if c[:3] == ["python", "-m", "dode.report"]]
    assert "--edm-checkpoint" in report and "--checkpoint" not in report and "table-learned" in report
