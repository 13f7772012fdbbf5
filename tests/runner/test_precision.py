"""Precision options of generation: hashed only when not the default, bf16 close to fp32 on the CPU,
the network restored afterwards."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from dode.core.denoisers import weights_digest
from dode.errors import UserError
from dode.runner.loading import load_model
from dode.runner.points import build_points
from dode.runner.precision import network_of, precision_mode
from dode.runner.seeds import make_noise
from dode.runner.store import run_dir, run_key, run_spec
from runner_helpers import CHOICES, dode_run, point_cfg


def test_only_options_other_than_the_default_change_the_run_key(tmp_path):
    base, dode = build_points(point_cfg(tmp_path), CHOICES)
    same = build_points(point_cfg(tmp_path, precision="fp32", compile=False, channels_last=False), CHOICES)
    assert [run_dir(p) for p in same] == [run_dir(base), run_dir(dode)] and "precision" not in run_spec(dode)
    keys = {run_key(dode)}
    for kw in ({"precision": "tf32"}, {"precision": "bf16"}, {"precision": "fp16"}, {"compile": True},
               {"channels_last": True}, {"precision": "bf16", "channels_last": True}):
        point = build_points(point_cfg(tmp_path, **kw), CHOICES)[1]
        assert run_spec(point)["precision"] == kw
        keys.add(run_key(point))
    assert len(keys) == 7  # every combination its own run
    with pytest.raises(UserError, match="unknown precision 'half'; valid precisions: fp32, tf32, bf16, fp16"):
        build_points(point_cfg(tmp_path, precision="half"), CHOICES)


def test_bf16_on_cpu_differs_from_fp32_only_slightly_and_restores_the_network():
    from dode.core.sampling import sample

    den, point = load_model("digits", "digits-ddpm")
    net = network_of(den)
    digest = weights_digest(den)
    noise, _ = make_noise(0, range(16), (1, 8, 8))
    with torch.no_grad():
        fp32 = sample(den, noise, solver="ddim", nfe=5)
        with precision_mode(den, "cpu", "bf16", channels_last=True):
            assert "forward" in net.__dict__
            bf16 = sample(den, noise, solver="ddim", nfe=5)
        again = sample(den, noise, solver="ddim", nfe=5)
    assert bf16.dtype == torch.float32 and torch.equal(again, fp32)  # fp32 after the block, bit for bit
    assert "forward" not in net.__dict__ and weights_digest(den) == digest
    assert all(p.is_contiguous() for p in net.parameters())
    diff = float((bf16 - fp32).abs().max())
    assert 0 < diff < 0.15, diff  # bf16 keeps 8 bits of mantissa: close, not equal
    assert float((bf16 - fp32).abs().mean()) < 0.02


def test_a_bf16_run_has_its_own_folder_and_records_it(tiny_conf, tmp_path):
    args = ("distill=none", "seeds=[0]")
    assert dode_run(tiny_conf, tmp_path, *args) == 0
    assert dode_run(tiny_conf, tmp_path, *args, "precision=bf16") == 0
    folders = sorted(p.parent for p in tmp_path.rglob("run.json"))
    assert len(folders) == 2
    specs = [json.loads((f / "run.json").read_text())["spec"] for f in folders]
    assert sorted(s.get("precision", {}).get("precision", "fp32") for s in specs) == ["bf16", "fp32"]
    assert all(len(list(f.rglob("shard-*.npz"))) == 4 for f in folders)


def test_precision_needs_a_module():
    with pytest.raises(UserError, match="precision options need a torch module"):
        with precision_mode(lambda x, s: x, "cpu", "bf16"):
            pass
    den, point = load_model("digits", "digits-ddpm")
    assert dataclasses.replace(point, precision="bf16").speed() == {"precision": "bf16", "compile": False,
                                                                    "channels_last": False}
