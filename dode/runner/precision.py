"""Precision and speed options of generation: ``precision``, ``compile``, ``channels_last``.

* ``precision=fp32`` (default): true float32 network calls; on CUDA TF32 is switched *off* for
  matmuls and cuDNN convolutions, and cuDNN autotuning stays off, so images are reproducible bit
  for bit. ``tf32``: TF32 matmuls and convolutions on CUDA (no effect on CPU). ``bf16`` / ``fp16``:
  the network call (only it: not the solver, the preconditioning or the correction) runs under
  ``torch.autocast`` in that dtype, its output cast back to the state's dtype.
* ``compile=true``: the network's forward through ``torch.compile``.
* ``channels_last=true``: the network's weights and its 4-D inputs in channels-last layout.

Every option but the defaults may change images (other kernels, other rounding), so any of them
that is not its default enters the run's hash (:func:`precision_spec`); the fit of a correction
always runs in float32.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from dode.errors import UserError

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
DEFAULTS = {"precision": "fp32", "compile": False, "channels_last": False}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: Any, compile: Any, channels_last: Any) -> None:
    """Refuse an unknown ``precision`` (listing the valid ones) and non-boolean switches."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; valid precisions: {', '.join(PRECISIONS)}")
    for key, value in (("compile", compile), ("channels_last", channels_last)):
        if not isinstance(value, bool):
            raise UserError(f"{key} must be true or false, got {value!r}")


def precision_spec(options: dict) -> dict:
    """The options of ``options`` that differ from :data:`DEFAULTS` (empty for the default run)."""
    return {k: options[k] for k in DEFAULTS if options.get(k, DEFAULTS[k]) != DEFAULTS[k]}


def network_of(denoiser) -> nn.Module:
    """The network inside a denoiser (``net`` of EDM denoisers, ``model`` of VP ones) when it is a
    module, else the denoiser itself."""
    for name in ("net", "model"):
        inner = getattr(denoiser, name, None)
        if isinstance(inner, nn.Module):
            return inner
    if isinstance(denoiser, nn.Module):
        return denoiser
    raise UserError(f"precision options need a torch module as the model; got {type(denoiser).__name__}")


@contextlib.contextmanager
def _cuda_flags(precision: str, device: str) -> Iterator[None]:
    if not str(device).startswith("cuda"):
        yield
        return
    cuda, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (cuda.allow_tf32, cudnn.allow_tf32, cudnn.benchmark)
    tf32 = precision == "tf32"
    cuda.allow_tf32 = cudnn.allow_tf32 = tf32
    cudnn.benchmark = precision != "fp32"  # autotuning may pick other kernels from run to run
    try:
        yield
    finally:
        cuda.allow_tf32, cudnn.allow_tf32, cudnn.benchmark = before


@contextlib.contextmanager
def precision_mode(denoiser, device: str, precision: str = "fp32", compile: bool = False,
                   channels_last: bool = False) -> Iterator[None]:
    """Within the block the denoiser's network runs with these options (restored afterwards; the
    weights, and so :func:`dode.core.denoisers.weights_digest`, are unchanged)."""
    check_precision(precision, compile, channels_last)
    if not (precision != "fp32" or compile or channels_last):
        with _cuda_flags(precision, device):
            yield
        return
    net = network_of(denoiser)
    own = net.__dict__.get("forward")  # an instance attribute to restore, if there is one
    call = net.forward
    if compile:
        call = torch.compile(call)
    dtype = AUTOCAST.get(precision)
    device_type = torch.device(device).type

    def forward(x, *args, **kwargs):
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if dtype is None:
            return call(x, *args, **kwargs)
        with torch.autocast(device_type, dtype=dtype):
            out = call(x, *args, **kwargs)
        return out.to(x.dtype) if isinstance(out, torch.Tensor) else out

    if channels_last:
        net.to(memory_format=torch.channels_last)
    net.forward = forward
    try:
        with _cuda_flags(precision, device):
            yield
    finally:
        if own is None:
            del net.forward
        else:
            net.forward = own
        if channels_last:
            net.to(memory_format=torch.contiguous_format)
