"""dode-run: configs, run folders, seeds, shards, resuming after SIGINT/SIGKILL, many processes.

The end-to-end tests run ``python -m dode.runner`` in subprocesses on an analytic model (a Gaussian
mixture on 1×4×4 images as a discrete VP model, from :mod:`dode.core.oracle`) and a trivial metric, both
given to the runner through ``_target_`` configs in a temporary config folder
(``hydra.searchpath``). ``DODE_TEST_DELAY`` slows every model call so a run can be interrupted
midway; it changes no number, so slow and fast runs share their run folders.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dode.runner import experiment as ex
from dode.runner.cli import check_group_options, main

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
    if delay:
        forward = den.forward

        def slow(x, sigma):
            time.sleep(delay)
            return forward(x, sigma)

        den.forward = slow
    return den


def mean_pixel(images: np.ndarray) -> float:
    return float(images.astype(np.float64).mean())


TEST_CONF = {
    "checkpoint/test-oracle-vp.yaml": "_target_: test_runner.oracle\nvp: true\nchannels: 1\nresolution: 4\n",
    "checkpoint/test-oracle-edm.yaml": "_target_: test_runner.oracle\nvp: false\nchannels: 1\nresolution: 4\n",
    "eval/test-mean.yaml": "_target_: test_runner.mean_pixel\n",
    "dataset/test-tiny.yaml": (
        "defaults:\n  - override /checkpoint@_global_.checkpoint: test-oracle-vp\n"
        "  - override /eval@_global_.eval: test-mean\nname: test-tiny\nresolution: 4\nchannels: 1\nnum_samples: 64\n"),
}
BASE = ["dataset=test-tiny", "progress=false", "nfe=[4]", "seeds=[0,1]", "shard_size=16", "batch_size=8",
        "batch=16", "scale=4"]


@pytest.fixture(scope="module")
def test_conf(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("conf")
    for rel, text in TEST_CONF.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _env(delay: float = 0.0) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests" / "runner"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["DODE_TEST_DELAY"] = str(delay)
    return env


def cmd(conf: Path, results: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "dode.runner", f"hydra.searchpath=[file://{conf}]", f"results_dir={results}",
            *BASE, *args]


def dode_run(conf: Path, results: Path, *args: str) -> int:
    """``dode-run`` on the test model in this process (no interpreter start-up); its exit status."""
    return _main(*cmd(conf, results, *args)[3:])


def shards(results: Path) -> dict[str, tuple[str, int]]:
    """relative shard path → (sha256, mtime_ns)."""
    out = {}
    for p in sorted(results.rglob("shard-*.npz")):
        out[str(p.relative_to(results))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


def digests(results: Path) -> dict[str, str]:
    return {k: v[0] for k, v in shards(results).items()}


def csv_values(results: Path) -> dict:
    df = ex.read_runs(results)
    return {(Path(r.run_dir).name, int(r.seed)): float(r.value) for r in df.itertuples()}


def manifest_count(results: Path) -> int:
    n = 0
    for m in results.rglob("manifest.json"):
        data = ex.read_json(m) or {}
        n += len(data.get("shards", {}))
    return n


@pytest.fixture(scope="module")
def reference(test_conf, tmp_path_factory) -> Path:
    """An uninterrupted one-process run of the base configuration."""
    results = tmp_path_factory.mktemp("reference")
    assert dode_run(test_conf, results) == 0
    return results


# ----------------------------------------------------------------------------------- configuration
def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=False)


def test_default_config_composes():
    cfg = _compose()
    assert list(cfg.nfe) == [5, 10] and cfg.solver.name == "ddim" and cfg.distill.kind == "dode"
    assert cfg.compare_base and list(cfg.seeds) == [0, 1, 2] and cfg.results_dir == "results"
    assert cfg.world_size == 1 and cfg.launcher.name == "local"
    for key in ("scale", "batch", "num_samples", "batch_size"):
        assert int(cfg[key]) > 0


@pytest.mark.parametrize("group", ["solver", "distill", "launcher"])
def test_every_option_composes(group):
    for f in sorted((CONF / group).glob("*.yaml")):
        cfg = _compose(f"{group}={f.stem}")
        if group == "distill":
            ex.distill_kind(dict(cfg.distill))  # registered
        if group == "solver":
            from dode.core.solvers import get_solver

            get_solver(cfg.solver.name)


def test_image_dataset_configs():
    for name in ("cifar10", "celeba64", "imagenet64", "imagenet128", "lsun_bedroom", "ffhq64", "afhqv2_64"):
        cfg = _compose(f"dataset={name}", "solver=dpm3", "nfe=10")
        assert cfg.num_samples == 50000 and cfg.dataset.name == name
        assert (CONF / "checkpoint" / f"{_choice(name)}.yaml").is_file()
    assert _compose("dataset=lsun_bedroom").batch == 25  # the paper's B for LSUN
    assert _compose("dataset=cifar10", "checkpoint=edm-cifar10-32x32-uncond-vp").checkpoint.name == \
        "edm-cifar10-32x32-uncond-vp"  # the command line wins over the dataset's choice


def _choice(dataset: str) -> str:
    text = (CONF / "dataset" / f"{dataset}.yaml").read_text()
    return text.split("override /checkpoint@_global_.checkpoint:")[1].split()[0]


def test_unknown_option_lists_valid_choices(tmp_path, capsys, monkeypatch):
    msg = check_group_options(["solver=dpm9"], CONF)
    assert "dpm9" in msg and "ddim" in msg and "dpmpp3m" in msg
    assert check_group_options(["solver=ddim,ipndm", "nfe=5"], CONF) is None
    assert "dode_sep" in check_group_options(["distill=dode,nope"], CONF)
    monkeypatch.setattr(sys, "argv", ["dode-run", "solver=dpm9", f"results_dir={tmp_path}"])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "valid solver options: ddim" in err and "Traceback" not in err


def test_impossible_nfe_is_explained(test_conf, tmp_path, capsys):
    assert dode_run(test_conf, tmp_path, "solver=heun", "nfe=4") == 2
    err = capsys.readouterr().err
    assert "dode-run: error:" in err and "odd" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.npz"))


def _main(*argv: str) -> int:
    old = sys.argv
    sys.argv = ["dode-run", *argv]
    try:
        main()
        return 0
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        sys.argv = old


def test_missing_checkpoint_says_what_to_download_and_where(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DODE_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    assert _main("solver=dpm3", "nfe=10", "dataset=cifar10", f"results_dir={tmp_path / 'r'}") == 2
    err = capsys.readouterr().err
    assert "model-790000.ckpt" in err and "put it at" in err and str(tmp_path / "ckpt") in err
    assert "make-stats" in err  # and how to make the FID reference statistics
    assert "Traceback" not in err and not list(tmp_path.rglob("*.npz"))


def test_digits_model_and_fd_digits_end_to_end(tmp_path, capsys):
    """The embedded checkpoint and the real metric, tiny: D-DDIM beats DDIM at NFE 4 on FD-digits."""
    assert _main(f"results_dir={tmp_path}", "progress=false", "nfe=[4]", "seeds=[0]", "num_samples=500",
                 "shard_size=250", "batch=50", "scale=4") == 0
    df = ex.read_runs(tmp_path).set_index("distill")
    assert set(df.index) == {"none", "dode"} and (df.metric == "fd_digits").all()
    assert df.loc["dode", "value"] < df.loc["none", "value"]
    assert df.loc["dode", "fit_seconds"] > 0 and np.isnan(df.loc["none", "fit_seconds"])
    (metric,) = (tmp_path / "digits" / "digits-ddpm").glob("*dode*/seed-0/metrics/*.json")
    result = json.loads(metric.read_text())
    assert result["feature_dim"] == 64 and result["features"]["mu"] == [64]
    assert "D-ODE (dode)" in capsys.readouterr().out


def test_teacher_longer_than_T_is_explained(test_conf, tmp_path):
    from dode.runner.distributed import Context

    point = ex.build_points(_point_cfg(tmp_path, nfe=300, scale=10), _CHOICES)[-1]
    with pytest.raises(ex.UserError, match=r"K·N = 10·300 = 3000 .* T = 1000 .* scale ≤ 3"):
        ex.execute(Context(), {"points": [point]})
    assert not list(tmp_path.rglob("*.npz"))  # it fails before any work


_CHOICES = {"dataset": "test-tiny", "checkpoint": "test-oracle-vp", "eval": "test-mean", "solver": "ddim",
            "distill": "dode"}


def _point_cfg(results: Path, **kw) -> dict:
    cfg = {"dataset": {"name": "test-tiny", "num_samples": 64}, "eval": {"_target_": "test_runner.mean_pixel"},
           "checkpoint": {"_target_": "test_runner.oracle", "vp": True, "channels": 1, "resolution": 4},
           "solver": {"name": "ddim", "grid": None, "label": "DDIM"},
           "distill": {"name": "dode", "kind": "dode", "form": "dode", "teacher": None, "label": "D-ODE"},
           "nfe": [4], "compare_base": True, "scale": 4, "batch": 16, "fit_seed": 0, "seeds": [0, 1],
           "num_samples": 64, "batch_size": 8, "shard_size": 16, "dtype": "float32", "results_dir": str(results),
           "progress": False}
    cfg.update(kw)
    return cfg


# ------------------------------------------------------------------------------- folders and seeds
def test_run_folders_follow_the_config(tmp_path):
    base, dode = ex.build_points(_point_cfg(tmp_path), _CHOICES)
    assert ex.run_dir(base) != ex.run_dir(dode)
    assert ex.run_dir(dode) == ex.run_dir(ex.build_points(_point_cfg(tmp_path), _CHOICES)[1])  # deterministic
    assert ex.run_dir(dode).parent == tmp_path / "test-tiny" / "test-oracle-vp"
    assert ex.run_dir(dode).name.startswith("ddim-nfe4-dode-K4-B16-")
    other = ex.build_points(_point_cfg(tmp_path, scale=5, batch_size=3, seeds=[7]), _CHOICES)
    assert ex.run_dir(other[1]) != ex.run_dir(dode)  # K matters for a fitted correction …
    assert ex.run_dir(other[0]) == ex.run_dir(base)  # … not for the base solver; nor batch_size or seeds
    moved = _point_cfg(tmp_path)
    moved["checkpoint"] = {**moved["checkpoint"], "path": "/elsewhere/model.pt", "label": "x"}
    assert ex.run_dir(ex.build_points(moved, _CHOICES)[1]) == ex.run_dir(dode)  # file location is not identity


def test_run_folder_of_other_weights_is_refused_not_reused(test_conf, tmp_path, capsys, monkeypatch):
    args = ("checkpoint=test-oracle-edm", "nfe=[3]", "seeds=[0]", "distill=none")
    assert dode_run(test_conf, tmp_path, *args) == 0
    (folder,) = [p.parent for p in tmp_path.rglob("run.json")]
    recorded = ex.read_json(folder / "run.json")["weights_sha256"]
    assert recorded == ex.weights_digest(oracle(vp=False)) and ex.weights_digest(oracle()) is None  # no tensors
    before = shards(tmp_path)
    monkeypatch.setenv("DODE_TEST_SHIFT", "0.05")
    assert ex.weights_digest(oracle(vp=False)) != recorded
    capsys.readouterr()
    assert dode_run(test_conf, tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert f"{folder} was made with other weights of checkpoint 'test-oracle-edm'" in err
    assert f"sha256 {recorded[:12]}" in err and "Move or delete that folder" in err and "Traceback" not in err
    assert shards(tmp_path) == before and ex.read_json(folder / "run.json")["weights_sha256"] == recorded
    monkeypatch.delenv("DODE_TEST_SHIFT")
    assert dode_run(test_conf, tmp_path, *args) == 0 and shards(tmp_path) == before


def test_seed_streams_are_per_sample_and_disjoint():
    a, _ = ex.make_noise(ex.eval_block(1), range(10, 20), (1, 4, 4))
    b, _ = ex.make_noise(ex.eval_block(1), [15, 12], (1, 4, 4))
    assert torch.equal(a[5], b[0]) and torch.equal(a[2], b[1])  # a sample's noise ignores its batch
    c, _ = ex.make_noise(ex.eval_block(2), range(10, 20), (1, 4, 4))
    f, _ = ex.make_noise(ex.fit_block(0), range(10, 20), (1, 4, 4))
    assert not torch.equal(a, c) and not torch.equal(a, f)
    top = ex.stream_seed(ex.fit_block(ex.MAX_FIT_SEED), ex.BLOCK - 1)
    assert top < 2**32  # torch's CPU generator keeps only 32 bits of a seed
    seeds = {ex.stream_seed(ex.eval_block(s), i) for s in (0, 1, 2) for i in (0, ex.BLOCK - 1)}
    assert len(seeds) == 6 and ex.stream_seed(ex.fit_block(0), 0) > max(seeds)
    with pytest.raises(ex.UserError):
        ex.check_point({**ex.build_points(_point_cfg(Path("r")), _CHOICES)[0], "seeds": [ex.FIT_BLOCK]})


# ----------------------------------------------------------------------------------- shards, csv
def test_manifest_detects_truncated_corrupt_and_adopts_whole_shards(tmp_path):
    sh = ex.Shard(0, 0, 4)
    imgs = np.arange(4 * 2 * 2 * 1, dtype=np.uint8).reshape(4, 2, 2, 1)
    data = ex.encode_shard(imgs, np.arange(0, 4), seed=3)
    m = ex.Manifest(tmp_path, {"seed": 3})
    assert m.check(sh, 3, {})[0] == "missing"
    ex.write_atomic(tmp_path / sh.name, data)
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


def _record_rows(args):
    results, worker = args
    for j in range(5):
        ex.record(results, [{"run_dir": f"run{j % 3}", "seed": worker, "num_samples": 8, "metric": "m",
                             "value": worker * 10 + j, "nfe": 5}])


def test_runs_csv_concurrent_updates_keep_one_row_per_key(tmp_path):
    ex.read_runs(tmp_path)  # pandas imported once, before the fork
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        pool.map(_record_rows, [(tmp_path, w) for w in range(4)], chunksize=1)
    df = ex.read_runs(tmp_path)
    assert len(df) == 4 * 3  # 4 seeds × 3 run folders, re-recorded keys replaced
    for w in range(4):
        got = df[(df.seed == w)].set_index("run_dir")["value"].to_dict()
        assert got == {"run0": w * 10 + 3, "run1": w * 10 + 4, "run2": w * 10 + 2}
    assert not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------------------------ end to end
def test_run_and_rerun_regenerates_nothing(reference, test_conf, capsys):
    before = shards(reference)
    assert len(before) == 2 * 2 * 4  # (base, D-ODE) × 2 seeds × 4 shards
    assert len(csv_values(reference)) == 4
    for folder in reference.glob("test-tiny/test-oracle-vp/*"):
        assert (folder / "run.log").is_file() and (folder / "run.json").is_file()
    assert len(list(reference.rglob("lambdas.json"))) == 1  # one fit, shared by the seeds
    capsys.readouterr()
    assert dode_run(test_conf, reference) == 0
    out = capsys.readouterr().out
    assert shards(reference) == before  # same bytes, not even rewritten
    assert len(ex.read_runs(reference)) == 4  # replaced, not duplicated
    assert "base (none)" in out and "D-ODE (dode)" in out and "λ fit" in out


def test_corrupted_and_truncated_shards_are_regenerated(reference, test_conf, tmp_path, capsys):
    results = tmp_path / "r"
    shutil.copytree(reference, results)
    before = shards(results)
    names = sorted(before)
    bad1, bad2 = results / names[0], results / names[5]
    bad1.write_bytes(bad1.read_bytes()[:100])  # truncated
    data = bytearray(bad2.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    bad2.write_bytes(bytes(data))
    capsys.readouterr()
    assert dode_run(test_conf, results) == 0
    assert "corrupted or truncated" in "".join(capsys.readouterr())
    after = shards(results)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    untouched = [k for k in names if k not in (names[0], names[5])]
    assert all(after[k][1] == before[k][1] for k in untouched)
    assert csv_values(results) == csv_values(reference)


def _wait_for_shards(results: Path, proc, n: int, timeout: float = 60) -> None:
    end = time.time() + timeout
    while manifest_count(results) < n:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < end, "the run made no progress"
        time.sleep(0.05)


def test_sigint_midway_then_resume_matches_uninterrupted(reference, test_conf, tmp_path):
    results = tmp_path / "r"
    proc = subprocess.Popen(cmd(test_conf, results), env=_env(delay=0.01), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    _wait_for_shards(results, proc, 3)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "rerun the same command to resume" in err
    done = shards(results)
    assert 3 <= len(done) < 16
    assert dode_run(test_conf, results) == 0
    after = shards(results)
    assert all(after[k] == v for k, v in done.items())  # nothing complete was regenerated
    assert digests(results) == digests(reference)
    assert csv_values(results) == csv_values(reference)
    assert not list(results.rglob(".*.tmp"))


def test_sigkill_of_a_worker_then_resume_matches_one_process(reference, test_conf, tmp_path):
    results = tmp_path / "r"
    proc = subprocess.Popen(cmd(test_conf, results, "world_size=2"), env=_env(delay=0.01), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    _wait_for_shards(results, proc, 3)
    workers = _spawned_workers(proc.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode != 0 and "rerun the same command to resume" in err, err[-2000:]
    done = shards(results)
    assert len(done) < 16
    assert dode_run(test_conf, results) == 0
    after = shards(results)
    assert all(after[k] == v for k, v in done.items())
    assert digests(results) == digests(reference)
    assert csv_values(results) == csv_values(reference)


def _spawned_workers(pid: int) -> list[int]:
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            out.append(int(child))
    return sorted(out)


def test_two_processes_and_other_batch_sizes_give_identical_samples(reference, test_conf, tmp_path):
    results = tmp_path / "r"
    assert dode_run(test_conf, results, "world_size=2", "batch_size=5") == 0
    assert digests(results) == digests(reference)
    assert csv_values(results) == csv_values(reference)


def test_concurrent_runs_of_different_configs_stay_apart(test_conf, tmp_path):
    # a slow run in another process; once it is midway, a second configuration runs here
    proc = subprocess.Popen(cmd(test_conf, tmp_path, "nfe=[3]", "compare_base=false"), env=_env(delay=0.01),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    _wait_for_shards(tmp_path, proc, 1)
    assert dode_run(test_conf, tmp_path, "nfe=[5]", "compare_base=false") == 0
    assert proc.poll() is None or manifest_count(tmp_path) > 0  # (they overlapped)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    folders = sorted(tmp_path.glob("test-tiny/test-oracle-vp/*"))
    assert [f.name.split("-")[1] for f in folders] == ["nfe3", "nfe5"]
    for f in folders:
        spec = json.loads((f / "run.json").read_text())["spec"]
        assert f.name.startswith(f"ddim-nfe{spec['nfe']}-")
        for m in f.rglob("manifest.json"):
            assert json.loads(m.read_text())["run_dir"] == str(f)
    df = ex.read_runs(tmp_path)
    assert sorted(df.nfe.tolist()) == [3, 3, 5, 5]
    assert not list(tmp_path.rglob(".*.tmp"))


@pytest.mark.slow
def test_default_run_on_digits_finishes(tmp_path):
    start = time.time()
    r = subprocess.run([sys.executable, "-m", "dode.runner", f"results_dir={tmp_path}"], env=_env(),
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "D-ODE" in r.stdout and "ddim" in r.stdout
    assert len(ex.read_runs(tmp_path)) == 2 * 2 * 3
    print(f"default run: {time.time() - start:.0f} s")
