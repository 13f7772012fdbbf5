"""The config tree: the default config, every option of the groups, the image datasets."""
from __future__ import annotations

import pytest

from dode.runner.methods import METHODS, method_of
from dode.runner.points import points_from_overrides
from runner_helpers import CONF, compose


def test_default_config_composes():
    cfg = compose()
    assert list(cfg.nfe) == [5, 10] and cfg.solver.name == "ddim" and cfg.distill.kind == "dode"
    assert cfg.compare_base and list(cfg.seeds) == [0, 1, 2] and cfg.results_dir == "results"
    assert cfg.world_size == 1 and cfg.launcher.name == "local"
    for key in ("scale", "batch", "num_samples", "batch_size"):
        assert int(cfg[key]) > 0


def _options(group: str) -> list[str]:
    return [f.stem for f in sorted((CONF / group).glob("*.yaml"))]


@pytest.mark.parametrize("option", _options("solver"))
def test_every_solver_option_composes_and_builds_points(option):
    from dode.core.solvers import get_solver

    cfg = compose(f"solver={option}")
    assert cfg.solver.name == option and cfg.solver.label and "grid" in cfg.solver
    assert get_solver(cfg.solver.name).name == option
    (base, fitted) = points_from_overrides([f"solver={option}", "nfe=[5]"], with_files=False)
    assert base.choices.solver == fitted.choices.solver == option and fitted.solver == dict(cfg.solver)
    assert (base.distill["kind"], fitted.distill["kind"], fitted.nfe) == ("none", "dode", 5)


@pytest.mark.parametrize("option", _options("distill"))
def test_every_distill_option_composes_and_builds_points(option):
    cfg = compose(f"distill={option}")
    assert cfg.distill.name == option and cfg.distill.kind in METHODS and "fit" not in cfg.distill
    assert method_of(dict(cfg.distill)) is METHODS[cfg.distill.kind]  # registered, not overridden
    points = points_from_overrides([f"distill={option}", "nfe=[5]"], with_files=False)
    assert points[-1].choices.distill == option and points[-1].distill == dict(cfg.distill)
    assert [p.choices.distill for p in points] == (["none"] if option == "none" else ["none", option])


@pytest.mark.parametrize("option", _options("launcher"))
def test_every_launcher_option_composes_and_builds_points(option):
    cfg = compose(f"launcher={option}")
    assert cfg.launcher.name == option and cfg.launcher.backend == "auto" and cfg.launcher.timeout_min > 0
    assert points_from_overrides([f"launcher={option}"], with_files=False)


def test_image_dataset_configs():
    for name in ("cifar10", "celeba64", "imagenet64", "imagenet128", "lsun_bedroom", "ffhq64", "afhqv2_64"):
        cfg = compose(f"dataset={name}", "solver=dpm3", "nfe=10")
        assert cfg.num_samples == 50000 and cfg.dataset.name == name
        assert (CONF / "checkpoint" / f"{_choice(name)}.yaml").is_file()
    assert compose("dataset=lsun_bedroom").batch == 25  # the paper's B for LSUN
    assert compose("dataset=cifar10", "checkpoint=edm-cifar10-32x32-uncond-vp").checkpoint.name == \
        "edm-cifar10-32x32-uncond-vp"  # the command line wins over the dataset's choice


def _choice(dataset: str) -> str:
    text = (CONF / "dataset" / f"{dataset}.yaml").read_text()
    return text.split("override /checkpoint@_global_.checkpoint:")[1].split()[0]
