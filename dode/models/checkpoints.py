"""Load the paper's pretrained diffusion models from local files as dode denoisers: the one entry point.

dode never downloads weights. Each model has a config ``conf/checkpoint/<name>.yaml`` stating the
file, its checksum (where known), the architecture, schedule and prediction type, and where to get
it. :func:`load_checkpoint` reads that mapping and returns a denoiser ``D(x, σ) → x̂0`` (see
:mod:`dode.core.denoisers`) with the extra attributes ``num_classes`` (0: unconditional), ``resolution``,
``channels``, ``name``, ``class_label`` (a fixed class, or None to draw one per seed) and ``path``.
A ``guidance: {scale: w}`` entry wraps it in classifier-free guidance (:func:`dode.models.adapters.apply_guidance`).
Where the file is looked for: :func:`dode.models.files.resolve_file`.

Loaders (the ``loader`` key) live in :data:`LOADERS`, a plain dict name → ``fn(cfg) -> denoiser``
(the built-in ones: :mod:`dode.models.loaders`); another module adds its own with
:func:`register_loader` (or a ``"package.module:function"`` string, imported on first use).

Class-conditional models take integer labels in ``denoiser.model_kwargs["class_labels"]`` (a
LongTensor of shape ``(batch,)``), whatever the network wants internally (EDM one-hot vectors, ADM
``y``, diffusers ``class_labels``); :func:`dode.runner.seeds.draw_labels` draws them from the samples' seeds.

The EDM loader reads EDM's ``.pkl`` files without running any of their code (an allow-list unpickler
that rebuilds dode's own EDM networks, :mod:`dode.models.arch.edm_pickle`).

.. warning:: ``checkpoint.trust_pickle=true`` unpickles EDM files as EDM does, which runs the code they
   carry (:mod:`dode.models.arch.edm_compat`). Set it only for files from a source you trust.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Mapping

import torch
from torch import nn

from dode.models.adapters import apply_guidance
from dode.models.files import CheckpointError, checkpoint_label, resolve_file
from dode.models.loaders import load_adm, load_ddpm, load_diffusers, load_edm

__all__ = ["CheckpointError", "LOADERS", "register_loader", "load_checkpoint", "resolve_file"]

LOADERS: dict[str, Callable[..., nn.Module] | str] = {
    "ddpm": load_ddpm,
    "adm": load_adm,
    "diffusers": load_diffusers,
    "edm": load_edm,
    # other modules' loaders, imported on first use ("module:function")
    "digits": "dode.models.digits:load_digits_checkpoint",
    "diffusers_sd": "dode.models.latent:load_diffusers_sd",
    "ldm_compvis": "dode.models.ldm:load_ldm_compvis",
}


def register_loader(name: str) -> Callable:
    """Decorator: ``@register_loader("mine") def load(cfg) -> denoiser`` (or assign ``LOADERS[name]``)."""
    def deco(fn: Callable) -> Callable:
        LOADERS[name] = fn
        return fn
    return deco


def _plain(cfg: Any) -> dict:
    """The checkpoint config as a plain dict (OmegaConf DictConfig or any mapping)."""
    if cfg is None:
        raise CheckpointError("no checkpoint configured; choose one with checkpoint=NAME (see conf/checkpoint/)")
    try:
        from omegaconf import DictConfig, OmegaConf
        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if not isinstance(cfg, Mapping):
        raise TypeError(f"a checkpoint config must be a mapping, got {type(cfg).__name__}")
    return dict(cfg)


def _resolve_loader(name: str) -> Callable:
    """The loader function of ``name`` (a key of :data:`LOADERS` or ``"module:function"``); a string
    entry is imported and replaced by the function it names."""
    fn = LOADERS.get(name, name if isinstance(name, str) and ":" in name else None)
    if fn is None:
        raise CheckpointError(f"unknown checkpoint loader {name!r}; known: {', '.join(sorted(LOADERS))} "
                              f"(or 'package.module:function')")
    if isinstance(fn, str):
        mod, _, attr = fn.partition(":")
        try:
            fn = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise CheckpointError(f"checkpoint loader {name!r} ({fn}) cannot be imported: {e}") from e
        if name in LOADERS:
            LOADERS[name] = fn
    return fn


def _takes_device(fn: Callable) -> bool:
    try:
        return "device" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def load_checkpoint(cfg: Any, device: torch.device | str | None = None) -> nn.Module:
    """The denoiser described by a ``conf/checkpoint/<name>.yaml`` mapping (DictConfig or dict), on
    ``device`` when given (passed to loaders that take it, else the result is moved there)."""
    c = _plain(cfg)
    loader = c.get("loader")
    if not loader:
        raise CheckpointError(f"{checkpoint_label(c)}: the config has no 'loader' key")
    fn = _resolve_loader(loader)
    if _takes_device(fn):
        den = fn(c, device=device)
    else:
        den = fn(c)
        den = den.to(device) if device is not None and hasattr(den, "to") else den
    return apply_guidance(den, c)
