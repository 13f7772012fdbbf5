"""Checkpoint files: where a config's file is, whether it is the right one, and its state dict.

Where the file is looked for: ``path`` when set (``checkpoint.path=/data/model-790000.ckpt`` on the
command line), otherwise ``$DODE_CHECKPOINT_DIR/<file>``, otherwise ``./checkpoints/<file>``. dode
never downloads weights: a missing file is a :class:`CheckpointError` saying where to get it and
where to put it. State dicts are read with ``torch.load(..., weights_only=True)`` (no code runs).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from dode.errors import UserError

__all__ = ["CheckpointError", "DEFAULT_DIR", "DIR_ENV", "checkpoint_label", "error_summary", "resolve_file",
           "file_digest", "verify_checksum", "load_torch_file", "extract_state_dict", "load_state_into"]

DEFAULT_DIR = "checkpoints"
DIR_ENV = "DODE_CHECKPOINT_DIR"


class CheckpointError(UserError):
    """A checkpoint file is missing, corrupt, or not the model its config describes."""


def checkpoint_label(cfg: Mapping) -> str:
    """How messages name a checkpoint config: ``checkpoint '<name>'`` (``'?'`` without a name)."""
    return f"checkpoint {cfg.get('name', '?')!r}"


def error_summary(e: BaseException) -> str:
    """``"<ExceptionType>: <first line of its message>"``, for messages that wrap another error."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _as_list(v: Any) -> list[str]:
    if v is None:
        return []
    return [str(s) for s in v] if isinstance(v, (list, tuple)) else [str(v)]


def resolve_file(cfg: Mapping, key: str = "checkpoint") -> Path:
    """The local file (or folder) of ``cfg``: its ``path``, else ``$DODE_CHECKPOINT_DIR/<file>``, else
    ``./checkpoints/<file>``. Raises :class:`CheckpointError` saying where to get it when absent.
    ``key`` is the config key users set (``checkpoint`` or ``checkpoint.classifier``)."""
    path = cfg.get("path")
    fname = cfg.get("file")
    if path:
        p = Path(os.path.expanduser(str(path)))
    elif fname:
        p = Path(os.environ.get(DIR_ENV) or DEFAULT_DIR) / fname
    else:
        raise CheckpointError(f"{checkpoint_label(cfg)}: the config names no file; set {key}.path=/path/to/the/file")
    if p.exists():
        return p
    what = "folder" if cfg.get("is_dir") else "file"
    name = Path(fname or p.name).name
    if path:
        lines = [f"{checkpoint_label(cfg)}: {key}.path={path} does not exist ({p.absolute()})"]
    else:
        lines = [f"{checkpoint_label(cfg)}: {what} not found: {p.absolute()}"]
    lines += [f"  {cfg.get('description') or 'pretrained model'}",
              "  dode never downloads weights; get it yourself from:"]
    lines += [f"    {s}" for s in _as_list(cfg.get("source"))] or ["    (no source recorded in the config)"]
    if cfg.get("md5"):
        lines.append(f"  (md5 {cfg['md5']})")
    if fname:
        default = (Path(os.environ.get(DIR_ENV) or DEFAULT_DIR) / fname).absolute()
        lines.append(f"  then put it at {default}")
        lines.append(f"  (i.e. <dir>/{fname} with <dir> = ${DIR_ENV}, else ./{DEFAULT_DIR}),")
        lines.append(f"  or set {key}.path=/where/you/saved/{name}")
    else:
        lines.append(f"  then set {key}.path=/where/you/saved/{name}")
    raise CheckpointError("\n".join(lines))


def file_digest(path: Path, algo: str = "md5", chunk: int = 1 << 22) -> str:
    """The hex digest (``hashlib`` algorithm ``algo``) of the file's bytes, read in ``chunk``-byte blocks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: Path, cfg: Mapping, key: str = "checkpoint") -> None:
    """Check ``path`` against the config's ``md5`` / ``sha256`` (each skipped when null)."""
    if path.is_dir():
        return
    for algo in ("md5", "sha256"):
        want = cfg.get(algo)
        if not want:
            continue
        got = file_digest(path, algo)
        if got.lower() != str(want).lower():
            src = "; ".join(_as_list(cfg.get("source"))) or "its publisher"
            raise CheckpointError(
                f"{checkpoint_label(cfg)}: {algo} checksum mismatch for {path}\n"
                f"  expected {want}, the file has {got}.\n"
                f"  The file is incomplete, corrupt, or a different model. Download it again from {src}, "
                f"or (if you are sure it is right) skip the check with {key}.{algo}=null")


def load_torch_file(path: Path, cfg: Mapping) -> Any:
    """``torch.load(path)`` on the CPU with ``weights_only=True``; any failure is a :class:`CheckpointError`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means "not a readable checkpoint"
        raise CheckpointError(f"{checkpoint_label(cfg)}: cannot read {path} as a PyTorch state dict "
                              f"({error_summary(e)}). "
                              f"Is it the right file, and completely downloaded?") from e


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def extract_state_dict(obj: Any, cfg: Mapping, path: Path) -> dict[str, Tensor]:
    """The EMA state dict in a loaded checkpoint object: a plain state dict; a list/tuple whose last
    element is the EMA state dict (the DDIM repository's ``ckpt.pth``); or a dict with an ``ema``
    entry. A ``module.`` prefix (DataParallel) is removed."""
    if isinstance(obj, (list, tuple)):
        if not obj or not _is_state_dict(obj[-1]):
            raise CheckpointError(f"{checkpoint_label(cfg)}: {path} holds a list whose last element is not a "
                                  f"state dict (expected the DDIM repository's [model, optimizer, epoch, step, ema] "
                                  f"list)")
        obj = obj[-1]
    elif isinstance(obj, Mapping) and not _is_state_dict(obj):
        for k in ("ema", "ema_model", "state_dict", "model"):
            if _is_state_dict(obj.get(k)):
                obj = obj[k]
                break
        else:
            raise CheckpointError(f"{checkpoint_label(cfg)}: {path} is not a state dict (top-level keys: "
                                  f"{', '.join(map(str, list(obj)[:8]))})")
    elif not _is_state_dict(obj):
        raise CheckpointError(f"{checkpoint_label(cfg)}: {path} holds a {type(obj).__name__}, not a state dict")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_state_into(module: nn.Module, state: Mapping[str, Tensor], cfg: Mapping, path: Path, what: str) -> None:
    """``module.load_state_dict(state)`` with a specific message when the state does not fit (missing,
    unexpected or mis-shaped keys); tensors are cast to the module's dtypes."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:2])})")
        raise CheckpointError(f"{checkpoint_label(cfg)}: the state dict in {path} does not fit the {what} "
                              f"configured for it: {'; '.join(parts)}. Is it the right file for this config?")
    with torch.no_grad():
        module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
