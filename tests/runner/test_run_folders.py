"""Run-folder names are the identity of a run: pinned for configs of the real config tree.

The names below were computed before the runner was split into typed modules; a change here moves
every finished run of that configuration out of reach, so it must be deliberate (and documented in
docs/runner.md).
"""
from __future__ import annotations

import pytest

from dode.runner import experiment as ex
from dode.runner.points import points_from_overrides

DIGITS = "results/digits/digits-ddpm/"
PINNED = [
    ([], DIGITS, ["ddim-nfe5-none-c042726e", "ddim-nfe5-dode-K10-B100-5ee45ac9", "ddim-nfe10-none-be6e7b2b",
                  "ddim-nfe10-dode-K10-B100-cbf5b854"]),
    (["distill=none"], DIGITS, ["ddim-nfe5-none-c042726e", "ddim-nfe10-none-be6e7b2b"]),
    (["distill=fixed", "nfe=[10]"], DIGITS, ["ddim-nfe10-none-be6e7b2b", "ddim-nfe10-fixed-fc5073eb"]),
    (["distill=lookahead", "distill.lam=0.2", "nfe=7"], DIGITS,
     ["ddim-nfe7-none-ec1737d2", "ddim-nfe7-lookahead-ad86ab3c"]),
    (["scale=5", "batch=10", "nfe=[10]"], DIGITS, ["ddim-nfe10-none-be6e7b2b", "ddim-nfe10-dode-K5-B10-93b32ff4"]),
    (["scale=20", "batch=50", "fit_seed=3", "nfe=[5]"], DIGITS,
     ["ddim-nfe5-none-c042726e", "ddim-nfe5-dode-K20-B50-34e10e05"]),
    (["distill=dode_sep", "solver=ipndm", "nfe=[5,10]"], DIGITS,
     ["ipndm-nfe5-none-49a8d8d1", "ipndm-nfe5-dode_sep-K10-B100-25eb8794", "ipndm-nfe10-none-6cd68032",
      "ipndm-nfe10-dode_sep-K10-B100-81bd9ed0"]),
    (["dataset=imagenet64", "solver=dpm3", "nfe=[10]"], "results/imagenet64/adm-imagenet64-uncond/",
     ["dpm3-nfe10-none-2538d14f", "dpm3-nfe10-dode-K10-B100-0c835c2c"]),
    (["dataset=imagenet128", "solver=ddim", "nfe=[10]", "distill=dode_2"], "results/imagenet128/adm-imagenet128-cond/",
     ["ddim-nfe10-none-a2a38706", "ddim-nfe10-dode_2-K10-B100-8d5cff30"]),
    (["dataset=cifar10", "checkpoint=edm-cifar10-32x32-cond-vp", "solver=heun", "nfe=[5]", "dtype=float64"],
     "results/cifar10/edm-cifar10-32x32-cond-vp/", ["heun-nfe5-none-1c70eee7", "heun-nfe5-dode-K10-B100-5c3d4b8c"]),
]
EVAL_IDS = {"digits": "fd_digits-n10000-0c4793", "imagenet64": "fid50k-n50000-85d1fc",
            "imagenet128": "fid50k-n50000-ca13b6", "cifar10": "fid50k-n50000-276145"}


@pytest.mark.parametrize("overrides,folder,names", PINNED, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_run_folder_names_are_pinned(overrides, folder, names):
    points = points_from_overrides(overrides, with_files=False)
    assert [str(ex.run_dir(p)) for p in points] == [folder + n for n in names]
    dataset = folder.split("/")[1]
    assert {ex.eval_id(p) for p in points} == {EVAL_IDS[dataset]}
