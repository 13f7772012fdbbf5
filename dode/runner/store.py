"""Run folders on disk: names and hashes, locks, atomic files, sample shards and their manifest.

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
correction, for fitted corrections K, B and the fit seed, and the precision options that are not
their defaults), so a rerun finds its folder again
and two different configurations never share one.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
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

from dode.errors import UserError
from dode.runner.points import Point
from dode.runner.precision import precision_spec

log = logging.getLogger("dode.runner")

FORMAT = 1
# config keys that change no image or metric value (names, documentation, where a file is, whether
# its code may run)
NOT_HASHED = {"label", "path", "description", "doc", "_doc", "source", "inception_weights", "trust_pickle"}


# ------------------------------------------------------------------------------------ names, hashes
def strip(node: Any) -> Any:
    """A config node without the keys of :data:`NOT_HASHED`, dict keys sorted (recursively)."""
    if isinstance(node, dict):
        return {k: strip(v) for k, v in sorted(node.items()) if k not in NOT_HASHED}
    if isinstance(node, (list, tuple)):
        return [strip(v) for v in node]
    return node


def short_hash(obj: Any, n: int = 8) -> str:
    """The first ``n`` hex digits of the SHA-256 of ``obj`` as sorted-key JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def run_spec(point: Point) -> dict:
    """Everything that determines the images of a point (and nothing else)."""
    spec = {
        "format": FORMAT,
        "dataset": point.choices.dataset,
        "checkpoint": {"name": point.choices.checkpoint, **strip(point.checkpoint)},
        "solver": strip(point.solver),
        "nfe": point.nfe,
        "dtype": point.dtype,
        "distill": strip(point.distill),
    }
    if point.fits:
        spec.update(scale=point.scale, batch=point.batch, fit_seed=point.fit_seed)
    speed = precision_spec(point.speed())
    if speed:  # only when not the default fp32 run, so the default runs keep their folders
        spec["precision"] = speed
    return spec


def safe_name(name: str) -> str:
    """``name`` with every character but letters, digits and ``-_.+`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in str(name))


def run_key(point: Point) -> str:
    """The full SHA-256 of :func:`run_spec` (its first 8 digits end the folder name): the run a
    shard or manifest belongs to."""
    return hashlib.sha256(json.dumps(run_spec(point), sort_keys=True, default=str).encode()).hexdigest()


def run_dir(point: Point) -> Path:
    """``<results_dir>/<dataset>/<checkpoint>/<solver>-nfe<N>-<distill>[-K<K>-B<B>]-<hash8>``."""
    c = point.choices
    name = f"{point.solver['name']}-nfe{point.nfe}-{c.distill}"
    if point.fits:
        name += f"-K{point.scale}-B{point.batch}"
    name += f"-{short_hash(run_spec(point))}"
    return Path(point.results_dir) / safe_name(c.dataset) / safe_name(c.checkpoint) / safe_name(name)


def eval_id(point: Point) -> str:
    """``<eval>-n<num_samples>-<hash6>``: the metric file of one seed."""
    ds = {k: v for k, v in point.dataset.items() if k not in ("num_samples", "num_classes")}
    h = short_hash({"eval": strip(point.eval), "dataset": strip(ds)}, 6)
    return f"{safe_name(point.choices.eval)}-n{point.num_samples}-{h}"


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


def temp_path(path: Path) -> Path:
    """The temporary file ``.<name>.<host>.<pid>.tmp`` next to ``path`` (replaced onto it when complete)."""
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
    """Write to a temporary file in the same folder, fsync, then ``os.replace``; on failure (a full
    disk) the temporary file is removed and ``path`` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class DiskError(UserError):
    """A results folder that cannot be written (read-only, no permission, full)."""


DISK_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def disk_error(e: OSError) -> DiskError | None:
    """The one-line :class:`DiskError` of a write that failed for lack of space or permission
    (naming the path), or None for any other ``OSError``."""
    if e.errno not in DISK_ERRNOS:
        return None
    where = e.filename or "the results folder"
    why = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "it is read-only or not writable"
    return DiskError(f"cannot write {where}: {why} ({e.strerror}). Everything finished before is kept and "
                     "complete; free space or make the folder writable (or choose results_dir=…), then rerun "
                     "the same command to finish.")


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON, written atomically."""
    write_atomic(path, (json.dumps(obj, indent=1, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable (an incomplete artifact)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RunLog:
    """Appends concise timestamped lines to ``run.log`` in a run folder (and logs them on rank 0)."""

    def __init__(self, folder: Path, rank: int = 0) -> None:
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
    """Samples ``start`` … ``stop − 1`` of one seed: the unit of resuming and of striping."""

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


def encode_shard(images: np.ndarray, indices: np.ndarray, seed: int, run: str | None = None) -> bytes:
    """The ``.npz`` bytes of a shard: images, their sample indices, the seed and the run key
    (:func:`run_key`, when given)."""
    buf = io.BytesIO()
    extra = {"run": np.str_(run)} if run is not None else {}
    np.savez(buf, images=images, indices=indices.astype(np.int64), seed=np.int64(seed), **extra)
    return buf.getvalue()


def decode_shard(data: bytes, shard: Shard, seed: int, run: str | None = None,
                 keyless: bool = True) -> np.ndarray | None:
    """The images of a shard file's bytes, or None when it is not a complete shard of ``shard``:
    its header must name this seed, exactly the shard's sample indices and — when ``run`` is given —
    this run key; a shard without a run key (written before shards carried one) passes only when
    ``keyless``."""
    try:
        with np.load(io.BytesIO(data)) as z:
            images, indices, s = z["images"], z["indices"], int(z["seed"])
            key = str(z["run"]) if "run" in z.files else None
    except Exception:  # truncated / corrupted zip, missing member, …
        return None
    ok = (images.dtype == np.uint8 and images.ndim == 4 and len(images) == len(shard) and s == seed
          and np.array_equal(indices, np.arange(shard.start, shard.stop))
          and (run is None or key == run or (key is None and keyless)))
    return images if ok else None


class Manifest:
    """``samples/manifest.json``: the complete shards of one (run, seed) with their sha256.

    Updated under an ``fcntl`` lock with an atomic replace, so processes may add shards at once.
    With a ``run`` key (:func:`run_key`), a manifest naming another run counts as empty, and a
    shard file the manifest does not list is adopted only if its header names this run, seed and
    indices (shards listed before run keys existed stay valid through their sha256).
    """

    def __init__(self, folder: Path, header: dict, run: str | None = None) -> None:
        self.folder, self.path, self.run = folder, folder / "manifest.json", run
        self.header = {**header, "run": run} if run is not None else header

    def read(self) -> dict:
        data = read_json(self.path)
        ok = isinstance(data, dict) and isinstance(data.get("shards"), dict)
        if not ok or (self.run is not None and data.get("run", self.run) != self.run):
            return {"shards": {}}
        return data

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
            images = decode_shard(data, shard, seed, self.run)
            return ("complete", images) if images is not None else ("corrupt", None)
        images = decode_shard(data, shard, seed, self.run, keyless=False) if entry is None else None
        if images is None:
            return "corrupt", None
        self.add(shard, {"start": shard.start, "stop": shard.stop, "seed": seed, "sha256": digest,
                         "bytes": len(data), "seconds": None, "rank": None})
        return "adopted", images
