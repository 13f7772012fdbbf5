"""A point's model: loading its checkpoint as a denoiser (every failure one message naming the file
and what it should be), the shape of the solver's state, and :func:`load_model` for the report's
studies. The points themselves and their checks are :mod:`dode.runner.points`.
"""
from __future__ import annotations

from typing import Any

import torch

from dode.errors import UserError
from dode.runner.points import META_KEYS, Point, points_from_overrides


def load_denoiser(point: Point, device: str) -> Any:
    """The checkpoint as a denoiser: ``dode.models.checkpoints.load_checkpoint(cfg)``, or a factory given by
    ``_target_`` in the checkpoint config (analytic and test models)."""
    ck = point.checkpoint
    if "_target_" in ck:
        from hydra.utils import instantiate

        den = instantiate({k: v for k, v in ck.items() if k not in META_KEYS})
    else:
        den = _load_file(point, device)
    if isinstance(den, torch.nn.Module):
        den = den.to(device).eval().requires_grad_(False)
    return den


# what the file of each loader should be, for messages about a file that is not one
FILE_KINDS = {
    "ddpm": "a PyTorch state dict of a DDPM (the DDIM repository's model-<step>.ckpt)",
    "adm": "a PyTorch state dict of guided-diffusion (ADM, <name>.pt)",
    "diffusers": "a diffusers model folder (config.json and the weights) or its weights file",
    "edm": "an EDM network pickle (network-snapshot-*.pkl / edm-*.pkl)",
    "digits": "a PyTorch state dict made by scripts/train_digits.py",
    "diffusers_sd": "a diffusers Stable Diffusion folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)",
    "ldm_compvis": "a CompVis latent-diffusion checkpoint (model.ckpt) with its config.yaml",
}


class CheckpointFileError(UserError):
    """A checkpoint file that is not what its loader reads (a text or HTML page, random bytes, …)."""


def _load_file(point: Point, device: str) -> Any:
    """``load_checkpoint`` of the point's checkpoint config; anything it raises becomes one message
    naming the file and what it should be (never advice to unpickle it with code execution)."""
    from omegaconf import OmegaConf

    from dode.models.checkpoints import load_checkpoint, resolve_file

    ck = point.checkpoint
    try:
        return load_checkpoint(OmegaConf.create(ck), device=device)
    except Exception as e:  # noqa: BLE001 - the boundary of the loaders: every failure is the file's
        if isinstance(e, UserError) and "weights_only" not in str(e):
            raise  # the loader's own message already names the file
        try:
            where = resolve_file(ck) if (ck.get("file") or ck.get("path")) else None
        except UserError:
            where = None
        loader = str(ck.get("loader"))
        should = FILE_KINDS.get(loader, f"a file of the {loader!r} loader")
        raise CheckpointFileError(f"checkpoint {point.choices.checkpoint}: cannot load {where or 'its file'}: it "
                                  f"should be {should}, but {_what_file(where, e)}. Is it the right file, completely "
                                  "downloaded?") from None


def _what_file(path: Any, e: Exception) -> str:
    """What a file that failed to load looks like: an HTML page, text, or else the loader's error."""
    try:
        head = path.read_bytes()[:512] if path is not None and path.is_file() else b""
    except OSError:
        head = b""
    if head.lstrip()[:1] == b"<":
        return "it is an HTML/XML page (a failed download or a login page?)"
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "it is a text file"
    first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
    if "weights_only" in str(e) or not first:
        return "it is not a readable checkpoint (unrecognised bytes)"
    return f"reading it failed ({type(e).__name__}: {first})"


def image_shape(point: Point, denoiser) -> tuple[int, int, int]:
    """(C, H, W) of the solver's state: a latent model's ``latent_shape``, else the images' from the
    checkpoint config, else the dataset config."""
    latent = getattr(denoiser, "latent_shape", None)
    if latent is not None:
        return tuple(int(v) for v in latent)
    for node in (point.checkpoint, point.dataset):
        c, r = node.get("channels"), node.get("resolution")
        if c and r:
            return int(c), int(r), int(r)
    shape = getattr(denoiser, "shape", None)
    if shape is not None and len(shape) == 3:
        return tuple(int(v) for v in shape)
    raise UserError("the image shape is unknown: give the checkpoint (or dataset) config `channels` and `resolution`")


def load_model(dataset: str, checkpoint: str, device: str = "cpu") -> tuple[Any, Point]:
    """(denoiser, point) of ``checkpoint``: the first point of ``dode-run dataset=<dataset>
    checkpoint=<checkpoint>`` (composed from the repository's conf/) and its model."""
    point = points_from_overrides([f"dataset={dataset}", f"checkpoint={checkpoint}"], with_files=False)[0]
    return load_denoiser(point, device), point
