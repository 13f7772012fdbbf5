"""Balanced work: the samples to make (or score) split into equal contiguous parts, one per rank.

The shards to work on, in index order, are laid end to end and cut into ``world`` runs of
``⌊(r+1)·T/W⌋ − ⌊r·T/W⌋`` samples (T in all): every rank gets the same number of samples ±1,
whatever the number and size of the shards. A shard inside one rank's run is written by that rank;
a shard cut by a boundary (at most W − 1 of them) is made in *pieces*: each rank writes its piece
to a hidden part file next to the shards, and after a barrier the rank holding the shard's first
piece (its *owner*) joins them into the shard. Every sample's noise depends on its index only
(:mod:`dode.runner.seeds`), so the shards' bytes do not depend on the world size.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dode.runner.store import Shard, decode_shard


@dataclass(frozen=True)
class Piece:
    """Samples ``start`` … ``stop − 1`` of ``shard``, made by ``rank``."""

    shard: Shard
    start: int
    stop: int
    rank: int

    @property
    def whole(self) -> bool:
        return self.start == self.shard.start and self.stop == self.shard.stop

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def part_name(self) -> str:
        """The hidden part file of a piece (never matched by ``shard-*.npz``)."""
        return f".{self.shard.name[:-4]}.part-{self.start:07d}-{self.stop:07d}.npz"


def even_bounds(total: int, world: int) -> list[int]:
    """``⌊r·total/world⌋`` for r = 0 … world: rank r's contiguous run of ``total`` items is
    ``bounds[r]`` … ``bounds[r + 1] − 1`` (equal lengths ±1; also the fit noises of a data-parallel fit)."""
    return [r * total // world for r in range(world + 1)]


def split_evenly(shards: list[Shard], world: int) -> list[list[Piece]]:
    """The pieces of every rank: ``shards`` (in this order) cut into ``world`` contiguous runs of
    equal length ±1 (see the module docstring)."""
    bounds = even_bounds(sum(len(sh) for sh in shards), world)
    out: list[list[Piece]] = [[] for _ in range(world)]
    offset = 0
    for sh in shards:
        for r in range(world):
            a, b = max(offset, bounds[r]), min(offset + len(sh), bounds[r + 1])
            if a < b:
                out[r].append(Piece(sh, sh.start + a - offset, sh.start + b - offset, r))
        offset += len(sh)
    return out


def pieces_of(shard: Shard, split: list[list[Piece]]) -> list[Piece]:
    """The pieces of ``shard`` over all ranks, in sample order (the first one's rank owns it)."""
    return sorted((p for ps in split for p in ps if p.shard == shard), key=lambda p: p.start)


def encode_part(images: np.ndarray, piece: Piece, seed: int, run: str, seconds: float) -> bytes:
    """The ``.npz`` bytes of a piece: images, their indices, seed, run key and generation seconds."""
    buf = io.BytesIO()
    np.savez(buf, images=images, indices=np.arange(piece.start, piece.stop, dtype=np.int64), seed=np.int64(seed),
             run=np.str_(run), seconds=np.float64(seconds))
    return buf.getvalue()


def read_part(folder: Path, piece: Piece, seed: int, run: str) -> tuple[np.ndarray, float]:
    """(images, seconds) of a piece's part file; a missing or wrong one is a RuntimeError naming it."""
    path = folder / piece.part_name
    try:
        data = path.read_bytes()
        images = decode_shard(data, Shard(piece.shard.index, piece.start, piece.stop), seed, run, keyless=False)
        with np.load(io.BytesIO(data)) as z:
            seconds = float(z["seconds"])
    except (OSError, KeyError, ValueError):
        images = None
    if images is None:
        raise RuntimeError(f"{path}: the piece of rank {piece.rank} is missing or damaged after generation; "
                           "rerun to regenerate its shard")
    return images, seconds


def remove_parts(folder: Path) -> None:
    """Delete every part file in ``folder`` (pieces joined, or left by an interrupted run)."""
    for p in folder.glob(".shard-*.part-*.npz"):
        p.unlink(missing_ok=True)
