"""Text prompts of text-to-image evaluations: a local captions file and a seeded selection of N captions.

A dataset config names the file in its ``captions`` entry::

    captions: {file: captions_val2014.json, path: null, count: 30000, seed: 0, source: [...]}

Where it is looked for: ``path`` when set, else ``$DODE_DATA_DIR/<file>``, else ``./data/<file>``.
Formats: MS-COCO annotations JSON (``{"annotations": [{"id", "image_id", "caption"}, …]}``; each
caption keyed by its annotation ``id``), a JSON list of strings, or a text file with one caption per
line (JSON lists and text files: keyed by their 0-based position; blank lines are skipped).

The selection (:func:`select_captions`): the ``count`` captions with the smallest
``sha256("dode-captions:<seed>:<key>")``, in that order. Sample ``i`` (of every evaluation seed, and
of the fit batch) gets caption ``i`` of the selection, so a sample's prompt never depends on the batch
size, the processes or the file's order, and depends on no random-number library's version.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from dode.errors import UserError

__all__ = ["DATA_ENV", "Captions", "read_captions", "select_captions", "resolve_captions", "captions_of"]

DATA_ENV = "DODE_DATA_DIR"
DEFAULT_DIR = "data"


@dataclass(frozen=True)
class Captions:
    """A selection of captions: ``texts[i]`` is the prompt of sample ``i``; ``keys[i]`` its key in the
    file (COCO annotation id or position); ``file`` and its ``sha256``; the selection's ``seed``."""

    texts: tuple[str, ...]
    keys: tuple[int, ...]
    file: str
    sha256: str
    seed: int

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> str:
        return self.texts[i]

    def record(self, n: int) -> dict:
        """The prompts of samples ``0 … n−1`` with where they came from (stored with the samples)."""
        return {"file": self.file, "sha256": self.sha256, "seed": self.seed, "selected": len(self),
                "rule": "sample i gets caption i of the captions sorted by sha256('dode-captions:<seed>:<key>')",
                "prompts": [{"index": i, "key": self.keys[i], "caption": self.texts[i]} for i in range(min(n, len(self)))]}


def read_captions(path: Path) -> list[tuple[int, str]]:
    """``(key, caption)`` pairs of a captions file (formats: module docstring)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"captions file {path} is not valid JSON ({e})") from None
        if isinstance(data, dict) and isinstance(data.get("annotations"), list):
            out = [(int(a["id"]), str(a["caption"]).strip()) for a in data["annotations"]
                   if isinstance(a, dict) and "id" in a and "caption" in a]
        elif isinstance(data, list) and all(isinstance(c, str) for c in data):
            out = [(i, c.strip()) for i, c in enumerate(data)]
        else:
            raise UserError(f"captions file {path}: expected MS-COCO annotations ({{'annotations': [{{'id', "
                            f"'caption'}}, …]}}) or a JSON list of strings")
    else:
        out = [(i, line.strip()) for i, line in enumerate(text.splitlines())]
    out = [(k, c) for k, c in out if c]
    if not out:
        raise UserError(f"captions file {path} holds no captions")
    return out


def select_captions(pairs: list[tuple[int, str]], count: int, seed: int) -> list[tuple[int, str]]:
    """The ``count`` pairs of smallest ``sha256("dode-captions:<seed>:<key>")``, in that order."""
    if count < 1 or count > len(pairs):
        raise UserError(f"captions.count must be in [1, {len(pairs)}] (the captions in the file), got {count}")
    rank = lambda kc: hashlib.sha256(f"dode-captions:{seed}:{kc[0]}".encode()).hexdigest()  # noqa: E731
    return sorted(pairs, key=rank)[:count]


def resolve_captions(cfg: Mapping) -> Path:
    """The captions file of a dataset's ``captions`` entry; a missing file says where to get it and put it."""
    if cfg.get("path"):
        p = Path(os.path.expanduser(str(cfg["path"])))
    elif cfg.get("file"):
        p = Path(os.environ.get(DATA_ENV) or DEFAULT_DIR) / str(cfg["file"])
    else:
        raise UserError("the dataset's captions entry names no file: set dataset.captions.path=/path/to/captions")
    if p.is_file():
        return p
    src = cfg.get("source") or []
    src = [src] if isinstance(src, str) else list(src)
    where = ("dataset.captions.path" if cfg.get("path") else
             f"<dir>/{cfg.get('file')} with <dir> = ${DATA_ENV}, else ./{DEFAULT_DIR}")
    raise UserError("\n".join([f"captions file not found: {p.absolute()} ({where})",
                               "  dode never downloads data; get it from:",
                               *[f"    {s}" for s in src or ["(no source recorded in the config)"]],
                               "  or set dataset.captions.path=/where/you/saved/it (COCO annotations JSON, a "
                               "JSON list of strings, or a text file with one caption per line)"]))


@functools.lru_cache(maxsize=4)
def _selection(path: str, mtime: int, count: int, seed: int) -> Captions:
    data = Path(path).read_bytes()
    chosen = select_captions(read_captions(Path(path)), count, seed)
    return Captions(tuple(c for _, c in chosen), tuple(k for k, _ in chosen), path,
                    hashlib.sha256(data).hexdigest(), seed)


def captions_of(cfg: Mapping) -> Captions:
    """The selection of a dataset's ``captions`` entry (``count`` default 30000, ``seed`` default 0),
    read once per file version."""
    p = resolve_captions(cfg)
    count, seed = cfg.get("count", 30000), cfg.get("seed", 0)
    for key, v in (("count", count), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise UserError(f"dataset.captions.{key} must be an integer, got {v!r}")
    return _selection(str(p.resolve()), p.stat().st_mtime_ns, count, seed)
