"""Run folders: names and hashes follow the config; shards and their manifest.

The run-folder names of the real config tree below are the identity of finished runs. They were
computed before the runner was split into typed modules; a change here moves every finished run of
that configuration out of reach, so it must be deliberate (and documented in docs/runner.md).
"""
from __future__ import annotations

import numpy as np
import pytest

from dode.runner.points import build_points, points_from_overrides
from dode.runner.store import Manifest, Shard, encode_shard, eval_id, run_dir, write_atomic
from runner_helpers import CHOICES, point_cfg

DIGITS = "results/digits/digits-ddpm/"
PINNED = [
    ([], DIGITS, ["ddim-nfe5-none-d207200c", "ddim-nfe5-dode-K10-B100-5c730325", "ddim-nfe10-none-7901e8fb",
                  "ddim-nfe10-dode-K10-B100-8de203e2"]),
    (["distill=none"], DIGITS, ["ddim-nfe5-none-d207200c", "ddim-nfe10-none-7901e8fb"]),
    (["distill=fixed", "nfe=[10]"], DIGITS, ["ddim-nfe10-none-7901e8fb", "ddim-nfe10-fixed-e4c2bb56"]),
    (["distill=lookahead", "distill.lam=0.2", "nfe=7"], DIGITS,
     ["ddim-nfe7-none-efb8af78", "ddim-nfe7-lookahead-7597bbd6"]),
    (["scale=5", "batch=10", "nfe=[10]"], DIGITS, ["ddim-nfe10-none-7901e8fb", "ddim-nfe10-dode-K5-B10-eb19b180"]),
    (["scale=20", "batch=50", "fit_seed=3", "nfe=[5]"], DIGITS,
     ["ddim-nfe5-none-d207200c", "ddim-nfe5-dode-K20-B50-01e602f9"]),
    (["distill=dode_sep", "solver=ipndm", "nfe=[5,10]"], DIGITS,
     ["ipndm-nfe5-none-2ce26d88", "ipndm-nfe5-dode_sep-K10-B100-e1b8c0ea", "ipndm-nfe10-none-a1b76bb7",
      "ipndm-nfe10-dode_sep-K10-B100-c8b4bf23"]),
    (["dataset=imagenet64", "solver=dpm3", "nfe=[10]"], "results/imagenet64/adm-imagenet64-uncond/",
     ["dpm3-nfe10-none-e5ad0ae5", "dpm3-nfe10-dode-K10-B100-3d560874"]),
    (["dataset=imagenet128", "solver=ddim", "nfe=[10]", "distill=dode_2"], "results/imagenet128/adm-imagenet128-cond/",
     ["ddim-nfe10-none-9516f956", "ddim-nfe10-dode_2-K10-B100-1b173734"]),
    (["dataset=cifar10", "checkpoint=edm-cifar10-32x32-cond-vp", "solver=heun", "nfe=[5]", "dtype=float64"],
     "results/cifar10/edm-cifar10-32x32-cond-vp/", ["heun-nfe5-none-6cee4a01", "heun-nfe5-dode-K10-B100-7b113c26"]),
    # every hash changed once more when conf/solver gained the sampling protocol keys (issue 12: protocol,
    # grid, endpoint, inner; the default `paper` protocol changes the grids of discrete-time models)
    # the learned methods' hashes changed once, when conf/distill/{iia,s4s,s4s_alt}.yaml lost their `fit:` line
    # (before: iia 44fe2ebb, s4s 601b69e3, s4s_alt 8942fddf, s4s_fd 0ccb4d00, s4s_alt_fd 380e97dc)
    (["distill=iia", "nfe=[10]"], DIGITS, ["ddim-nfe10-none-7901e8fb", "ddim-nfe10-iia-K10-B100-fa0b8d4c"]),
    (["distill=s4s", "nfe=[5]"], DIGITS, ["ddim-nfe5-none-d207200c", "ddim-nfe5-s4s-K10-B100-5dfddde9"]),
    # S4S-Alt's changed again when its distill file gained the gradient grid search and the relaxed objective
    # (issue 17; before: s4s_alt 115f5008, s4s_alt_fd 29f2b609)
    (["distill=s4s_alt", "nfe=[5]"], DIGITS, ["ddim-nfe5-none-d207200c", "ddim-nfe5-s4s_alt-K10-B100-199b425f"]),
    (["distill=s4s_fd", "nfe=[5]"], DIGITS, ["ddim-nfe5-none-d207200c", "ddim-nfe5-s4s_fd-K10-B100-f1bcc26f"]),
    (["distill=s4s_alt_fd", "nfe=[5]"], DIGITS,
     ["ddim-nfe5-none-d207200c", "ddim-nfe5-s4s_alt_fd-K10-B100-699855d1"]),
    (["distill=ld3", "nfe=[5]"], DIGITS, ["ddim-nfe5-none-d207200c", "ddim-nfe5-ld3-K10-B100-3b165224"]),
    (["distill=gits", "nfe=[5]"], DIGITS, ["ddim-nfe5-none-d207200c", "ddim-nfe5-gits-K10-B100-3cbd230c"]),
]
EVAL_IDS = {"digits": "fd_digits-n10000-0c4793", "imagenet64": "fid50k-n50000-85d1fc",
            "imagenet128": "fid50k-n50000-ca13b6", "cifar10": "fid50k-n50000-276145"}


@pytest.mark.parametrize("overrides,folder,names", PINNED, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_run_folder_names_are_pinned(overrides, folder, names):
    points = points_from_overrides(overrides, with_files=False)
    assert [str(run_dir(p)) for p in points] == [folder + n for n in names]
    dataset = folder.split("/")[1]
    assert {eval_id(p) for p in points} == {EVAL_IDS[dataset]}


def test_run_folders_follow_the_config(tmp_path):
    base, dode = build_points(point_cfg(tmp_path), CHOICES)
    assert run_dir(base) != run_dir(dode)
    assert run_dir(dode) == run_dir(build_points(point_cfg(tmp_path), CHOICES)[1])  # deterministic
    assert run_dir(dode).parent == tmp_path / "test-tiny" / "test-oracle-vp"
    assert run_dir(dode).name.startswith("ddim-nfe4-dode-K4-B16-")
    other = build_points(point_cfg(tmp_path, scale=5, batch_size=3, seeds=[7]), CHOICES)
    assert run_dir(other[1]) != run_dir(dode)  # K matters for a fitted correction …
    assert run_dir(other[0]) == run_dir(base)  # … not for the base solver; nor batch_size or seeds
    moved = point_cfg(tmp_path)
    moved["checkpoint"] = {**moved["checkpoint"], "path": "/elsewhere/model.pt", "label": "x"}
    assert run_dir(build_points(moved, CHOICES)[1]) == run_dir(dode)  # file location is not identity


def test_manifest_detects_truncated_corrupt_and_adopts_whole_shards(tmp_path):
    sh = Shard(0, 0, 4)
    imgs = np.arange(4 * 2 * 2 * 1, dtype=np.uint8).reshape(4, 2, 2, 1)
    data = encode_shard(imgs, np.arange(0, 4), seed=3)
    m = Manifest(tmp_path, {"seed": 3})
    assert m.check(sh, 3, {})[0] == "missing"
    write_atomic(tmp_path / sh.name, data)
    status, got = m.check(sh, 3, m.read()["shards"])  # written but not yet recorded (killed in between)
    assert status == "adopted" and np.array_equal(got, imgs)
    assert m.check(sh, 3, m.read()["shards"])[0] == "complete"
    (tmp_path / sh.name).write_bytes(data[: len(data) // 2])
    assert m.check(sh, 3, m.read()["shards"])[0] == "corrupt"
    flipped = bytearray(data)
    flipped[-40] ^= 0xFF
    (tmp_path / sh.name).write_bytes(bytes(flipped))
    assert m.check(sh, 3, m.read()["shards"])[0] == "corrupt"
    assert m.check(sh, 4, {})[0] == "corrupt"  # another seed's shard is not this one
