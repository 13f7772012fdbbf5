"""A battery of bad inputs and faults: each ends with exit status 2 (a user error), one message naming
the problem and the valid choices, no traceback — and, for faults, nothing lost: a rerun finishes.

Most cases run ``dode-run`` in this process (:func:`runner_helpers.run_main`): they fail while the
config is checked, before any model is loaded.
"""
from __future__ import annotations

import errno
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from runner_helpers import dode_run, run_main

NO_TRACE = ("Traceback", "HYDRA_FULL_ERROR", "weights_only=False")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    """Files that are not checkpoints (text, random bytes, an HTML page) and fake FID statistics."""
    root = tmp_path_factory.mktemp("bad")
    (root / "text.pt").write_text("hello, this is not a model\n")
    (root / "random.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "page.pth").write_text("<!DOCTYPE html><html><body>Please sign in</body></html>\n")
    for name in ("text.pt", "random.pt", "page.pth"):
        shutil.copy(root / name, root / (Path(name).stem + ".pkl"))
    np.savez(root / "stats.npz", mu=np.zeros(4), sigma=np.eye(4))
    return root


def check(code: int, capsys, *words: str, status: int = 2) -> str:
    err = capsys.readouterr().err
    assert code == status, err
    for w in NO_TRACE:
        assert w not in err, err
    assert "dode-run: error:" in err
    for w in words:
        assert w in err, (w, err)
    return err


# (arguments after the test model's base config, key words of the message)
ON_TEST_MODEL = [
    (["seeds=abc"], ["seeds must be integers", "'abc'"]),
    (["seeds=[0,abc]"], ["seeds must be integers"]),
    (["seeds=1.5"], ["seeds must be integers", "1.5"]),
    (["seeds=[-1]"], ["evaluation seeds", "[0, 400)"]),
    (["seeds=[400]"], ["evaluation seeds", "[0, 400)"]),
    (["seeds=[]"], ["must not be empty"]),
    (["nfe=abc"], ["nfe must be an integer", "'abc'"]),
    (["nfe=[4,abc]"], ["nfe must be an integer"]),
    (["nfe=[]"], ["must not be empty"]),
    (["nfe=2.5"], ["nfe must be an integer"]),
    (["world_size=abc"], ["world_size must be an integer ≥ 1", "'abc'"]),
    (["world_size=0"], ["world_size must be an integer ≥ 1", "got 0"]),
    (["world_size=-2"], ["world_size must be an integer ≥ 1", "got -2"]),
    (["world_size=true"], ["world_size must be an integer ≥ 1"]),
    (["world_size=1.5"], ["world_size must be an integer ≥ 1"]),
    (["device=tpu"], ["unknown device 'tpu'", "auto, cpu, cuda"]),
    (["device=gpu"], ["unknown device 'gpu'", "cuda:<index>"]),
    (["device=cuda:x"], ["unknown device 'cuda:x'"]),
    (["progress=maybe"], ["progress must be true or false", "'maybe'"]),
    (["progress=2"], ["progress must be true or false"]),
    (["compare_base=yes"], ["compare_base must be true or false"]),
    (["results_dir="], ["results_dir must name a folder"]),
    (["dtype=float16"], ["unknown dtype 'float16'", "float32, float64"]),
    (["precision=fp8"], ["unknown precision 'fp8'", "fp32, tf32, bf16, fp16"]),
    (["compile=maybe"], ["compile must be true or false", "'maybe'"]),
    (["+nfes=5"], ["unknown key 'nfes'", "`+nfes=5`", "Did you mean `nfe`", "Valid top-level keys", "seeds"]),
    (["+seed=3"], ["unknown key 'seed'", "Did you mean `seeds`"]),
    (["+word_size=2"], ["unknown key 'word_size'", "Did you mean `world_size`"]),
    (["~seeds"], ["seeds", "removed"]),
    (["scale=0"], ["scale must be a positive integer"]),
    (["scale=abc"], ["scale must be an integer"]),
    (["batch=0"], ["batch must be in [1"]),
    (["batch_size=0"], ["batch_size must be a positive integer"]),
    (["shard_size=-1"], ["shard_size must be a positive integer"]),
    (["num_samples=0"], ["num_samples must be in [1"]),
    (["num_samples=many"], ["num_samples must be an integer"]),
    (["fit_seed=99"], ["fit_seed must be in [0, 28]"]),
    (["fit_seed=abc"], ["fit_seed must be an integer"]),
    (["distill.kind=nope"], ["distill kind 'nope' is not registered", "dode, fixed"]),
    (["distill=fixed", "distill.lam=abc"], ["distill=fixed", "distill.lam must be a number", "'abc'"]),
    (["distill=fixed", "distill.lam=null"], ["distill.lam must be a number", "None"]),
    (["distill=iia", "distill.substeps=abc"], ["distill.substeps must be an integer ≥ 1 or null"]),
    (["distill=iia", "distill.substeps=0"], ["distill.substeps must be an integer ≥ 1 or null"]),
    (["solver=heun", "nfe=4"], ["odd"]),
    (["solver.protocol=authors"], ["unknown protocol 'authors'", "paper, dode"]),
    (["solver.endpoint=one"], ["unknown endpoint 'one'", "zero, sigma_min"]),
    (["solver.inner=middle"], ["unknown inner 'middle'", "grid, logsnr"]),
    (["solver.grid=cosine"], ["unknown grid 'cosine'", "uniform_torch"]),
    (["+distill.variant=theirs"], ["distill.variant must be one of aligned, authors", "'theirs'"]),
    (["checkpoint.resolution=8"], ["test-oracle-vp makes 1×8×8 images", "test-tiny has 1×4×4"]),
    (["checkpoint.channels=3"], ["makes 3×4×4 images", "1×4×4"]),
    (["+dataset.num_classes=10", "+checkpoint.num_classes=1000"], ["conditioned on 1000 classes", "has 10"]),
]


@pytest.mark.parametrize("args,words", ON_TEST_MODEL, ids=[" ".join(a) for a, _ in ON_TEST_MODEL])
def test_bad_input_on_the_test_model(tiny_conf, tmp_path, capsys, args, words):
    check(dode_run(tiny_conf, tmp_path, *args), capsys, *words)
    assert not list(tmp_path.rglob("*.npz")) and not list(tmp_path.rglob("runs.csv"))


# the repository's own config tree (no hydra.searchpath): group options and keys are checked before Hydra
ON_REPO_CONF = [
    (["nfes=5"], ["unknown key 'nfes'", "Did you mean `nfe`"]),
    (["+nfes=5"], ["unknown key 'nfes'", "Did you mean `nfe`"]),
    (["sed=1"], ["unknown key 'sed'", "Valid top-level keys"]),
    (["solver=dpm9"], ["unknown solver option 'dpm9'", "valid solver options: ddim"]),
    (["distill=nope"], ["unknown distill option 'nope'", "dode_sep"]),
    (["dataset=mnist"], ["unknown dataset option 'mnist'", "cifar10"]),
    (["launcher=k8s"], ["unknown launcher option 'k8s'", "local, slurm"]),
    (["experiment=nope"], ["unknown experiment option 'nope'", "smoke"]),
    (["dataset=cifar10", "checkpoint=digits-ddpm"],
     ["checkpoint digits-ddpm makes 1×8×8 images", "dataset cifar10 has 3×32×32", "ddpm-cifar10"]),
    (["checkpoint=ddpm-cifar10"],
     ["checkpoint ddpm-cifar10 makes 3×32×32", "dataset digits has 1×8×8", "digits-ddpm"]),
    (["dataset=cifar10", "checkpoint=ddpm-cifar10", "eval=fd_digits"], ["eval=fd_digits scores 1×8×8 images"]),
    (["solver.grid=nope"], ["nope"]),
    (["nfe=250", "scale=10"], ["scale=10 is impossible", "scale ≤ 4"]),
    (["dataset=imagenet64", "checkpoint=edm-imagenet-64x64-cond-adm", "checkpoint.num_classes=10"],
     ["conditioned on 10 classes but dataset imagenet64 has 1000"]),
]


@pytest.mark.parametrize("args,words", ON_REPO_CONF, ids=[" ".join(a) for a, _ in ON_REPO_CONF])
def test_bad_input_on_the_repository_config(tmp_path, capsys, args, words):
    code = run_main(*args, f"results_dir={tmp_path}", "progress=false", "seeds=[0]", "num_samples=10")
    check(code, capsys, *words)
    assert not list(tmp_path.rglob("*.npz"))


FILES = [("text.pt", "it is a text file"), ("random.pt", "not a readable checkpoint"),
         ("page.pth", "HTML/XML page")]


@pytest.mark.parametrize("name,words", FILES)
def test_a_file_that_is_not_a_checkpoint_is_named(bad_files, tmp_path, capsys, name, words):
    code = run_main(f"checkpoint.path={bad_files / name}", f"results_dir={tmp_path}", "progress=false", "nfe=4")
    check(code, capsys, str(bad_files / name), words, "should be a PyTorch state dict")


@pytest.mark.parametrize("name", ["text.pkl", "random.pkl", "page.pkl"])
def test_a_file_that_is_not_an_edm_pickle_is_named(bad_files, tmp_path, capsys, name):
    code = run_main("dataset=cifar10", "checkpoint=edm-cifar10-32x32-uncond-vp", f"checkpoint.path={bad_files / name}",
                    f"eval.ref_stats={bad_files / 'stats.npz'}", f"results_dir={tmp_path}", "progress=false", "nfe=4")
    check(code, capsys, str(bad_files / name), "EDM network pickle")


class _Payload:
    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


def test_a_malicious_pickle_is_refused_and_its_payload_never_runs(bad_files, tmp_path, capsys):
    """Issue 13's pickle: ``{"ema": E()}`` whose unpickling calls ``os.system("touch ...")``."""
    marker, evil = tmp_path / "PWNED", tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"ema": _Payload(f"touch {marker}")}))
    code = run_main("dataset=cifar10", "checkpoint=edm-cifar10-32x32-uncond-vp", f"checkpoint.path={evil}",
                    f"eval.ref_stats={bad_files / 'stats.npz'}", f"results_dir={tmp_path}", "progress=false", "nfe=4")
    check(code, capsys, str(evil), f"names {os.system.__module__}.system", "nothing was run", "trust_pickle")
    assert not marker.exists()


def test_missing_checkpoint_file_is_named(tmp_path, capsys):
    code = run_main(f"checkpoint.path={tmp_path / 'nope.pt'}", f"results_dir={tmp_path}", "nfe=4")
    check(code, capsys, str(tmp_path / "nope.pt"))


def test_bad_lambda_fails_before_the_base_point_runs(tiny_conf, tmp_path, capsys):
    """``distill.lam=abc`` used to fail only after the base solver's point had been computed."""
    check(dode_run(tiny_conf, tmp_path, "distill=fixed", "distill.lam=abc", "compare_base=true"), capsys, "distill.lam")
    assert not list(tmp_path.rglob("run.json"))


# ---------------------------------------------------------------------------------------- faults
def _fail_on_call(monkeypatch, target: str, n: int, err: OSError) -> None:
    """Make ``target`` (module:function) raise ``err`` on its ``n``-th call (counting from 1)."""
    import importlib

    module, name = target.split(":")
    mod = importlib.import_module(module)
    real, calls = getattr(mod, name), []

    def fake(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise err
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, name, fake)


DISK_FAULTS = [
    ("dode.runner.generation:write_atomic", 3, errno.ENOSPC, "No space left on device", "the disk is full"),
    ("dode.runner.stages:write_json", 2, errno.EROFS, "Read-only file system", "read-only or not writable"),
    ("dode.runner.generation:write_atomic", 1, errno.EACCES, "Permission denied", "read-only or not writable"),
    ("dode.runner.results:write_atomic", 1, errno.EDQUOT, "Disk quota exceeded", "the disk is full"),
]


@pytest.mark.parametrize("target,n,code,text,words", DISK_FAULTS, ids=[f"{t}-{c}" for t, _, c, _, _ in DISK_FAULTS])
def test_full_or_read_only_results_folder_says_which_path_and_loses_nothing(
        reference, tiny_conf, tmp_path, capsys, monkeypatch, target, n, code, text, words):
    from runner_helpers import csv_values, digests

    where = tmp_path / "test-tiny" / "some-file"
    with monkeypatch.context() as m:
        _fail_on_call(m, target, n, OSError(code, text, str(where)))
        check(dode_run(tiny_conf, tmp_path), capsys, f"cannot write {where}", words, "rerun the same command")
    assert not list(tmp_path.rglob(".*.tmp"))
    assert dode_run(tiny_conf, tmp_path) == 0
    assert digests(tmp_path).keys() == digests(reference).keys()
    assert list(digests(tmp_path).values()) == list(digests(reference).values())
    assert csv_values(tmp_path) == csv_values(reference)


def test_write_atomic_leaves_the_old_file_and_no_temporary_on_failure(tmp_path, monkeypatch):
    from dode.runner import store

    path = tmp_path / "a.json"
    store.write_atomic(path, b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "fsync", full)
    with pytest.raises(OSError):
        store.write_atomic(path, b"new")
    assert path.read_bytes() == b"old" and not list(tmp_path.glob(".*.tmp"))


def test_corrupt_runs_csv_is_named_before_any_work(reference, tiny_conf, tmp_path, capsys):
    shutil.copytree(reference, tmp_path / "r")
    csv = tmp_path / "r" / "runs.csv"
    lines = csv.read_text().splitlines(keepends=True)
    csv.write_text("".join(lines[:2] + ["oops,this,is,not,a,row\n"] + lines[2:]))
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*.json")}
    check(dode_run(tiny_conf, tmp_path / "r"), capsys, f"{csv}, line 3", "6 fields", "dode-report rebuild-runs")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*.json")} == before  # no work done


@pytest.mark.slow
def test_killed_worker_is_one_line_and_rerun_resumes(reference, tiny_conf, tmp_path, capsys, monkeypatch):
    from runner_helpers import csv_values, digests

    with monkeypatch.context() as m:
        m.setenv("DODE_TEST_KILL", str(tmp_path / "killed-once"))  # the first worker to call the model dies
        check(dode_run(tiny_conf, tmp_path / "r", "world_size=2"), capsys, "of 2 died (killed by SIGKILL)",
              "rerun the same command to resume")
    assert (tmp_path / "killed-once").exists()
    assert dode_run(tiny_conf, tmp_path / "r", "world_size=2") == 0
    assert list(digests(tmp_path / "r").values()) == list(digests(reference).values())
    assert csv_values(tmp_path / "r") == csv_values(reference)


# ------------------------------------------------------------------------------------- shards
def _samples(results: Path, distill: str, seed: int = 0) -> Path:
    (folder,) = [p for p in (results / "test-tiny" / "test-oracle-vp").iterdir() if f"-{distill}" in p.name]
    return folder / f"seed-{seed}" / "samples"


def test_a_shard_of_another_run_is_regenerated_not_adopted(reference, tiny_conf, tmp_path, capsys):
    from runner_helpers import csv_values, digests

    results = tmp_path / "r"
    shutil.copytree(reference, results)
    mine, other = _samples(results, "dode"), _samples(results, "none")
    name = "shard-0000000-0000016.npz"
    shutil.copy(other / name, mine / name)  # same seed, same indices, another run
    (mine / "manifest.json").unlink()
    capsys.readouterr()
    assert dode_run(tiny_conf, results) == 0
    assert "not a shard of this run" in "".join(capsys.readouterr())
    assert digests(results) == digests(reference) and csv_values(results) == csv_values(reference)


def test_a_manifest_of_another_run_counts_as_empty(reference, tiny_conf, tmp_path):
    from runner_helpers import csv_values, digests

    results = tmp_path / "r"
    shutil.copytree(reference, results)
    mine, other = _samples(results, "dode", 1), _samples(results, "none", 1)
    shutil.rmtree(mine)
    shutil.copytree(other, mine)  # a whole samples folder of the base solver, manifest and all
    assert dode_run(tiny_conf, results) == 0
    assert digests(results) == digests(reference) and csv_values(results) == csv_values(reference)


def test_shards_without_run_key_stay_valid_when_listed_but_are_not_adopted(tmp_path):
    from dode.runner.store import Manifest, Shard, encode_shard, write_atomic

    sh = Shard(0, 0, 4)
    imgs = np.zeros((4, 2, 2, 1), dtype=np.uint8)
    old = encode_shard(imgs, np.arange(4), seed=0)  # written before shards carried the run key
    write_atomic(tmp_path / sh.name, old)
    m = Manifest(tmp_path, {"seed": 0}, run="a" * 64)
    assert m.check(sh, 0, {})[0] == "corrupt"  # not listed: its header cannot show it is of this run
    listed = {sh.name: {"sha256": __import__("hashlib").sha256(old).hexdigest()}}
    assert m.check(sh, 0, listed)[0] == "complete"  # listed by the manifest of this run: kept
    write_atomic(tmp_path / sh.name, encode_shard(imgs, np.arange(4), seed=0, run="b" * 64))
    assert m.check(sh, 0, {})[0] == "corrupt"
    write_atomic(tmp_path / sh.name, encode_shard(imgs, np.arange(4), seed=0, run="a" * 64))
    assert m.check(sh, 0, {})[0] == "adopted"


# ------------------------------------------------------------------------------------- runs.csv
CORRUPTIONS = [
    ("truncated last row", lambda t: t[: t.rstrip("\n").rindex("\n") + 21], "the last row is cut off"),
    ("a line of junk", lambda t: t.replace("\n", "\nnot,a,row\n", 1), "line 2: 3 fields"),
    ("text in a number", lambda t: t.replace(",4,", ",four,", 1), "not a number in column(s) nfe"),
    ("no header", lambda t: t[t.index("\n") + 1:], "line 1: the header lacks"),
]


@pytest.mark.parametrize("what,corrupt,words", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_corrupt_runs_csv_is_named_then_rebuilt(reference, tiny_conf, tmp_path, capsys, what, corrupt, words):
    from dode.report.cli import main as report
    from runner_helpers import csv_values

    results = tmp_path / "r"
    shutil.copytree(reference, results)
    csv = results / "runs.csv"
    csv.write_text(corrupt(csv.read_text()))
    check(dode_run(tiny_conf, results), capsys, str(csv), words, f"dode-report rebuild-runs {results}")
    assert report(["rebuild-runs", str(results)]) == 0
    assert "4 rows rebuilt" in capsys.readouterr().out
    assert csv_values(results) == csv_values(reference)
    assert dode_run(tiny_conf, results) == 0 and csv_values(results) == csv_values(reference)


def test_rebuild_runs_gives_the_same_rows(reference, tmp_path):
    from dode.runner.results import KEY_COLUMNS, read_runs, rebuild_runs

    results = tmp_path / "r"
    shutil.copytree(reference, results)
    (results / "runs.csv").unlink()
    assert rebuild_runs(results) == 4
    want = read_runs(reference).assign(run_dir=lambda d: d.run_dir.str.replace(str(reference), str(results)))
    got = read_runs(results)
    assert list(got.columns) == list(want.columns)
    key = lambda d: d.sort_values(KEY_COLUMNS).reset_index(drop=True)  # noqa: E731
    assert key(got).equals(key(want))


def test_rebuild_runs_of_a_missing_folder_is_one_line(tmp_path, capsys):
    from dode.report.cli import main as report

    assert report(["rebuild-runs", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "is not a folder" in err and "Traceback" not in err
