"""The generate stage: the missing shards of one seed, split evenly over the ranks.

Rank 0 reads the manifest and decides which shards to make; they are cut into equal runs of
samples, one per rank (:mod:`dode.runner.striping`). On a GPU the next batch's noise is drawn (on
the CPU, one generator per sample: :mod:`dode.runner.seeds`) in a thread while the current batch
samples, and copied from pinned memory without blocking; images become uint8 on the device; shard
files (savez, sha256, fsync, manifest) are written by a thread while the next shard samples. None
of this changes a byte of the images.
"""
from __future__ import annotations

import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from dode.runner.distributed import Context
from dode.runner.points import Point
from dode.runner.precision import precision_mode
from dode.runner.seeds import eval_block, make_noise, set_labels
from dode.runner.store import (FORMAT, Manifest, RunLog, Shard, encode_shard, run_key, sha256_bytes, shard_plan,
                               write_atomic)
from dode.runner.striping import Piece, encode_part, pieces_of, read_part, remove_parts, split_evenly


def show_progress(point: Point) -> bool:
    """Progress bars only when asked for (``progress``) and stderr is a terminal: in a log file or a
    pipe they are noise (the run log has a line per stage and seed)."""
    return bool(point.progress) and sys.stderr.isatty()


def progress_bar(total: int, desc: str, point: Point, ctx: Context):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, disable=not (ctx.main and show_progress(point)))


def sampling_grid(point: Point, correction: Any) -> Any:
    """The solver's configured grid, or the grid a correction learned (S4S-Alt)."""
    from dode.learn import grid_of

    return grid_of(correction, point.grid)


def noise_batches(block: int, start: int, stop: int, batch_size: int, shape: tuple, dtype: torch.dtype,
                  device: str) -> Iterator[tuple[range, torch.Tensor, list[int]]]:
    """(indices, noise on ``device``, stream seeds) of samples ``start … stop − 1`` in batches; on a
    GPU the next batch is drawn in a thread, pinned and copied without blocking."""
    batches = [range(b, min(b + batch_size, stop)) for b in range(start, stop, batch_size)]
    if not str(device).startswith("cuda"):
        for idx in batches:
            noise, seeds = make_noise(block, idx, shape, dtype)
            yield idx, noise, seeds
        return

    def draw(idx: range) -> tuple[torch.Tensor, list[int]]:
        noise, seeds = make_noise(block, idx, shape, dtype)
        return noise.pin_memory(), seeds

    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(draw, batches[0]) if batches else None
        for k, idx in enumerate(batches):
            noise, seeds = ahead.result()
            ahead = pool.submit(draw, batches[k + 1]) if k + 1 < len(batches) else None
            yield idx, noise.to(device, non_blocking=True), seeds


def _todo(point: Point, manifest: Manifest, seed: int, ctx: Context, rlog: RunLog) -> list[Shard]:
    """The shards of ``seed`` to make (missing or corrupt), decided by rank 0 and shared."""
    plan = shard_plan(point.num_samples, point.shard_size)
    todo = None
    if ctx.main:
        entries = manifest.read()["shards"]
        todo = []
        for sh in plan:
            status, _ = manifest.check(sh, seed, entries)
            if status == "corrupt":
                rlog(f"seed {seed}: {sh.name} is corrupted or truncated (or not a shard of this run); regenerating it",
                     level=logging.WARNING)
            if status in ("missing", "corrupt"):
                todo.append(sh.index)
    todo = ctx.broadcast(todo)
    return [plan[k] for k in todo]


def generate_stage(point: Point, folder: Path, seed: int, denoiser, correction: Any, ctx: Context, rlog: RunLog,
                   shape: tuple) -> None:
    """Generate the missing shards of ``seed``, each rank an equal share of the samples."""
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
    todo = _todo(point, manifest, seed, ctx, rlog)
    if not todo:
        return
    split = split_evenly(todo, ctx.world)
    mine = split[ctx.rank]
    grid = sampling_grid(point, correction)
    total = sum(len(p) for p in mine)
    bar = progress_bar(total, f"sample {point.solver['name']}@{point.nfe} {point.choices.distill} seed {seed}",
                       point, ctx)
    start_all = time.perf_counter()

    def make(piece: Piece) -> tuple[np.ndarray, float]:
        start, parts = time.perf_counter(), []
        for idx, noise, seeds in noise_batches(block, piece.start, piece.stop, point.batch_size, shape,
                                               point.torch_dtype(), ctx.device):
            set_labels(denoiser, point, seeds, ctx.device)
            x = sample(denoiser, noise.to(ctx.device), solver=point.solver["name"], nfe=point.nfe,
                       lambdas=correction, grid=grid)
            if hasattr(denoiser, "decode"):  # latent models: final latents → images in [-1, 1]
                x = denoiser.decode(x)
            parts.append(to_uint8(x))
            bar.update(len(idx))
        return np.concatenate(parts), time.perf_counter() - start

    def write_shard(sh: Shard, images: np.ndarray, seconds: float, extra: dict | None = None) -> None:
        data = encode_shard(images, np.arange(sh.start, sh.stop), seed, key)
        write_atomic(samples / sh.name, data)
        manifest.add(sh, {"start": sh.start, "stop": sh.stop, "seed": seed, "sha256": sha256_bytes(data),
                          "bytes": len(data), "seconds": round(seconds, 4), "rank": ctx.rank, **(extra or {})})

    # files are written by one thread while the next piece samples (the writes release the GIL)
    with torch.no_grad(), precision_mode(denoiser, ctx.device, **point.speed()), \
            ThreadPoolExecutor(max_workers=1) as writer:
        writes = []
        for piece in mine:
            images, seconds = make(piece)
            if piece.whole:
                writes.append(writer.submit(write_shard, piece.shard, images, seconds))
            else:
                writes.append(writer.submit(write_atomic, samples / piece.part_name,
                                            encode_part(images, piece, seed, key, seconds)))
            while writes and (writes[0].done() or len(writes) > 2):  # at most two shards wait in memory
                writes.pop(0).result()  # a failed write stops the job here
        for w in writes:
            w.result()
    bar.close()
    if ctx.world > 1:
        ctx.barrier()  # every piece is on disk: the owners join theirs
        for sh in dict.fromkeys(p.shard for p in mine if not p.whole):
            pieces = pieces_of(sh, split)
            if pieces[0].rank != ctx.rank:
                continue
            got = [read_part(samples, p, seed, key) for p in pieces]
            write_shard(sh, np.concatenate([g[0] for g in got]), sum(g[1] for g in got),
                        {"pieces": [{"rank": p.rank, "start": p.start, "stop": p.stop, "seconds": round(g[1], 4)}
                                    for p, g in zip(pieces, got)]})
        ctx.barrier()
    if ctx.main:
        remove_parts(samples)  # joined, or left by an interrupted run of another split
    rlog(f"seed {seed}: generated {total} samples of {len(todo)} shard(s) in {time.perf_counter() - start_all:.1f} s"
         + (f" on rank {ctx.rank} of {ctx.world}" if ctx.world > 1 else ""), console=False)
