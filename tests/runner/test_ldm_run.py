"""dode-run on a CompVis LDM (loader ldm_compvis) end to end on the CPU: a tiny Lightning .ckpt and
config.yaml, D-ODE fit on latents, generate, VQ decode, a metric; the shards equal an independent run."""
from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("diffusers")

from dode import Correction  # noqa: E402
from dode.core.sampling import sample  # noqa: E402
from dode.eval.data import to_uint8  # noqa: E402
from dode.models.checkpoints import load_checkpoint  # noqa: E402
from dode.runner.results import read_runs  # noqa: E402
from dode.runner.seeds import make_noise  # noqa: E402
from runner_helpers import ROOT, run_main, write_test_conf  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "models"))
from tiny_ldm import tiny_ldm, write_ldm  # noqa: E402


def test_ldm_run_fits_generates_decodes_and_scores(tmp_path):
    folder = write_ldm(tmp_path / "ldm", *tiny_ldm(seed=3), scale_factor=0.8)
    conf = write_test_conf(tmp_path / "conf")
    ck = {"name": "test-ldm", "loader": "ldm_compvis", "path": str(folder / "model.ckpt"),
          "ldm_config": {"path": str(folder / "config.yaml")}}
    (conf / "checkpoint" / "test-ldm.yaml").write_text(
        f"name: test-ldm\nloader: ldm_compvis\npath: {ck['path']}\nldm_config:\n  path: {folder / 'config.yaml'}\n")
    (conf / "dataset" / "test-bedroom.yaml").write_text(
        "defaults:\n  - override /checkpoint@_global_.checkpoint: test-ldm\n  - override /eval@_global_.eval: test-mean\n"
        "name: test-bedroom\nresolution: 16\nchannels: 3\nnum_samples: 4\n")
    args = [f"hydra.searchpath=[file://{conf}]", f"results_dir={tmp_path / 'results'}", "dataset=test-bedroom",
            "progress=false", "nfe=[3]", "seeds=[0]", "shard_size=4", "batch_size=4", "batch=4", "scale=2",
            "solver=ddim", "distill=dode"]
    assert run_main(*args) == 0
    df = read_runs(tmp_path / "results")
    assert set(df["distill"]) == {"none", "dode"} and set(df["nfe_convention"]) == {"network"}
    (dode_dir,) = [p.parent for p in (tmp_path / "results").rglob("lambdas.json")]
    den = load_checkpoint(ck)
    noise, _ = make_noise(0, range(0, 4), (3, 8, 8))
    want = to_uint8(den.decode(sample(den, noise, solver="ddim", nfe=3,
                                      lambdas=Correction.load(dode_dir / "lambdas.json"))))
    with np.load(dode_dir / "seed-0" / "samples" / "shard-0000000-0000004.npz") as z:
        got = z["images"]
    assert got.shape == (4, 16, 16, 3) and np.abs(got.astype(int) - want.astype(int)).max() <= 1
