"""The stages behind ``dode-run``: fit → generate → metric → ``runs.csv``, resumable and reproducible.

Every process runs :func:`execute` on the points of a job (rank ``ctx.rank`` of ``ctx.world``):
rank 0 fits the correction (:func:`fit_stage`; S4S, S4S-Alt and LD3 fit data-parallel on every
rank), all ranks generate an equal share of the samples (:func:`dode.runner.generation.generate_stage`)
and extract the features of an equal share (:func:`dode.runner.scoring.metric_stage`, moments
all-reduced), rank 0 scores each seed and records its row. Each stage is skipped when its artifact
in the run folder (:mod:`dode.runner.store`) is complete. Seeds: :mod:`dode.runner.seeds`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from dode.errors import UserError
from dode.runner.distributed import Context
from dode.runner.generation import generate_stage, show_progress
from dode.runner.precision import precision_mode
from dode.runner.loading import image_shape, load_denoiser
from dode.runner.points import Point, check_with_model
from dode.runner.results import csv_row, fit_seconds_of, record
from dode.core.denoisers import weights_digest
from dode.runner.scoring import metric_stage, scores_missing, warm_metric
from dode.runner.seeds import fit_block, make_noise, set_labels
from dode.runner.striping import even_bounds
from dode.runner.store import RunLog, file_lock, read_json, remove_stale_tmp, run_dir, run_spec, write_json


# ------------------------------------------------------------------------------------------- fit
def fit_share(point: Point, ctx: Context) -> tuple[range, bool]:
    """(the fit noises' indices this rank fits on, whether the fit is data-parallel): a ``parallel``
    method with several ranks and at least one noise each gets rank r's even contiguous share of the
    ``B`` noises (:func:`~dode.runner.striping.even_bounds`), otherwise rank 0 fits on all of them."""
    method = point.method
    count = point.batch if method.fits else 0
    if method.parallel and ctx.world > 1 and count >= ctx.world:
        bounds = even_bounds(count, ctx.world)
        return range(bounds[ctx.rank], bounds[ctx.rank + 1]), True
    return range(count), False


def fit_stage(point: Point, folder: Path, denoiser, ctx: Context, rlog: RunLog, shape: tuple) -> Any:
    """The correction of ``point`` (None for the base solver); fitted once with the registered method
    (:mod:`dode.runner.methods`) on ``B`` noises of the fit seed block: by rank 0, or by every rank
    on its share with losses and gradients all-reduced (:func:`fit_share`); rank 0 saves it."""
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

    share, parallel = fit_share(point, ctx)
    done = ctx.broadcast(ctx.main and complete()) if parallel else ctx.main and complete()
    if done and ctx.main:
        rlog("fit: lambdas.json complete, skipped", console=False)
    elif not done and (ctx.main or parallel):
        block = fit_block(point.fit_seed)
        noise, seeds = make_noise(block, share, shape, point.torch_dtype())
        set_labels(denoiser, point, seeds, ctx.device)
        provenance = {
            "run_dir": str(folder), "run_spec": run_spec(point), "distill": point.choices.distill,
            "checkpoint": point.choices.checkpoint, "dataset": point.choices.dataset,
            "fit_seed": point.fit_seed, "fit_noise": f"block {block}: torch.Generator seeded "
            f"{block}·10^7 + j, j < {point.batch if method.fits else 0}", "device": ctx.device, "dtype": point.dtype,
            **({"fit_processes": ctx.world} if parallel else {}),
        }
        start = time.perf_counter()
        # gradient-based fits (S4S) need grad; closed-form ones make no graph. Always fp32 (no TF32)
        with torch.enable_grad(), precision_mode(denoiser, ctx.device):
            corr = method.fit(denoiser, noise.to(ctx.device), point, show_progress(point) and ctx.main, provenance,
                              **({"reduce": ctx.all_reduce} if parallel else {}))
        seconds = time.perf_counter() - start
        if ctx.main:
            if hasattr(corr, "provenance") and isinstance(corr.provenance, dict):
                corr.provenance.setdefault("fit_seconds", seconds)
            corr.save(path)  # atomic (temporary file, then rename)
            rlog(f"fit: {point.choices.distill} in {seconds:.1f} s"
                 + (f" on {ctx.world} processes" if parallel else "") + " → lambdas.json")
    ctx.barrier()
    return method.load(path)


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
        if ctx.main and scores_missing(point, folder):  # the reference is read while the fit and generation run
            warm_metric(point, ctx.device)
        shape = image_shape(point, denoiser)
        correction = fit_stage(point, folder, denoiser, ctx, rlog, shape)
        for seed in point.seeds:
            generate_stage(point, folder, seed, denoiser, correction, ctx, rlog, shape)
            result = metric_stage(point, folder, seed, rlog, ctx)
            if ctx.main:
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
