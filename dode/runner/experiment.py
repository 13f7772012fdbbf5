"""The stages behind ``dode-run``: fit → generate → metric → ``runs.csv``, resumable and reproducible.

A *point* is one sampler configuration (dataset, checkpoint, solver, NFE, correction with its K, B
and fit seed) as a plain dict; ``dode-run`` builds the points from its Hydra config
(:func:`build_points`) and every process runs :func:`execute` on them.

Run folders are derived from the config, never from the clock::

    <results_dir>/runs.csv                                   one row per (point, seed, metric)
    <results_dir>/<dataset>/<checkpoint>/<solver>-nfe<N>-<distill>[-K<K>-B<B>]-<hash8>/
        run.json          the point, the hashed spec (what determines the images) and the sha256 of the
                          model's weights (a folder made with other weights is refused, not reused)
        run.log           a concise log of every stage
        lambdas.json      the fitted correction with provenance (shared by all evaluation seeds)
        seed-<s>/samples/shard-<start>-<stop>.npz   uint8 images (N, H, W, C) + their sample indices
        seed-<s>/samples/manifest.json              per shard: seed, indices, sha256, seconds
        seed-<s>/metrics/<eval>-n<num_samples>-<hash6>.json (+ .npz features)

``hash8`` is a SHA-256 of the resolved spec (checkpoint minus its file path, solver, NFE, dtype,
correction and, for fitted corrections, K, B and the fit seed), so a rerun finds its folder again
and two different configurations never share one.

Seeds (EDM's habit, made disjoint): sample ``i`` of evaluation seed ``s`` is drawn from its own
``torch.Generator`` seeded with ``s·10⁷ + i`` (noise first, then its class label for conditional
models); the λ fit draws its ``B`` noises from block ``400 + fit_seed`` (seeds ``(400 + f)·10⁷ + j``).
torch's CPU generator keeps only the low 32 bits of a seed, so every stream seed stays below 2³²:
evaluation seeds ``0 ≤ s < 400``, fit seeds ``0 ≤ f < 29``, at most 10⁷ samples per seed. Images therefore do not
depend on the batch size or on the number of processes; shards are striped over the processes
(shard k → rank k mod world size).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import io
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from dode.errors import UserError
from dode.runner.points import META_KEYS, image_shape, load_denoiser
from dode.runner.seeds import (BLOCK, FIT_BLOCK, MAX_FIT_SEED, eval_block, fit_block, make_noise,  # noqa: F401
                               set_labels, stream_seed)

log = logging.getLogger("dode.runner")

FORMAT = 1
RUNS_CSV = "runs.csv"
KEY_COLUMNS = ["run_dir", "seed", "num_samples", "metric"]
INT_COLUMNS = ["nfe", "scale", "batch", "seed", "num_samples", "fit_seed"]
COLUMNS = ["dataset", "checkpoint", "solver", "distill", "nfe", "scale", "batch", "seed", "num_samples",
           "metric", "value", "fit_seconds", "sample_seconds", "metric_seconds", "fit_seed", "run_dir"]


# ------------------------------------------------------------------------------------ corrections
@dataclass(frozen=True)
class DistillKind:
    """How a ``conf/distill/*.yaml`` of this ``kind`` becomes a correction.

    ``fit``: ``"module:function"`` called as ``fn(denoiser, noise, point, progress, provenance)`` →
    an object with ``save(path)``; ``load``: ``"module:function"`` ``(path)`` → that object (what
    :func:`dode.sample` takes as ``lambdas``); ``fits``: whether K, B and the fit seed matter (the
    fit batch is drawn and they enter the run hash). A distill config may also name ``fit``/``load``
    itself, which overrides its kind's entry.
    """

    fit: str | None
    load: str | None = "dode.core.path:Correction.load"
    fits: bool = True


# A new method is a conf/distill/<name>.yaml (with `kind: <kind>`) plus, for a new kind, one line here.
DISTILL_KINDS: dict[str, DistillKind] = {
    "none": DistillKind(None, None, fits=False),
    "dode": DistillKind("dode.runner.experiment:fit_dode"),
    "fixed": DistillKind("dode.runner.experiment:fixed_correction", fits=False),
    "iia": DistillKind("dode.learn.learned:fit_iia_point"),
    "s4s": DistillKind("dode.learn.learned:fit_s4s_point"),
    "s4s_alt": DistillKind("dode.learn.learned:fit_s4s_alt_point"),
}


def _import(ref: str):
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def distill_kind(distill: dict) -> DistillKind:
    kind = distill.get("kind", "none")
    if kind not in DISTILL_KINDS and not distill.get("fit"):
        raise UserError(f"distill kind {kind!r} is not registered; valid kinds: {', '.join(DISTILL_KINDS)} "
                        "(or give the distill config `fit: module:function`)")
    base = DISTILL_KINDS.get(kind, DistillKind(None))
    return DistillKind(distill.get("fit", base.fit), distill.get("load", base.load), distill.get("fits", base.fits))


def fit_dode(denoiser, noise, point: dict, progress: bool, provenance: dict):
    """D-ODE and its appendix forms: :func:`dode.learn.dode.fit_correction`."""
    from dode.learn.dode import fit_correction

    d = point["distill"]
    return fit_correction(denoiser, noise, point["solver"]["name"], point["nfe"], point["scale"],
                          d.get("form", "dode"), grid=point["solver"].get("grid"), teacher=d.get("teacher"),
                          progress=progress, **provenance)


def fixed_correction(denoiser, noise, point: dict, progress: bool, provenance: dict):
    """One λ shared by all evaluations (Fixed-D-ODE, lookahead): nothing to fit."""
    from dode.core.path import Correction

    d = point["distill"]
    return Correction.fixed(d.get("form", "dode"), float(d["lam"]), point["nfe"], fit_seconds=0.0, **provenance)


# ------------------------------------------------------------------------------------ run folders
_NOT_HASHED = {"label", "path", "description", "doc", "_doc", "source"}


def _strip(node):
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in sorted(node.items()) if k not in _NOT_HASHED}
    if isinstance(node, (list, tuple)):
        return [_strip(v) for v in node]
    return node


def short_hash(obj, n: int = 8) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def run_spec(point: dict) -> dict:
    """Everything that determines the images of a point (and nothing else)."""
    kind = distill_kind(point["distill"])
    spec = {
        "format": FORMAT,
        "dataset": point["choices"]["dataset"],
        "checkpoint": {"name": point["choices"]["checkpoint"], **_strip(point["checkpoint"])},
        "solver": _strip(point["solver"]),
        "nfe": int(point["nfe"]),
        "dtype": point.get("dtype", "float32"),
        "distill": _strip(point["distill"]),
    }
    if kind.fits:
        spec.update(scale=int(point["scale"]), batch=int(point["batch"]), fit_seed=int(point["fit_seed"]))
    return spec


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in str(name))


def run_dir(point: dict) -> Path:
    """``<results_dir>/<dataset>/<checkpoint>/<solver>-nfe<N>-<distill>[-K<K>-B<B>]-<hash8>``."""
    c = point["choices"]
    name = f"{point['solver']['name']}-nfe{point['nfe']}-{c['distill']}"
    if distill_kind(point["distill"]).fits:
        name += f"-K{point['scale']}-B{point['batch']}"
    name += f"-{short_hash(run_spec(point))}"
    return Path(point["results_dir"]) / _safe(c["dataset"]) / _safe(c["checkpoint"]) / _safe(name)


def eval_id(point: dict) -> str:
    """``<eval>-n<num_samples>-<hash6>``: the metric file of one seed."""
    ds = {k: v for k, v in point["dataset"].items() if k != "num_samples"}
    h = short_hash({"eval": _strip(point["eval"]), "dataset": _strip(ds)}, 6)
    return f"{_safe(point['choices']['eval'])}-n{point['num_samples']}-{h}"


# ----------------------------------------------------------------------------------- file helpers
@contextlib.contextmanager
def file_lock(path: Path, wait_message: str | None = None) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``path`` (created if needed) for the ``with`` body."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait_message:
                log.info(wait_message)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def remove_stale_tmp(folder: Path) -> int:
    """Delete temporary files (``.<name>.<host>.<pid>.tmp``) left by dead processes of this host."""
    host, removed = socket.gethostname(), 0
    for tmp in folder.rglob(".*.tmp"):
        head, pid, _ = tmp.name.rsplit(".", 2)
        if not pid.isdigit() or not head.endswith(f".{host}"):
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=1, default=str) + "\n").encode())


def read_json(path: Path):
    """The JSON in ``path``, or None when it is missing or unreadable (an incomplete artifact)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RunLog:
    """Appends concise timestamped lines to ``run.log`` in a run folder (and logs them on rank 0)."""

    def __init__(self, folder: Path, rank: int = 0):
        self.path, self.rank = folder / "run.log", rank

    def __call__(self, msg: str, console: bool = True, level: int = logging.INFO) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path, "a") as f:
            f.write(f"{stamp} [rank {self.rank}] {msg}\n")
        if console and (self.rank == 0 or level >= logging.WARNING):
            log.log(level, f"{self.path.parent.name}: {msg}")


# ------------------------------------------------------------------------------- shards, manifest
@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"shard-{self.start:07d}-{self.stop:07d}.npz"

    def __len__(self) -> int:
        return self.stop - self.start


def shard_plan(num_samples: int, shard_size: int) -> list[Shard]:
    """Shards of ``shard_size`` samples aligned at multiples of it (the last one clipped)."""
    return [Shard(k, s, min(s + shard_size, num_samples)) for k, s in enumerate(range(0, num_samples, shard_size))]


def encode_shard(images: np.ndarray, indices: np.ndarray, seed: int) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=images, indices=indices.astype(np.int64), seed=np.int64(seed))
    return buf.getvalue()


def decode_shard(data: bytes, shard: Shard, seed: int) -> np.ndarray | None:
    """The images of a shard file's bytes, or None when it is not a complete shard of ``shard``."""
    try:
        with np.load(io.BytesIO(data)) as z:
            images, indices, s = z["images"], z["indices"], int(z["seed"])
    except Exception:  # truncated / corrupted zip, missing member, …
        return None
    ok = (images.dtype == np.uint8 and images.ndim == 4 and len(images) == len(shard) and s == seed
          and np.array_equal(indices, np.arange(shard.start, shard.stop)))
    return images if ok else None


class Manifest:
    """``samples/manifest.json``: the complete shards of one (run, seed) with their sha256.

    Updated under an ``fcntl`` lock with an atomic replace, so processes may add shards at once.
    """

    def __init__(self, folder: Path, header: dict):
        self.folder, self.path, self.header = folder, folder / "manifest.json", header

    def read(self) -> dict:
        data = read_json(self.path)
        return data if isinstance(data, dict) and isinstance(data.get("shards"), dict) else {"shards": {}}

    def add(self, shard: Shard, entry: dict) -> None:
        with file_lock(self.folder / ".manifest.lock"):
            data = self.read()
            data.update(self.header)
            data["shards"][shard.name] = entry
            data["shards"] = dict(sorted(data["shards"].items()))
            write_json(self.path, data)

    def check(self, shard: Shard, seed: int, entries: dict) -> tuple[str, np.ndarray | None]:
        """(status, images): ``complete``, ``adopted`` (a whole shard file the manifest missed),
        ``missing`` or ``corrupt``."""
        path = self.folder / shard.name
        try:
            data = path.read_bytes()
        except OSError:
            return "missing", None
        entry = entries.get(shard.name)
        digest = sha256_bytes(data)
        if entry is not None and entry.get("sha256") == digest:
            images = decode_shard(data, shard, seed)
            return ("complete", images) if images is not None else ("corrupt", None)
        images = decode_shard(data, shard, seed) if entry is None else None
        if images is None:
            return "corrupt", None
        self.add(shard, {"start": shard.start, "stop": shard.stop, "seed": seed, "sha256": digest,
                         "bytes": len(data), "seconds": None, "rank": None})
        return "adopted", images


# ------------------------------------------------------------------------------- model and metric
def metric_name(point: dict) -> str:
    ev = point["eval"]
    return str(ev.get("metric") or ev.get("name") or point["choices"]["eval"])


def _metric_kwargs(point: dict, device: str) -> dict:
    kw = {k: v for k, v in point["eval"].items() if k not in META_KEYS and k != "metric"}
    kw.setdefault("dataset", point["dataset"].get("name", point["choices"]["dataset"]))
    if kw.get("device") in (None, "auto"):
        kw["device"] = device
    return kw


def check_eval(point: dict) -> None:
    """Fail before sampling when the metric's reference statistics are missing."""
    if "_target_" in point["eval"]:
        return
    from dode.eval import metrics

    name = metrics.check_metric(metric_name(point))
    if name != "fd_digits":  # FD-digits computes its reference from the embedded set
        metrics.reference_stats(name, **_metric_kwargs(point, "cpu"))


def check_files(point: dict) -> None:
    """Before any process starts: the checkpoint file(s) and the metric's reference statistics exist.
    Every missing piece is reported at once, each saying where to get it and where to put it."""
    problems = []
    ck = point["checkpoint"]
    if "_target_" not in ck:
        from dode.models.checkpoints import resolve_file

        parts = [(ck, "checkpoint")]
        if isinstance(ck.get("classifier"), dict):
            parts.append((ck["classifier"], "checkpoint.classifier"))
        for cfg, key in parts:
            if cfg.get("file") or cfg.get("path"):
                try:
                    resolve_file(cfg, key)
                except UserError as e:
                    problems.append(str(e))
    try:
        check_eval(point)
    except UserError as e:
        problems.append(str(e))
    if problems:
        raise UserError("\n\n".join(problems))


def compute_metric(images: np.ndarray, point: dict, device: str, progress: bool) -> dict:
    """``{"value": float, "mu": …, "sigma": …}`` of uint8 images (N, H, W, C) under the ``eval``
    config: :mod:`dode.eval.metrics` (features, then the Fréchet distance), or a callable ``_target_``
    returning a float or such a dict."""
    ev = point["eval"]
    if "_target_" in ev:
        from hydra.utils import instantiate

        out = instantiate({k: v for k, v in ev.items() if k not in META_KEYS}, _partial_=True)(images)
        out = dict(out) if isinstance(out, dict) else {"value": out}
    else:
        from dode.eval import metrics

        name, kw = metric_name(point), _metric_kwargs(point, device)
        metrics.reference_stats(name, **kw)  # a missing reference fails before the features
        feats = metrics.extract_features(name, images, progress=progress, **kw)
        mu, sigma = metrics.feature_stats(feats)
        out = {"value": metrics.score_features(name, feats, **kw), "mu": mu, "sigma": sigma,
               "feature_dim": int(feats.shape[1])}
    out["value"] = float(out["value"])
    return out


# ------------------------------------------------------------------------------------- validation
def check_point(point: dict) -> None:
    """Cheap checks before any process starts (names, NFE of the solver, seeds, sizes)."""
    from dode.core.solvers import get_solver

    try:
        get_solver(point["solver"]["name"]).plan(int(point["nfe"]), True)
    except ValueError as e:
        raise UserError(f"solver={point['choices']['solver']} nfe={point['nfe']}: {e}") from None
    distill_kind(point["distill"])
    for s in point["seeds"]:
        if not (0 <= int(s) < FIT_BLOCK):
            raise UserError(f"evaluation seeds must be integers in [0, {FIT_BLOCK}), got {s}")
    if not (0 <= int(point["fit_seed"]) <= MAX_FIT_SEED):
        raise UserError(f"fit_seed must be in [0, {MAX_FIT_SEED}], got {point['fit_seed']}")
    for key in ("num_samples", "batch"):
        if not (1 <= int(point[key]) <= BLOCK):
            raise UserError(f"{key} must be in [1, {BLOCK}] (samples per seed block), got {point[key]}")
    for key in ("scale", "batch", "batch_size", "shard_size"):
        if int(point[key]) < 1:
            raise UserError(f"{key} must be a positive integer, got {point[key]}")


def check_with_model(point: dict, denoiser) -> None:
    """Checks that need the model: the grid fits the schedule and K·N ≤ T for the teacher."""
    from dode.learn.dode import student_points
    from dode.core.sampling import solver_grid
    from dode.core.schedules import schedule_of

    name, nfe = point["solver"]["name"], int(point["nfe"])
    try:
        spec, sigmas, plan = solver_grid(denoiser, name, nfe, point["solver"].get("grid"))
    except ValueError as e:
        raise UserError(f"solver={name} nfe={nfe} on checkpoint {point['choices']['checkpoint']}: {e}") from None
    sched = schedule_of(denoiser)
    if distill_kind(point["distill"]).fits and getattr(sched, "discrete", False):
        n = len(student_points(denoiser, spec, sigmas, plan)[1]) - 1
        k = int(point["scale"])
        if k * n > sched.T:
            raise UserError(
                f"scale={k} is impossible for {name} at nfe={nfe} on {point['choices']['checkpoint']}: the teacher "
                f"refines each of the {n} student intervals K times, K·N = {k}·{n} = {k * n} steps, but the model "
                f"has only T = {sched.T} timesteps. Use scale ≤ {sched.T // n} (or a smaller nfe).")


# ------------------------------------------------------------------------------------------ stages
def fit_stage(point: dict, folder: Path, denoiser, ctx, rlog: RunLog, shape: tuple):
    """The correction of ``point`` (None for the base solver); fitted once, by rank 0."""
    kind = distill_kind(point["distill"])
    if kind.fit is None:
        return None
    path = folder / "lambdas.json"
    load = _import(kind.load)

    def complete() -> bool:
        if read_json(path) is None:
            return False
        try:
            load(path)
            return True
        except Exception:
            return False

    if ctx.main:
        if complete():
            rlog("fit: lambdas.json complete, skipped", console=False)
        else:
            block = fit_block(point["fit_seed"])
            noise, seeds = make_noise(block, range(int(point["batch"]) if kind.fits else 0), shape, _dtype(point))
            set_labels(denoiser, point, seeds, ctx.device)
            provenance = {
                "run_dir": str(folder), "run_spec": run_spec(point), "distill": point["choices"]["distill"],
                "checkpoint": point["choices"]["checkpoint"], "dataset": point["choices"]["dataset"],
                "fit_seed": int(point["fit_seed"]), "fit_noise": f"block {block}: torch.Generator seeded "
                f"{block}·10^7 + j, j < {len(noise)}", "device": ctx.device, "dtype": point.get("dtype"),
            }
            start = time.perf_counter()
            with torch.enable_grad():  # gradient-based fits (S4S) need it; closed-form ones make no graph
                corr = _import(kind.fit)(denoiser, noise.to(ctx.device), point, bool(point.get("progress")), provenance)
            seconds = time.perf_counter() - start
            if hasattr(corr, "provenance") and isinstance(corr.provenance, dict):
                corr.provenance.setdefault("fit_seconds", seconds)
            tmp = _tmp(path)
            corr.save(tmp)
            os.replace(tmp, path)
            rlog(f"fit: {point['choices']['distill']} in {seconds:.1f} s → lambdas.json")
    ctx.barrier()
    return load(path)


def _dtype(point: dict) -> torch.dtype:
    name = point.get("dtype", "float32")
    if name not in ("float32", "float64"):
        raise UserError(f"dtype must be float32 or float64, got {name!r}")
    return getattr(torch, name)


def generate_stage(point: dict, folder: Path, seed: int, denoiser, correction, ctx, rlog: RunLog,
                   shape: tuple) -> None:
    """Generate the missing shards of ``seed`` striped over the processes (shard k → rank k mod W)."""
    from dode.eval.data import to_uint8
    from dode.core.sampling import sample

    n, size, bs = int(point["num_samples"]), int(point["shard_size"]), int(point["batch_size"])
    samples = folder / f"seed-{seed}" / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    block = eval_block(seed)
    manifest = Manifest(samples, {
        "format": FORMAT, "run_dir": str(folder), "seed": seed, "seed_block": block, "shape": list(shape),
        "rng": "per sample i: torch.Generator().manual_seed(seed_block·10^7 + i); noise = randn(C, H, W)"
               " (then its label for conditional models)"})
    entries = manifest.read()["shards"]
    mine = [sh for sh in shard_plan(n, size) if sh.index % ctx.world == ctx.rank]
    grid = sampling_grid(point, correction)
    todo = []
    for sh in mine:
        status, _ = manifest.check(sh, seed, entries)
        if status == "corrupt":
            rlog(f"seed {seed}: {sh.name} is corrupted or truncated; regenerating it", level=logging.WARNING)
        if status in ("missing", "corrupt"):
            todo.append(sh)
    if todo:
        total = sum(len(sh) for sh in todo)
        bar = _bar(total, f"sample {point['solver']['name']}@{point['nfe']} {point['choices']['distill']} seed {seed}",
                   point, ctx)
        start_all = time.perf_counter()
        for sh in todo:
            start = time.perf_counter()
            parts = []
            for b0 in range(sh.start, sh.stop, bs):
                idx = range(b0, min(b0 + bs, sh.stop))
                noise, seeds = make_noise(block, idx, shape, _dtype(point))
                set_labels(denoiser, point, seeds, ctx.device)
                with torch.no_grad():
                    x = sample(denoiser, noise.to(ctx.device), solver=point["solver"]["name"], nfe=int(point["nfe"]),
                               lambdas=correction, grid=grid)
                parts.append(to_uint8(x))
                bar.update(len(idx))
            data = encode_shard(np.concatenate(parts), np.arange(sh.start, sh.stop), seed)
            write_atomic(samples / sh.name, data)
            manifest.add(sh, {"start": sh.start, "stop": sh.stop, "seed": seed, "sha256": sha256_bytes(data),
                              "bytes": len(data), "seconds": round(time.perf_counter() - start, 4),
                              "rank": ctx.rank})
        bar.close()
        rlog(f"seed {seed}: generated {len(todo)} shard(s), {total} samples in {time.perf_counter() - start_all:.1f} s"
             + (f" on rank {ctx.rank} of {ctx.world}" if ctx.world > 1 else ""), console=False)
    ctx.barrier()


def sampling_grid(point: dict, correction):
    """The solver's configured grid, or the grid a correction learned (S4S-Alt)."""
    from dode.learn.learned import grid_of

    return grid_of(correction, point["solver"].get("grid"))


def _bar(total: int, desc: str, point: dict, ctx):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, disable=not (ctx.main and point.get("progress")))


def load_samples(point: dict, folder: Path, seed: int) -> tuple[np.ndarray, str, float]:
    """(all images of ``seed`` in index order, digest of the shard hashes, summed sampling seconds);
    every shard is checked against the manifest."""
    samples = folder / f"seed-{seed}" / "samples"
    manifest = Manifest(samples, {})
    entries = manifest.read()["shards"]
    images, digest, seconds = [], hashlib.sha256(), 0.0
    for sh in shard_plan(int(point["num_samples"]), int(point["shard_size"])):
        status, im = manifest.check(sh, seed, entries)
        if im is None:
            raise RuntimeError(f"{samples / sh.name} is {status} after generation; rerun to regenerate it")
        entry = manifest.read()["shards"][sh.name] if status == "adopted" else entries[sh.name]
        images.append(im)
        digest.update(entry["sha256"].encode())
        seconds += float(entry.get("seconds") or 0.0)
    return np.concatenate(images), digest.hexdigest(), seconds


def metric_stage(point: dict, folder: Path, seed: int, rlog: RunLog, device: str = "cpu") -> dict:
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
    out = compute_metric(images, point, device, bool(point.get("progress")))
    seconds = round(time.perf_counter() - start, 4)
    features = {k: out.pop(k) for k in list(out) if isinstance(out[k], (np.ndarray, torch.Tensor))}
    result = {"metric": point["choices"]["eval"], "value": out.pop("value"), "seed": seed,
              "num_samples": int(point["num_samples"]), "samples_digest": digest, "sample_seconds": round(sample_seconds, 4),
              "metric_seconds": seconds, "eval": point["eval"], **out}
    if features:
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in features.items()})
        write_atomic(metrics / f"{eid}.features.npz", buf.getvalue())
        result["features"] = {"file": f"{eid}.features.npz",
                              **{k: list(np.asarray(v).shape) for k, v in features.items()}}
    write_json(path, result)
    rlog(f"seed {seed}: {point['choices']['eval']} = {result['value']:.4f} ({len(images)} samples, {seconds:.1f} s)")
    return result


# ----------------------------------------------------------------------------------------- runs.csv
def csv_row(point: dict, folder: Path, seed: int, result: dict, correction) -> dict:
    c = point["choices"]
    fits = distill_kind(point["distill"]).fits
    prov = getattr(correction, "provenance", None) or {}
    return {
        "dataset": c["dataset"], "checkpoint": c["checkpoint"], "solver": point["solver"]["name"],
        "distill": c["distill"], "nfe": int(point["nfe"]), "scale": int(point["scale"]) if fits else None,
        "batch": int(point["batch"]) if fits else None, "seed": int(seed), "num_samples": int(point["num_samples"]),
        "metric": c["eval"], "value": result["value"],
        "fit_seconds": prov.get("fit_seconds") if correction is not None else None,
        "sample_seconds": result.get("sample_seconds"), "metric_seconds": result.get("metric_seconds"),
        "fit_seed": int(point["fit_seed"]) if fits else None, "run_dir": str(folder),
    }


def record(results_dir: str | Path, rows: list[dict]) -> None:
    """Insert or replace ``rows`` in ``<results_dir>/runs.csv`` (key: run_dir, seed, num_samples,
    metric), under an ``fcntl`` lock with an atomic replace, so concurrent runs never lose a row."""
    import pandas as pd

    if not rows:
        return
    path = Path(results_dir) / RUNS_CSV
    new = pd.DataFrame(rows)
    with file_lock(path.with_name(f".{RUNS_CSV}.lock")):
        if path.exists() and path.stat().st_size > 0:
            old = pd.read_csv(path)
            keys = set(new[KEY_COLUMNS].astype(str).itertuples(index=False, name=None))
            keep = ~pd.Series(list(old[KEY_COLUMNS].astype(str).itertuples(index=False, name=None))).isin(keys).values
            both = [d for d in (old[keep], new) if len(d)]
            table = pd.concat(both, ignore_index=True)
        else:
            table = new
        for col in INT_COLUMNS:  # nullable integers: the base solver has no K, B or fit seed
            if col in table.columns:
                table[col] = pd.to_numeric(table[col]).astype("Int64")
        cols = [c for c in COLUMNS if c in table.columns] + [c for c in table.columns if c not in COLUMNS]
        buf = io.StringIO()
        table[cols].to_csv(buf, index=False)
        write_atomic(path, buf.getvalue().encode())


def read_runs(results_dir: str | Path):
    import pandas as pd

    path = Path(results_dir) / RUNS_CSV
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=COLUMNS)


# ------------------------------------------------------------------------------------------ driver
def execute(ctx, job: dict) -> list[dict]:
    """Run every point of ``job`` in this process (rank ``ctx.rank`` of ``ctx.world``)."""
    if ctx.main and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    with torch.no_grad():
        return _execute(ctx, job)


def _execute(ctx, job: dict) -> list[dict]:
    rows: list[dict] = []
    models: dict[str, tuple[Any, str | None]] = {}

    def model(point):
        key = json.dumps(point["checkpoint"], sort_keys=True, default=str)
        if key not in models:
            models.clear()
            den = load_denoiser(point, ctx.device)
            models[key] = (den, weights_digest(den))
        return models[key]

    for point in job["points"]:  # every impossible configuration fails before any work starts, on every rank
        den, weights = model(point)
        check_with_model(point, den)
        check_weights(run_dir(point), weights, point)
    for point in job["points"]:
        den, weights = model(point)
        rows += run_point(point, den, ctx, weights)
    return rows


def weights_digest(denoiser) -> str | None:
    """sha256 of the model's weights (every state-dict entry: name, dtype, shape, bytes), or None
    for a model without any (not an ``nn.Module``, or one holding no tensors). Run folders are named
    after the config; this digest, kept in run.json, tells whether the checkpoint file behind the
    name has changed since."""
    state = denoiser.state_dict() if isinstance(denoiser, torch.nn.Module) else {}
    if not state:
        return None
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def check_weights(folder: Path, weights: str | None, point: dict) -> None:
    """A run folder made with other weights under the same checkpoint name is never reused."""
    before = (read_json(folder / "run.json") or {}).get("weights_sha256")
    if before and weights and before != weights:
        raise UserError(f"{folder} was made with other weights of checkpoint {point['choices']['checkpoint']!r} "
                        f"(sha256 {before[:12]}… then, {weights[:12]}… now): its fit, samples and metrics belong "
                        "to the old model. Move or delete that folder to recompute with the current weights; "
                        "nothing was changed.")


def run_point(point: dict, denoiser, ctx, weights: str | None = None) -> list[dict]:
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
            info = {"spec": run_spec(point), "point": point, "weights_sha256": weights}
            if read_json(folder / "run.json") != json.loads(json.dumps(info, default=str)):
                write_json(folder / "run.json", info)
            rlog(f"start ({ctx.world} process{'es' if ctx.world > 1 else ''}, device {ctx.device})", console=False)
            if remove_stale_tmp(folder):
                rlog("removed temporary files of an interrupted run", console=False)
        shape = image_shape(point, denoiser)
        correction = fit_stage(point, folder, denoiser, ctx, rlog, shape)
        for seed in point["seeds"]:
            generate_stage(point, folder, int(seed), denoiser, correction, ctx, rlog, shape)
            if ctx.main:
                result = metric_stage(point, folder, int(seed), rlog, ctx.device)
                row = csv_row(point, folder, int(seed), result, correction)
                record(point["results_dir"], [row])
                rows.append(row)
        ctx.barrier()
    return rows


# --------------------------------------------------------------------------------- points, summary
def build_points(cfg, choices: dict, none_distill: dict | None = None, with_files: bool = True) -> list[dict]:
    """The points of a ``dode-run`` config: every NFE of ``nfe``, the base solver first when
    ``compare_base`` and a correction is chosen. ``with_files``: also check that the checkpoint and
    the metric's reference statistics exist (:func:`check_files`)."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    nfes = c["nfe"] if isinstance(c["nfe"], list) else [c["nfe"]]
    seeds = c["seeds"] if isinstance(c["seeds"], list) else [c["seeds"]]
    if not nfes or not seeds:
        raise UserError("nfe and seeds must not be empty")
    keys = ("dataset", "checkpoint", "eval", "solver", "scale", "batch", "fit_seed", "num_samples", "batch_size",
            "shard_size", "dtype", "results_dir", "progress")
    base = {k: c[k] for k in keys}
    base["seeds"] = [int(s) for s in seeds]
    base["choices"] = {g: str(choices.get(g)) for g in ("dataset", "checkpoint", "eval", "solver", "distill")}
    distills = [(base["choices"]["distill"], c["distill"])]
    if c.get("compare_base") and c["distill"].get("kind", "none") != "none":
        distills.insert(0, ("none", none_distill or {"name": "none", "kind": "none", "label": "base"}))
    points = []
    for nfe in nfes:
        if isinstance(nfe, bool) or not isinstance(nfe, int):
            raise UserError(f"nfe must be an integer or a list of integers, got {nfe!r}")
        for name, d in distills:
            p = {**base, "nfe": nfe, "distill": d, "choices": {**base["choices"], "distill": name}}
            check_point(p)
            points.append(p)
    if with_files:
        check_files(points[0])
    return points


def summary(points: list[dict], table=None) -> str:
    """A readable table of the points' rows in runs.csv: solver, NFE, base vs correction (mean ± std
    over the seeds), λ fit time."""
    if not points:
        return ""
    df = read_runs(points[0]["results_dir"]) if table is None else table
    dirs = {str(run_dir(p)) for p in points}
    eids = {p["choices"]["eval"] for p in points}
    seeds = set(points[0]["seeds"])
    df = df[df["run_dir"].astype(str).isin(dirs) & df["metric"].isin(eids) & df["seed"].isin(seeds)
            & (df["num_samples"] == int(points[0]["num_samples"]))]
    if df.empty:
        return "(no finished runs)"
    order = list(dict.fromkeys(p["choices"]["distill"] for p in points))
    labels = {p["choices"]["distill"]: p["distill"].get("label", p["choices"]["distill"]) for p in points}
    lines = []
    metric = points[0]["choices"]["eval"]
    spread = ", mean ± std over seeds" if len(seeds) > 1 else ""
    lines.append(f"{points[0]['choices']['dataset']} · {points[0]['choices']['checkpoint']} · {metric} "
                 f"({len(seeds)} seed{'s' if len(seeds) > 1 else ''} × {points[0]['num_samples']} samples{spread})")
    header = ["solver", "NFE"] + [f"{labels[d]} ({d})" if labels[d] != d else d for d in order]
    fitted = [d for d in order if df[df["distill"] == d]["fit_seconds"].notna().any()]
    header += ["λ fit [s]"] if fitted else []
    rows = []
    for (solver, nfe), g in df.groupby(["solver", "nfe"], sort=False):
        row = [solver, str(nfe)]
        for d in order:
            v = g[g["distill"] == d]["value"].astype(float)
            row.append("—" if v.empty else (f"{v.mean():.3f}" if len(v) == 1 else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"))
        if fitted:
            f = g[g["distill"].isin(fitted)]["fit_seconds"].astype(float)
            row.append(f"{f.max():.1f}" if f.notna().any() else "—")
        rows.append(row)
    order_nfe = {(p["solver"]["name"], str(p["nfe"])): i for i, p in enumerate(points)}
    rows.sort(key=lambda r: order_nfe.get((r[0], r[1]), 0))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def fmt(cells: list[str]) -> str:  # first column left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines += [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    lines.append(f"runs.csv: {Path(points[0]['results_dir']) / RUNS_CSV}")
    return "\n".join(lines)
