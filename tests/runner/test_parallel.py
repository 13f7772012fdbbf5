"""Work split evenly over processes, the metric on every rank, and the generation's byte-exactness.

Several processes: ``world_size=N`` (spawned gloo workers on the CPU) on the analytic test model and
on the embedded digits model with FD-digits, kept tiny.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from dode.runner.distributed import launch
from dode.runner.store import Shard, shard_plan
from dode.runner.striping import pieces_of, split_evenly
from runner_helpers import csv_values, digests, dode_run, run_main

# sha256 (16 digits) of each run's images (all shards of a seed, in order), made by the runner before
# issue 14 (shards striped k mod N, uint8 conversion on a float64 CPU copy): the default test run and a
# digits-ddpm run (DDIM NFE 4, 96 samples)
BEFORE = {("ddim-nfe4-dode-K4-B16-9859a957", "seed-0"): "61ca590fb6ca56b5",
          ("ddim-nfe4-dode-K4-B16-9859a957", "seed-1"): "9effc0e687452965",
          ("ddim-nfe4-none-e2ca4057", "seed-0"): "7148d341b6bfae24",
          ("ddim-nfe4-none-e2ca4057", "seed-1"): "0b750e204fbdf100"}
DIGITS_BEFORE = ("ddim-nfe4-none-0d74fbdb", "06cd020c653e1fab")
DIGITS = ["progress=false", "nfe=[4]", "seeds=[0]", "num_samples=96", "shard_size=32", "batch_size=16",
          "distill=none", "eval=fd_digits"]


def image_hashes(results: Path) -> dict[tuple[str, str], str]:
    out = {}
    for seed in sorted(results.rglob("seed-*")):
        h = hashlib.sha256()
        for sh in sorted((seed / "samples").glob("shard-*.npz")):
            with np.load(sh) as z:
                h.update(z["images"].tobytes())
        out[(seed.parent.name, seed.name)] = h.hexdigest()[:16]
    return out


# ------------------------------------------------------------------------------------ the split
@pytest.mark.parametrize("n,size,world", [(50_000, 1000, 8), (64, 16, 3), (64, 24, 2), (7, 5, 4), (3, 2, 5)])
def test_split_gives_every_rank_an_equal_contiguous_share(n, size, world):
    shards = shard_plan(n, size)
    split = split_evenly(shards, world)
    sizes = [sum(len(p) for p in ps) for ps in split]
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
    order = [i for ps in split for p in ps for i in range(p.start, p.stop)]
    assert order == list(range(n))  # rank r's run follows rank r − 1's, nothing twice or missing
    for sh in shards:
        pieces = pieces_of(sh, split)
        assert pieces[0].start == sh.start and pieces[-1].stop == sh.stop
        assert all(a.stop == b.start and a.rank < b.rank for a, b in zip(pieces, pieces[1:]))
    cut = [sh for sh in shards if len(pieces_of(sh, split)) > 1]
    assert len(cut) <= world - 1


def test_split_of_50_shards_on_8_ranks_is_exact():
    split = split_evenly(shard_plan(50_000, 1000), 8)
    assert [sum(len(p) for p in ps) for ps in split] == [6250] * 8  # (k mod 8 gave 7000 to two ranks)
    assert split_evenly([Shard(0, 0, 10)], 1)[0][0].whole


# -------------------------------------------------------------------------- images, world sizes
def test_default_test_run_makes_the_same_bytes_as_before(reference):
    assert image_hashes(reference) == BEFORE


@pytest.mark.slow  # three spawned workers: 19 s on the shared 2-core machine
def test_three_processes_cut_shards_and_give_identical_samples(reference, tiny_conf, tmp_path):
    # 64 samples in shards of 16 over 3 ranks: rank boundaries at 21 and 42 cut two shards
    results = tmp_path / "r"
    assert dode_run(tiny_conf, results, "world_size=3", "distill=none", "seeds=[0]") == 0
    ref = {k: v for k, v in digests(reference).items() if "-none-" in k and "seed-0" in k}
    assert len(ref) == 4 and digests(results) == ref
    assert csv_values(results).items() <= csv_values(reference).items()
    assert not list(results.rglob(".shard-*"))  # the pieces were joined and removed
    m = json.loads(next(results.glob("test-tiny/*/*none*/seed-0/samples/manifest.json")).read_text())
    joined = {k: [(p["rank"], p["start"], p["stop"]) for p in e["pieces"]] for k, e in m["shards"].items()
              if "pieces" in e}
    assert joined == {"shard-0000016-0000032.npz": [(0, 16, 21), (1, 21, 32)],
                      "shard-0000032-0000048.npz": [(1, 32, 42), (2, 42, 48)]}


def test_world_sizes_1_and_2_agree_when_a_shard_is_cut(tiny_conf, tmp_path):
    args = ("distill=none", "seeds=[0]", "shard_size=24")  # 24 + 24 + 16: rank boundary 32 cuts shard 2
    assert dode_run(tiny_conf, tmp_path / "w1", *args) == 0
    assert dode_run(tiny_conf, tmp_path / "w2", *args, "world_size=2") == 0
    one, two = digests(tmp_path / "w1"), digests(tmp_path / "w2")
    assert len(one) == 3 and {k.replace("w2", "w1"): v for k, v in two.items()} == one


# ------------------------------------------------------------------------------------ the metric
@pytest.mark.slow
def test_digits_run_with_two_processes_scores_as_one(tmp_path):
    """FD-digits end to end: images as before issue 14; features on both ranks, moments all-reduced;
    the value equals the one-process run's and np.cov's on all images (to float64 summation order)."""
    from dode.eval import metrics

    assert run_main(f"results_dir={tmp_path / 'w1'}", *DIGITS) == 0
    assert run_main(f"results_dir={tmp_path / 'w2'}", *DIGITS, "world_size=2") == 0
    assert image_hashes(tmp_path / "w1") == image_hashes(tmp_path / "w2") == {(DIGITS_BEFORE[0], "seed-0"):
                                                                              DIGITS_BEFORE[1]}
    r1, r2 = (json.loads(next((tmp_path / w).rglob("metrics/*.json")).read_text()) for w in ("w1", "w2"))
    assert r1["metric_processes"] == 1 and r2["metric_processes"] == 2
    images = np.concatenate([np.load(p)["images"] for p in sorted((tmp_path / "w1").rglob("shard-*.npz"))])
    exact = metrics.compute_metric("fd_digits", images)  # np.mean / np.cov of all features at once
    assert r1["value"] == pytest.approx(exact, rel=1e-9) and r2["value"] == pytest.approx(exact, rel=1e-9)
    assert r1["samples_digest"] == r2["samples_digest"]


def moments_worker(ctx, payload):
    """Each rank: FD-digits of its share of the images through the runner's metric, rank 0 writes the value."""
    from dode.runner.points import build_points
    from dode.runner.scoring import compute_metric
    from runner_helpers import CHOICES, point_cfg

    images, out = payload
    point = dataclasses.replace(build_points(point_cfg(Path(out).parent), CHOICES)[0],
                                eval={"name": "fd_digits", "metric": "fd_digits"})
    bounds = [r * len(images) // ctx.world for r in range(ctx.world + 1)]
    mine = images[bounds[ctx.rank]:bounds[ctx.rank + 1]]
    got = compute_metric(mine, point, "cpu", False, ctx)
    if ctx.main:
        np.savez(out, value=got["value"], mu=got["mu"], sigma=got["sigma"])


def test_moments_all_reduced_over_two_gloo_processes_equal_one_process(tmp_path):
    from dode.eval import metrics
    from dode.eval.data import load_dataset

    images = load_dataset("digits", "test").uint8()[:101]  # an odd count: unequal shares
    launch(moments_worker, (images, str(tmp_path / "two.npz")), world_size=2, device="cpu")
    two = np.load(tmp_path / "two.npz")
    feats = metrics.extract_features("fd_digits", images)
    mu, sigma = metrics.feature_stats(feats)
    np.testing.assert_allclose(two["mu"], mu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(two["sigma"], sigma, rtol=1e-9, atol=1e-12 * float(np.abs(sigma).max()))
    assert float(two["value"]) == pytest.approx(metrics.score_features("fd_digits", feats), rel=1e-9)


def test_moments_add_over_parts_like_feature_stats():
    from dode.eval.stats import FeatureMoments, feature_stats

    rng = np.random.default_rng(0)
    feats = rng.normal(3.0, 2.0, size=(500, 7))
    parts = [FeatureMoments(len(f), f.sum(0), f.T @ f) for f in np.array_split(feats, [100, 101, 350])]
    total = sum(parts[1:], parts[0])
    back = FeatureMoments.unpack(total.pack(), 7)
    mu, sigma = back.stats()
    ref_mu, ref_sigma = feature_stats(feats)
    assert back.count == 500
    np.testing.assert_allclose(mu, ref_mu, rtol=1e-13)
    np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="at least two"):
        FeatureMoments.zeros(3).stats()


def test_warmed_reference_is_the_one_the_metric_uses(tmp_path):
    """warm_metric reads the reference statistics in a thread while other work runs (issue 14); the
    metric then joins it and gives exactly the value of a cold evaluation; a callable metric has no
    reference to warm."""
    from dode.eval import metrics
    from dode.runner import scoring
    from dode.runner.points import build_points
    from runner_helpers import CHOICES, point_cfg

    point = dataclasses.replace(build_points(point_cfg(tmp_path), CHOICES)[0],
                                eval={"name": "fd_digits", "metric": "fd_digits", "batch_size": 64})
    images = np.random.default_rng(0).integers(0, 256, (300, 8, 8, 1), dtype=np.uint8)
    scoring.warm_metric(point, "cpu")
    key = scoring._metric_key(point, "cpu")
    thread = scoring._WARMING[key]
    scoring.warm_metric(point, "cpu")  # once per process and metric
    assert scoring._WARMING[key] is thread
    got = scoring.compute_metric(images, point, "cpu", False)
    assert not thread.is_alive()
    assert got["value"] == pytest.approx(metrics.compute_metric("fd_digits", images), rel=1e-9)
    callable_metric = dataclasses.replace(point, eval={"_target_": "numpy.mean"})
    assert scoring._metric_key(callable_metric, "cpu") is None


def test_a_process_that_never_scores_waits_for_the_warming_thread(tmp_path):
    """A resumed run whose seeds are all scored never joins warm_metric's thread: the process must wait
    for it at exit rather than kill it inside torch (which aborted `make table-learned` with exit code
    134). The reference statistics are made slow here; the subprocess exits at once after warming."""
    import subprocess
    import sys

    from runner_helpers import env

    done = tmp_path / "done"
    script = f"""
import dataclasses, time
from dode.eval import metrics
from dode.runner import scoring
from dode.runner.points import build_points
from runner_helpers import CHOICES, point_cfg

def slow(*args, **kw):
    time.sleep(1.0)
    open({str(done)!r}, "w").write("finished")

metrics.reference_stats = slow
point = dataclasses.replace(build_points(point_cfg({str(tmp_path)!r}), CHOICES)[0],
                            eval={{"name": "fd_digits", "metric": "fd_digits", "batch_size": 64}})
scoring.warm_metric(point, "cpu")
"""
    out = subprocess.run([sys.executable, "-c", script], env=env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert done.read_text() == "finished"


def test_scores_missing_until_every_seed_has_its_metric_file(tmp_path):
    """run_point warms the metric only while scores_missing: some seed of the point has no metric JSON
    in the run folder (where the metric stage looks for it)."""
    from dode.runner import scoring
    from dode.runner.points import build_points
    from runner_helpers import CHOICES, point_cfg

    point = build_points(point_cfg(tmp_path), CHOICES)[0]
    folder = tmp_path / "run"
    assert scoring.scores_missing(point, folder)
    for seed in point.seeds[:-1]:
        scoring.metric_path(point, folder, seed).parent.mkdir(parents=True)
        scoring.metric_path(point, folder, seed).write_text("{}")
    assert scoring.scores_missing(point, folder)  # the last seed still lacks its file
    last = scoring.metric_path(point, folder, point.seeds[-1])
    last.parent.mkdir(parents=True)
    last.write_text("{}")
    assert not scoring.scores_missing(point, folder)
    assert last.parent.parent.name == f"seed-{point.seeds[-1]}" and last.parent.name == "metrics"
