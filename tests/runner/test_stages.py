"""The stages end to end: fit → generate → metric → runs.csv, resuming after SIGINT/SIGKILL, many
processes, concurrent runs, weights that changed under a checkpoint name.

The runs use the analytic test model and metric of runner_helpers.py through ``_target_`` configs.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dode.runner.points import build_points
from dode.runner.results import read_runs
from dode.core.denoisers import weights_digest
from dode.runner.store import read_json
from runner_helpers import (CHOICES, ROOT, cmd, csv_values, digests, dode_run, env, manifest_count, oracle,
                            point_cfg, run_main, shards)


def test_digits_model_and_fd_digits_end_to_end(tmp_path, capsys):
    """The embedded checkpoint and the real metric, tiny: D-DDIM beats DDIM at NFE 4 on FD-digits."""
    assert run_main(f"results_dir={tmp_path}", "progress=false", "nfe=[4]", "seeds=[0]", "num_samples=500",
                 "shard_size=250", "batch=50", "scale=4") == 0
    df = read_runs(tmp_path).set_index("distill")
    assert set(df.index) == {"none", "dode"} and (df.metric == "fd_digits").all()
    assert df.loc["dode", "value"] < df.loc["none", "value"]
    assert df.loc["dode", "fit_seconds"] > 0 and np.isnan(df.loc["none", "fit_seconds"])
    (metric,) = (tmp_path / "digits" / "digits-ddpm").glob("*dode*/seed-0/metrics/*.json")
    result = json.loads(metric.read_text())
    assert result["feature_dim"] == 64 and result["features"]["mu"] == [64]
    assert "DDIM (none)" in (out := capsys.readouterr().out) and "D-DDIM (dode)" in out  # conf/distill labels


def test_run_folder_of_other_weights_is_refused_not_reused(tiny_conf, tmp_path, capsys, monkeypatch):
    args = ("checkpoint=test-oracle-edm", "nfe=[3]", "seeds=[0]", "distill=none")
    assert dode_run(tiny_conf, tmp_path, *args) == 0
    (folder,) = [p.parent for p in tmp_path.rglob("run.json")]
    recorded = read_json(folder / "run.json")["weights_sha256"]
    assert recorded == weights_digest(oracle(vp=False)) and weights_digest(oracle()) is None  # no tensors
    before = shards(tmp_path)
    monkeypatch.setenv("DODE_TEST_SHIFT", "0.05")
    assert weights_digest(oracle(vp=False)) != recorded
    capsys.readouterr()
    assert dode_run(tiny_conf, tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert f"{folder} was made with other weights of checkpoint 'test-oracle-edm'" in err
    assert f"sha256 {recorded[:12]}" in err and "Move or delete that folder" in err and "Traceback" not in err
    assert shards(tmp_path) == before and read_json(folder / "run.json")["weights_sha256"] == recorded
    monkeypatch.delenv("DODE_TEST_SHIFT")
    assert dode_run(tiny_conf, tmp_path, *args) == 0 and shards(tmp_path) == before


# ------------------------------------------------------------------------------------ end to end
def test_run_and_rerun_regenerates_nothing(reference, tiny_conf, capsys):
    before = shards(reference)
    assert len(before) == 2 * 2 * 4  # (base, D-ODE) × 2 seeds × 4 shards
    assert len(csv_values(reference)) == 4
    for folder in reference.glob("test-tiny/test-oracle-vp/*"):
        assert (folder / "run.log").is_file() and (folder / "run.json").is_file()
    assert len(list(reference.rglob("lambdas.json"))) == 1  # one fit, shared by the seeds
    capsys.readouterr()
    assert dode_run(tiny_conf, reference) == 0
    out = capsys.readouterr().out
    assert shards(reference) == before  # same bytes, not even rewritten
    assert len(read_runs(reference)) == 4  # replaced, not duplicated
    assert "DDIM (none)" in out and "D-DDIM (dode)" in out and "λ fit" in out


def test_corrupted_and_truncated_shards_are_regenerated(reference, tiny_conf, tmp_path, capsys):
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
    assert dode_run(tiny_conf, results) == 0
    assert "corrupted or truncated" in "".join(capsys.readouterr())
    after = shards(results)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    untouched = [k for k in names if k not in (names[0], names[5])]
    assert all(after[k][1] == before[k][1] for k in untouched)
    assert csv_values(results) == csv_values(reference)


def wait_for_shards(results: Path, proc, n: int, timeout: float = 60) -> None:
    end = time.time() + timeout
    while manifest_count(results) < n:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < end, "the run made no progress"
        time.sleep(0.05)


def test_sigint_midway_then_resume_matches_uninterrupted(reference, tiny_conf, tmp_path):
    results = tmp_path / "r"
    proc = subprocess.Popen(cmd(tiny_conf, results), env=env(delay=0.01), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    wait_for_shards(results, proc, 3)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "rerun the same command to resume" in err
    done = shards(results)
    assert 3 <= len(done) < 16
    assert dode_run(tiny_conf, results) == 0
    after = shards(results)
    assert all(after[k] == v for k, v in done.items())  # nothing complete was regenerated
    assert digests(results) == digests(reference)
    assert csv_values(results) == csv_values(reference)
    assert not list(results.rglob(".*.tmp"))


def test_sigkill_of_a_worker_then_resume_matches_one_process(reference, tiny_conf, tmp_path):
    results = tmp_path / "r"
    proc = subprocess.Popen(cmd(tiny_conf, results, "world_size=2"), env=env(delay=0.01), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    wait_for_shards(results, proc, 3)
    workers = spawned_workers(proc.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode != 0 and "rerun the same command to resume" in err, err[-2000:]
    done = shards(results)
    assert len(done) < 16
    assert dode_run(tiny_conf, results) == 0
    after = shards(results)
    assert all(after[k] == v for k, v in done.items())
    assert digests(results) == digests(reference)
    assert csv_values(results) == csv_values(reference)


def test_ctrl_c_with_two_workers_stops_them_without_leaked_semaphores(tiny_conf, tmp_path):
    """Ctrl-C reaches the whole process group: the workers end on their own, so the resource tracker
    has nothing to warn about (killing them at once left their tqdm semaphores behind)."""
    results = tmp_path / "r"
    proc = subprocess.Popen(cmd(tiny_conf, results, "world_size=2"), env=env(delay=0.01), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    wait_for_shards(results, proc, 3)
    workers = spawned_workers(proc.pid)
    assert len(workers) == 2
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "rerun the same command to resume" in err, err[-2000:]
    assert "leaked" not in err and "Traceback" not in err, err[-2000:]
    assert not [w for w in workers if Path(f"/proc/{w}").exists()]


def test_spawned_workers_get_omp_num_threads_unless_it_is_set(monkeypatch):
    from dode.runner.distributed import omp_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with omp_threads(1):
        assert os.environ["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in os.environ
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with omp_threads(1):
        assert os.environ["OMP_NUM_THREADS"] == "3"
    with omp_threads(None):
        assert os.environ["OMP_NUM_THREADS"] == "3"


def spawned_workers(pid: int) -> list[int]:
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            out.append(int(child))
    return sorted(out)


def test_two_processes_and_other_batch_sizes_give_identical_samples(reference, tiny_conf, tmp_path):
    results = tmp_path / "r"
    assert dode_run(tiny_conf, results, "world_size=2", "batch_size=5") == 0
    assert digests(results) == digests(reference)
    assert csv_values(results) == csv_values(reference)


def test_concurrent_runs_of_different_configs_stay_apart(tiny_conf, tmp_path):
    # a slow run in another process; once it is midway, a second configuration runs here
    proc = subprocess.Popen(cmd(tiny_conf, tmp_path, "nfe=[3]", "compare_base=false"), env=env(delay=0.01),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    wait_for_shards(tmp_path, proc, 1)
    assert dode_run(tiny_conf, tmp_path, "nfe=[5]", "compare_base=false") == 0
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
    df = read_runs(tmp_path)
    assert sorted(df.nfe.tolist()) == [3, 3, 5, 5]
    assert not list(tmp_path.rglob(".*.tmp"))


@pytest.mark.slow
def test_default_run_on_digits_finishes(tmp_path):
    start = time.time()
    r = subprocess.run([sys.executable, "-m", "dode.runner", f"results_dir={tmp_path}"], env=env(),
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "D-DDIM (dode)" in r.stdout and "ddim" in r.stdout
    assert len(read_runs(tmp_path)) == 2 * 2 * 3
    print(f"default run: {time.time() - start:.0f} s")


def test_progress_bars_only_on_a_terminal(tiny_conf, tmp_path, capsys, monkeypatch):
    """progress=true draws tqdm bars on a terminal only; in a log or pipe (here: captured) stderr stays
    free of them, the run log's lines remain."""
    from dode.runner.stages import show_progress

    assert dode_run(tiny_conf, tmp_path / "log", "progress=true", "compare_base=false") == 0
    err = capsys.readouterr().err
    assert "img/s" not in err and "it/s" not in err and "%|" not in err, err[-500:]
    point = build_points(point_cfg(tmp_path, progress=True), CHOICES)[0]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert show_progress(point)
    assert not show_progress(build_points(point_cfg(tmp_path, progress=False), CHOICES)[0])
