"""The metric stage: one seed's samples scored, feature extraction split evenly over the ranks.

Every rank reads and checks its equal share of the samples (:func:`dode.runner.striping.split_evenly`
over all shards, the share it generated on a fresh run), extracts their features and sums their
moments in float64 (:class:`dode.eval.stats.FeatureMoments`: n, Σx, Σxxᵀ); one all-reduce adds the
ranks' sums, and rank 0 turns them into μ, Σ and the Fréchet distance. The value equals the
one-process value up to the order of the float64 sums. A metric given as a callable ``_target_``
sees all images at once, on rank 0. The CLIP score (``metric: clip_score``) scores sample i against
its prompt (the run folder's ``prompts.json``); the ranks add their sums and counts likewise.
:func:`warm_metric` prepares rank 0's reference statistics (and the Fréchet distance's imports) in a
thread while the fit and the generation run, so the metric stage no longer waits for them.
"""
from __future__ import annotations

import hashlib
import io
import threading
import time
from pathlib import Path

import numpy as np
import torch

from dode.errors import UserError
from dode.runner.distributed import Context
from dode.runner.generation import show_progress
from dode.runner.points import META_KEYS, Point
from dode.runner.store import Manifest, RunLog, eval_id, read_json, run_key, shard_plan, write_atomic, write_json
from dode.runner.striping import Piece, split_evenly


def samples_digest(point: Point, folder: Path, seed: int) -> tuple[str, float]:
    """(digest of the manifest's shard hashes in index order, summed sampling seconds) of ``seed``."""
    samples = folder / f"seed-{seed}" / "samples"
    entries = Manifest(samples, {}, run=run_key(point)).read()["shards"]
    digest, seconds = hashlib.sha256(), 0.0
    for sh in shard_plan(point.num_samples, point.shard_size):
        if sh.name not in entries:
            raise RuntimeError(f"{samples / sh.name} is missing after generation; rerun to regenerate it")
        digest.update(entries[sh.name]["sha256"].encode())
        seconds += float(entries[sh.name].get("seconds") or 0.0)
    return digest.hexdigest(), seconds


def load_samples(point: Point, folder: Path, seed: int, pieces: list[Piece] | None = None) -> np.ndarray:
    """The images of ``pieces`` (default: every sample of ``seed``) in index order, each shard they
    touch checked against the manifest (sha256, seed, indices, run key)."""
    samples = folder / f"seed-{seed}" / "samples"
    manifest = Manifest(samples, {}, run=run_key(point))
    entries = manifest.read()["shards"]
    if pieces is None:
        pieces = split_evenly(shard_plan(point.num_samples, point.shard_size), 1)[0]
    images = []
    for p in pieces:
        status, im = manifest.check(p.shard, seed, entries)
        if im is None:
            raise RuntimeError(f"{samples / p.shard.name} is {status} after generation; rerun to regenerate it")
        images.append(im[p.start - p.shard.start:p.stop - p.shard.start])
    if not images:
        return np.zeros((0, 0, 0, 0), np.uint8)
    return np.concatenate(images)


def sample_prompts(folder: Path, pieces: list[Piece]) -> list[str]:
    """The prompts of the samples of ``pieces`` in index order, from the run folder's ``prompts.json``."""
    record = read_json(folder / "prompts.json")
    if not isinstance(record, dict) or not isinstance(record.get("prompts"), list):
        raise UserError(f"the CLIP score scores each sample against its prompt, but {folder / 'prompts.json'} "
                        "is missing or unreadable: run a text-to-image model on a dataset with captions "
                        "(dataset=coco); rerunning the point writes it")
    by_index = {int(p["index"]): str(p["caption"]) for p in record["prompts"]}
    index = [i for p in pieces for i in range(p.start, p.stop)]
    missing = [i for i in index if i not in by_index]
    if missing:
        raise UserError(f"{folder / 'prompts.json'} has no prompt for sample(s) {missing[:5]}…; rerun the point")
    return [by_index[i] for i in index]


_WARMING: dict[tuple, threading.Thread] = {}


def _metric_key(point: Point, device: str) -> tuple | None:
    """The reference statistics a point's metric needs, as a hashable key (None: a callable metric or
    the CLIP score, which have none)."""
    if "_target_" in point.eval or point.metric_name() == "clip_score":
        return None
    return point.metric_name(), tuple(sorted((k, repr(v)) for k, v in point.metric_kwargs(device).items()))


def metric_path(point: Point, folder: Path, seed: int) -> Path:
    """The metric JSON of ``seed`` in the run folder."""
    return folder / f"seed-{seed}" / "metrics" / f"{eval_id(point)}.json"


def scores_missing(point: Point, folder: Path) -> bool:
    """Whether some seed of ``point`` has no metric JSON yet (the metric stage may then need the
    reference statistics; a resumed run with every seed scored does not, so nothing is warmed)."""
    return any(not metric_path(point, folder, s).is_file() for s in point.seeds)


def warm_metric(point: Point, device: str) -> None:
    """Start reading (digits: computing) the reference statistics of ``point``'s metric, and importing
    the Fréchet distance's library, in a thread (once per process and metric; not a daemon: the process
    waits for it before it exits, since a daemon thread still in torch at interpreter shutdown aborts
    the process, "terminate called without an active exception", as when every seed of a resumed run
    was already scored and the metric stage never joined it); its errors are
    left to the metric stage, which raises them itself (:func:`compute_metric` joins the thread first).
    The statistics are the cached ones the stage reads, so values do not change; on a GPU the digits
    reference is not computed here (its features would run under whatever cuDNN flags the fit set)."""
    key = _metric_key(point, device)
    if key is None or key in _WARMING:
        return
    from dode.eval import metrics

    name, kw = point.metric_name(), point.metric_kwargs(device)

    def warm() -> None:
        try:  # on an accelerator the digits' features wait for the stage (the fit may switch cuDNN's flags)
            if name != "fd_digits" or str(device) == "cpu":
                metrics.reference_stats(name, **kw)
            metrics.frechet_distance(np.zeros(1), np.eye(1), np.zeros(1), np.eye(1))
        except Exception:  # noqa: BLE001 - reported by the metric stage, which repeats the call
            pass

    _WARMING[key] = threading.Thread(target=warm, name="dode-warm-metric", daemon=False)
    _WARMING[key].start()


def compute_metric(images: np.ndarray, point: Point, device: str, progress: bool, ctx: Context | None = None,
                   prompts: list[str] | None = None) -> dict:
    """``{"value": float, "mu": …, "sigma": …}`` (and, for FID, its ``mode``) of uint8 images
    (N, H, W, C) under the ``eval`` config: :mod:`dode.eval.metrics` (feature moments, summed over
    the ranks of ``ctx`` when given — each passing its own images — then the Fréchet distance), or a
    callable ``_target_`` returning a float or such a dict; for ``clip_score`` (``prompts``: one per
    image) the mean of the ranks' CLIP sums. Only rank 0's result is complete."""
    ev = point.eval
    if "_target_" in ev:
        from hydra.utils import instantiate

        out = instantiate({k: v for k, v in ev.items() if k not in META_KEYS}, _partial_=True)(images)
        out = dict(out) if isinstance(out, dict) else {"value": out}
    elif point.metric_name() == "clip_score":
        from dode.eval.clip import ClipSums, clip_sums

        ctx = ctx or Context()
        s = clip_sums(images, prompts or [], point.eval.get("clip_weights"), device,
                      int(point.eval.get("batch_size") or 100))
        total, n = ctx.all_reduce_sum(np.array([s.total, s.n]))
        if not ctx.main:
            return {}
        out = {"value": ClipSums(float(total), int(n)).score, "scored": int(n)}
    else:
        from dode.eval import metrics
        from dode.eval.resize import resize_workers

        ctx = ctx or Context()
        name, kw = point.metric_name(), point.metric_kwargs(device)
        warming = _WARMING.get(_metric_key(point, device))
        if warming is not None:
            warming.join()
        if ctx.main:
            metrics.reference_stats(name, **kw)  # a missing reference fails before the features
        # the clean resize in worker processes: this rank's share of the cores, less its own
        kw["workers"] = resize_workers(ctx.world)
        mom = metrics.feature_moments(name, images, progress=progress, **kw) if len(images) else None
        dim = ctx.broadcast(len(mom.total) if mom is not None else None, src=ctx.world - 1)  # it has samples
        mom = ctx.all_reduce_sum((mom or metrics.FeatureMoments.zeros(dim)).pack())
        if not ctx.main:
            return {}
        out = metrics.evaluate_moments(name, metrics.FeatureMoments.unpack(mom, dim), **kw).as_dict()
    out["value"] = float(out["value"])
    return out


def metric_stage(point: Point, folder: Path, seed: int, rlog: RunLog, ctx: Context | None = None) -> dict:
    """The metric of ``seed`` on every rank (rank 0 writes it and returns it; the others return {});
    skipped when its JSON exists for exactly these samples."""
    ctx = ctx or Context()
    eid, path = eval_id(point), metric_path(point, folder, seed)
    metrics = path.parent
    done, digest, sample_seconds = None, None, 0.0
    if ctx.main:
        digest, sample_seconds = samples_digest(point, folder, seed)
        done = read_json(path)
        done = done if isinstance(done, dict) and done.get("samples_digest") == digest and "value" in done else None
        if done is not None:
            rlog(f"seed {seed}: {eid} complete, skipped", console=False)
    if ctx.broadcast(done is not None):
        return done or {}
    start = time.perf_counter()
    if "_target_" in point.eval:
        if not ctx.main:
            return {}
        images = load_samples(point, folder, seed)
        out = compute_metric(images, point, ctx.device, show_progress(point))
    else:
        split = split_evenly(shard_plan(point.num_samples, point.shard_size), ctx.world)
        images = load_samples(point, folder, seed, split[ctx.rank])
        prompts = sample_prompts(folder, split[ctx.rank]) if point.metric_name() == "clip_score" else None
        out = compute_metric(images, point, ctx.device, show_progress(point) and ctx.main, ctx, prompts)
        if not ctx.main:
            return {}
    seconds = round(time.perf_counter() - start, 4)
    features = {k: out.pop(k) for k in list(out) if isinstance(out[k], (np.ndarray, torch.Tensor))}
    result = {"metric": point.choices.eval, "value": out.pop("value"), "seed": seed, "num_samples": point.num_samples,
              "samples_digest": digest, "sample_seconds": round(sample_seconds, 4), "metric_seconds": seconds,
              "metric_processes": 1 if "_target_" in point.eval else ctx.world, "eval": point.eval, **out}
    if features:
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in features.items()})
        write_atomic(metrics / f"{eid}.features.npz", buf.getvalue())
        result["features"] = {"file": f"{eid}.features.npz",
                              **{k: list(np.asarray(v).shape) for k, v in features.items()}}
    write_json(path, result)
    rlog(f"seed {seed}: {point.choices.eval} = {result['value']:.4f} ({point.num_samples} samples, {seconds:.1f} s"
         + (f", {ctx.world} processes)" if result["metric_processes"] > 1 else ")"))
    return result
