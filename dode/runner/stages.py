"""The stages behind ``dode-run``: fit → generate → metric → ``runs.csv``, resumable and reproducible.

Every process runs :func:`execute` on the points of a job (rank ``ctx.rank`` of ``ctx.world``):
rank 0 fits the correction (:func:`fit_stage`), all ranks generate their stripe of shards
(:func:`generate_stage`, shard k → rank k mod world size), rank 0 scores each seed
(:func:`metric_stage`) and records its row. Each stage is skipped when its artifact in the run
folder (:mod:`dode.runner.store`) is complete. Seeds: :mod:`dode.runner.seeds`.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dode.errors import UserError
from dode.runner.distributed import Context
from dode.runner.points import META_KEYS, Point, check_with_model, image_shape, load_denoiser
from dode.runner.results import csv_row, fit_seconds_of, record
from dode.core.denoisers import weights_digest
from dode.runner.seeds import eval_block, fit_block, make_noise, set_labels
from dode.runner.store import (FORMAT, Manifest, RunLog, encode_shard, eval_id, file_lock, read_json,
                               remove_stale_tmp, run_dir, run_key, run_spec, sha256_bytes, shard_plan,
                               write_atomic, write_json)


# ------------------------------------------------------------------------------------------- fit
def fit_stage(point: Point, folder: Path, denoiser, ctx: Context, rlog: RunLog, shape: tuple) -> Any:
    """The correction of ``point`` (None for the base solver); fitted once, by rank 0, with the
    registered method (:mod:`dode.runner.methods`) on ``B`` noises of the fit seed block."""
    method = point.method
    if method.fit is None:
        return None
    path = folder / "lambdas.json"

    def complete() -> bool:
        if read_json(path) is None:
            return False
        try:
            method.load(path)
            return True
        except Exception:
            return False

    if ctx.main:
        if complete():
            rlog("fit: lambdas.json complete, skipped", console=False)
        else:
            block = fit_block(point.fit_seed)
            noise, seeds = make_noise(block, range(point.batch if method.fits else 0), shape, point.torch_dtype())
            set_labels(denoiser, point, seeds, ctx.device)
            provenance = {
                "run_dir": str(folder), "run_spec": run_spec(point), "distill": point.choices.distill,
                "checkpoint": point.choices.checkpoint, "dataset": point.choices.dataset,
                "fit_seed": point.fit_seed, "fit_noise": f"block {block}: torch.Generator seeded "
                f"{block}·10^7 + j, j < {len(noise)}", "device": ctx.device, "dtype": point.dtype,
            }
            start = time.perf_counter()
            with torch.enable_grad():  # gradient-based fits (S4S) need it; closed-form ones make no graph
                corr = method.fit(denoiser, noise.to(ctx.device), point, show_progress(point), provenance)
            seconds = time.perf_counter() - start
            if hasattr(corr, "provenance") and isinstance(corr.provenance, dict):
                corr.provenance.setdefault("fit_seconds", seconds)
            corr.save(path)  # atomic (temporary file, then rename)
            rlog(f"fit: {point.choices.distill} in {seconds:.1f} s → lambdas.json")
    ctx.barrier()
    return method.load(path)


# -------------------------------------------------------------------------------------- generate
def sampling_grid(point: Point, correction: Any) -> Any:
    """The solver's configured grid, or the grid a correction learned (S4S-Alt)."""
    from dode.learn import grid_of

    return grid_of(correction, point.grid)


def _bar(total: int, desc: str, point: Point, ctx: Context):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, disable=not (ctx.main and show_progress(point)))


def generate_stage(point: Point, folder: Path, seed: int, denoiser, correction: Any, ctx: Context, rlog: RunLog,
                   shape: tuple) -> None:
    """Generate the missing shards of ``seed`` striped over the processes (shard k → rank k mod W)."""
    from dode.core.sampling import sample
    from dode.eval.data import to_uint8

    samples = folder / f"seed-{seed}" / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    block = eval_block(seed)
    key = run_key(point)
    manifest = Manifest(samples, {
        "format": FORMAT, "run_dir": str(folder), "seed": seed, "seed_block": block, "shape": list(shape),
        "rng": "per sample i: torch.Generator().manual_seed(seed_block·10^7 + i); noise = randn(C, H, W)"
               " (then its label for conditional models)"}, run=key)
    entries = manifest.read()["shards"]
    mine = [sh for sh in shard_plan(point.num_samples, point.shard_size) if sh.index % ctx.world == ctx.rank]
    grid = sampling_grid(point, correction)
    todo = []
    for sh in mine:
        status, _ = manifest.check(sh, seed, entries)
        if status == "corrupt":
            rlog(f"seed {seed}: {sh.name} is corrupted or truncated (or not a shard of this run); regenerating it",
                 level=logging.WARNING)
        if status in ("missing", "corrupt"):
            todo.append(sh)
    if todo:
        total = sum(len(sh) for sh in todo)
        bar = _bar(total, f"sample {point.solver['name']}@{point.nfe} {point.choices.distill} seed {seed}", point, ctx)
        start_all = time.perf_counter()
        for sh in todo:
            start = time.perf_counter()
            parts = []
            for b0 in range(sh.start, sh.stop, point.batch_size):
                idx = range(b0, min(b0 + point.batch_size, sh.stop))
                noise, seeds = make_noise(block, idx, shape, point.torch_dtype())
                set_labels(denoiser, point, seeds, ctx.device)
                with torch.no_grad():
                    x = sample(denoiser, noise.to(ctx.device), solver=point.solver["name"], nfe=point.nfe,
                               lambdas=correction, grid=grid)
                    if hasattr(denoiser, "decode"):  # latent models: final latents → images in [-1, 1]
                        x = denoiser.decode(x)
                parts.append(to_uint8(x))
                bar.update(len(idx))
            data = encode_shard(np.concatenate(parts), np.arange(sh.start, sh.stop), seed, key)
            write_atomic(samples / sh.name, data)
            manifest.add(sh, {"start": sh.start, "stop": sh.stop, "seed": seed, "sha256": sha256_bytes(data),
                              "bytes": len(data), "seconds": round(time.perf_counter() - start, 4),
                              "rank": ctx.rank})
        bar.close()
        rlog(f"seed {seed}: generated {len(todo)} shard(s), {total} samples in {time.perf_counter() - start_all:.1f} s"
             + (f" on rank {ctx.rank} of {ctx.world}" if ctx.world > 1 else ""), console=False)
    ctx.barrier()


# ---------------------------------------------------------------------------------------- metric
def load_samples(point: Point, folder: Path, seed: int) -> tuple[np.ndarray, str, float]:
    """(all images of ``seed`` in index order, digest of the shard hashes, summed sampling seconds);
    every shard is checked against the manifest."""
    samples = folder / f"seed-{seed}" / "samples"
    manifest = Manifest(samples, {}, run=run_key(point))
    entries = manifest.read()["shards"]
    images, digest, seconds = [], hashlib.sha256(), 0.0
    for sh in shard_plan(point.num_samples, point.shard_size):
        status, im = manifest.check(sh, seed, entries)
        if im is None:
            raise RuntimeError(f"{samples / sh.name} is {status} after generation; rerun to regenerate it")
        entry = manifest.read()["shards"][sh.name] if status == "adopted" else entries[sh.name]
        images.append(im)
        digest.update(entry["sha256"].encode())
        seconds += float(entry.get("seconds") or 0.0)
    return np.concatenate(images), digest.hexdigest(), seconds


def show_progress(point: Point) -> bool:
    """Progress bars only when asked for (``progress``) and stderr is a terminal: in a log file or a
    pipe they are noise (the run log has a line per stage and seed)."""
    return bool(point.progress) and sys.stderr.isatty()


def compute_metric(images: np.ndarray, point: Point, device: str, progress: bool) -> dict:
    """``{"value": float, "mu": …, "sigma": …}`` (and, for FID, its ``mode``) of uint8 images
    (N, H, W, C) under the ``eval`` config: :mod:`dode.eval.metrics` (features, then the Fréchet
    distance), or a callable ``_target_`` returning a float or such a dict."""
    ev = point.eval
    if "_target_" in ev:
        from hydra.utils import instantiate

        out = instantiate({k: v for k, v in ev.items() if k not in META_KEYS}, _partial_=True)(images)
        out = dict(out) if isinstance(out, dict) else {"value": out}
    else:
        from dode.eval import metrics

        name, kw = point.metric_name(), point.metric_kwargs(device)
        metrics.reference_stats(name, **kw)  # a missing reference fails before the features
        feats = metrics.extract_features(name, images, progress=progress, **kw)
        out = metrics.evaluate_features(name, feats, **kw).as_dict()
    out["value"] = float(out["value"])
    return out


def metric_stage(point: Point, folder: Path, seed: int, rlog: RunLog, device: str = "cpu") -> dict:
    """The metric of ``seed`` (rank 0); skipped when its JSON exists for exactly these samples."""
    images, digest, sample_seconds = load_samples(point, folder, seed)
    metrics = folder / f"seed-{seed}" / "metrics"
    eid = eval_id(point)
    path = metrics / f"{eid}.json"
    done = read_json(path)
    if isinstance(done, dict) and done.get("samples_digest") == digest and "value" in done:
        rlog(f"seed {seed}: {eid} complete, skipped", console=False)
        return done
    start = time.perf_counter()
    out = compute_metric(images, point, device, show_progress(point))
    seconds = round(time.perf_counter() - start, 4)
    features = {k: out.pop(k) for k in list(out) if isinstance(out[k], (np.ndarray, torch.Tensor))}
    result = {"metric": point.choices.eval, "value": out.pop("value"), "seed": seed, "num_samples": point.num_samples,
              "samples_digest": digest, "sample_seconds": round(sample_seconds, 4), "metric_seconds": seconds,
              "eval": point.eval, **out}
    if features:
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in features.items()})
        write_atomic(metrics / f"{eid}.features.npz", buf.getvalue())
        result["features"] = {"file": f"{eid}.features.npz",
                              **{k: list(np.asarray(v).shape) for k, v in features.items()}}
    write_json(path, result)
    rlog(f"seed {seed}: {point.choices.eval} = {result['value']:.4f} ({len(images)} samples, {seconds:.1f} s)")
    return result


# ------------------------------------------------------------------------------------------ driver
def check_weights(folder: Path, weights: str | None, point: Point) -> None:
    """A run folder made with other weights under the same checkpoint name is never reused."""
    before = (read_json(folder / "run.json") or {}).get("weights_sha256")
    if before and weights and before != weights:
        raise UserError(f"{folder} was made with other weights of checkpoint {point.choices.checkpoint!r} "
                        f"(sha256 {before[:12]}… then, {weights[:12]}… now): its fit, samples and metrics belong "
                        "to the old model. Move or delete that folder to recompute with the current weights; "
                        "nothing was changed.")


def write_prompts(point: Point, folder: Path) -> None:
    """``prompts.json`` in the run folder: the caption of sample i, for i < num_samples (every seed)."""
    from dode.eval.prompts import captions_of

    data = captions_of(point.dataset["captions"]).record(point.num_samples)
    if read_json(folder / "prompts.json") != data:
        write_json(folder / "prompts.json", data)


def run_point(point: Point, denoiser, ctx: Context, weights: str | None = None) -> list[dict]:
    """Fit, generate and score one point in its run folder (resumable); ``weights``: the model's
    :func:`weights_digest`, checked against and recorded in run.json."""
    folder = run_dir(point)
    folder.mkdir(parents=True, exist_ok=True)
    rlog = RunLog(folder, ctx.rank)
    lock = file_lock(folder / ".lock", f"waiting for another dode-run working in {folder}") if ctx.main \
        else contextlib.nullcontext()
    rows = []
    with lock:
        if ctx.main:
            info = {"spec": run_spec(point), "point": point.to_dict(), "weights_sha256": weights}
            if read_json(folder / "run.json") != json.loads(json.dumps(info, default=str)):
                write_json(folder / "run.json", info)
            rlog(f"start ({ctx.world} process{'es' if ctx.world > 1 else ''}, device {ctx.device})", console=False)
            if point.dataset.get("captions"):  # text-to-image: the prompt of every sample index
                write_prompts(point, folder)
            if remove_stale_tmp(folder):
                rlog("removed temporary files of an interrupted run", console=False)
        shape = image_shape(point, denoiser)
        correction = fit_stage(point, folder, denoiser, ctx, rlog, shape)
        for seed in point.seeds:
            generate_stage(point, folder, seed, denoiser, correction, ctx, rlog, shape)
            if ctx.main:
                result = metric_stage(point, folder, seed, rlog, ctx.device)
                row = csv_row(point, folder, seed, result, fit_seconds_of(correction))
                record(point.results_dir, [row])
                rows.append(row)
        ctx.barrier()
    return rows


def execute(ctx: Context, job: dict) -> list[dict]:
    """Run every point of ``job["points"]`` in this process (rank ``ctx.rank`` of ``ctx.world``):
    every point is checked with its model before any work starts, on every rank."""
    if ctx.main and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows: list[dict] = []
    models: dict[str, tuple[Any, str | None]] = {}

    def model(point: Point) -> tuple[Any, str | None]:
        key = json.dumps(point.checkpoint, sort_keys=True, default=str)
        if key not in models:
            models.clear()
            den = load_denoiser(point, ctx.device)
            models[key] = (den, weights_digest(den))
        return models[key]

    with torch.no_grad():
        for point in job["points"]:
            den, weights = model(point)
            check_with_model(point, den)
            check_weights(run_dir(point), weights, point)
        for point in job["points"]:
            den, weights = model(point)
            rows += run_point(point, den, ctx, weights)
    return rows
