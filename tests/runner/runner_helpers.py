"""Helpers of the runner tests: a tiny analytic model and metric for ``_target_`` configs, the
temporary config folder that names them, and ``dode-run`` in this process or in a subprocess.

The end-to-end tests run the runner on an analytic model (a Gaussian mixture on 1×4×4 images as a
discrete VP model, from :mod:`dode.core.oracle`) and a trivial metric, both given to the runner
through ``_target_`` configs in a temporary config folder (``hydra.searchpath``).
``DODE_TEST_DELAY`` slows every model call so a run can be interrupted midway; it changes no
number, so slow and fast runs share their run folders. ``DODE_TEST_KILL=<file>``: the first process
to call the model creates that file and kills itself (SIGKILL), as a worker killed by the system.
"""
from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dode.runner.cli import main
from dode.runner.results import read_runs
from dode.runner.store import read_json

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


# ------------------------------------------------------------------------ model and metric for tests
def oracle(vp: bool = True, res: int = 4):
    """A 3-component Gaussian mixture on (1, res, res) images; a VP ε-model when ``vp``."""
    from dode.core.oracle import GaussianMixture

    g = torch.Generator().manual_seed(0)
    shift = float(os.environ.get("DODE_TEST_SHIFT", 0))  # "retrained" weights under the same name
    mix = GaussianMixture(torch.rand(3, 1, res, res, generator=g) * 1.6 - 0.8 + shift, stds=[0.1, 0.2, 0.15])
    den = mix.as_vp() if vp else mix
    delay = float(os.environ.get("DODE_TEST_DELAY", 0))
    kill = os.environ.get("DODE_TEST_KILL")
    if delay or kill:
        forward = den.forward

        def slow(x, sigma):
            if kill:
                try:
                    os.close(os.open(kill, os.O_CREAT | os.O_EXCL))
                    os.kill(os.getpid(), signal.SIGKILL)
                except FileExistsError:
                    pass
            time.sleep(delay)
            return forward(x, sigma)

        den.forward = slow
    return den


def mean_pixel(images: np.ndarray) -> float:
    return float(images.astype(np.float64).mean())


def custom_fit(denoiser, noise, point, progress: bool, provenance: dict):
    """A distill config's own fit (``fit: runner_helpers:custom_fit``): λ = ``lam`` at every
    evaluation, with the size of the fit batch in its provenance."""
    from dode import Correction

    return Correction.fixed("dode", float(point.distill["lam"]), point.nfe, fit_batch=len(noise), **provenance)


TEST_CONF = {
    "checkpoint/test-oracle-vp.yaml": "_target_: runner_helpers.oracle\nvp: true\nchannels: 1\nresolution: 4\n",
    "checkpoint/test-oracle-edm.yaml": "_target_: runner_helpers.oracle\nvp: false\nchannels: 1\nresolution: 4\n",
    "eval/test-mean.yaml": "_target_: runner_helpers.mean_pixel\n",
    "distill/test-custom.yaml": "name: test-custom\nkind: test-custom\nfit: runner_helpers:custom_fit\nlam: 0.25\n",
    "dataset/test-tiny.yaml": (
        "defaults:\n  - override /checkpoint@_global_.checkpoint: test-oracle-vp\n"
        "  - override /eval@_global_.eval: test-mean\nname: test-tiny\nresolution: 4\nchannels: 1\nnum_samples: 64\n"),
}
BASE = ["dataset=test-tiny", "progress=false", "nfe=[4]", "seeds=[0,1]", "shard_size=16", "batch_size=8",
        "batch=16", "scale=4"]

CHOICES = {"dataset": "test-tiny", "checkpoint": "test-oracle-vp", "eval": "test-mean", "solver": "ddim",
           "distill": "dode"}


def point_cfg(results: Path, **kw) -> dict:
    """A resolved ``dode-run`` config of the test model (D-ODE at NFE 4, K = 4, B = 16)."""
    cfg = {"dataset": {"name": "test-tiny", "num_samples": 64}, "eval": {"_target_": "runner_helpers.mean_pixel"},
           "checkpoint": {"_target_": "runner_helpers.oracle", "vp": True, "channels": 1, "resolution": 4},
           "solver": {"name": "ddim", "grid": None, "label": "DDIM"},
           "distill": {"name": "dode", "kind": "dode", "form": "dode", "teacher": None, "label": "D-ODE"},
           "nfe": [4], "compare_base": True, "scale": 4, "batch": 16, "fit_seed": 0, "seeds": [0, 1],
           "num_samples": 64, "batch_size": 8, "shard_size": 16, "dtype": "float32", "results_dir": str(results),
           "progress": False}
    cfg.update(kw)
    return cfg


# ------------------------------------------------------------------------------------ running
def write_test_conf(root: Path) -> Path:
    """The test configs of :data:`TEST_CONF` under ``root``."""
    for rel, text in TEST_CONF.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def env(delay: float = 0.0) -> dict:
    """The environment of a ``dode-run`` subprocess: this checkout and these helpers importable."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests" / "runner"), out.get("PYTHONPATH", "")])
    out["OMP_NUM_THREADS"] = "1"
    out["DODE_TEST_DELAY"] = str(delay)
    return out


def cmd(conf: Path, results: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "dode.runner", f"hydra.searchpath=[file://{conf}]", f"results_dir={results}",
            *BASE, *args]


def run_main(*argv: str) -> int:
    """``dode-run <argv>`` in this process (no interpreter start-up); its exit status."""
    old = sys.argv
    sys.argv = ["dode-run", *argv]
    try:
        main()
        return 0
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        sys.argv = old


def dode_run(conf: Path, results: Path, *args: str) -> int:
    """``dode-run`` on the test model in this process; its exit status."""
    return run_main(*cmd(conf, results, *args)[3:])


# ------------------------------------------------------------------------------------ inspecting
def shards(results: Path) -> dict[str, tuple[str, int]]:
    """relative shard path → (sha256, mtime_ns)."""
    out = {}
    for p in sorted(results.rglob("shard-*.npz")):
        out[str(p.relative_to(results))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


def digests(results: Path) -> dict[str, str]:
    return {k: v[0] for k, v in shards(results).items()}


def csv_values(results: Path) -> dict:
    df = read_runs(results)
    return {(Path(r.run_dir).name, int(r.seed)): float(r.value) for r in df.itertuples()}


def manifest_count(results: Path) -> int:
    n = 0
    for m in results.rglob("manifest.json"):
        data = read_json(m) or {}
        n += len(data.get("shards", {}))
    return n


def compose(*overrides: str):
    """The repository's config composed with ``overrides`` (no Hydra runtime config)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=False)
