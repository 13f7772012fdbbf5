"""Points: typed records built from a config, checked before any work starts."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from dode.errors import UserError
from dode.runner.distributed import Context
from dode.runner.points import Choices, Point, build_points, check_point, load_model
from dode.runner.seeds import FIT_BLOCK
from dode.runner.stages import execute
from runner_helpers import CHOICES, point_cfg


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
