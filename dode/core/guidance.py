"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper.

``D_w(x, σ, c) = D(x, σ, ∅) + w·(D(x, σ, c) − D(x, σ, ∅))``: w = 1 is the conditional model, w = 0
the unconditional one, w > 1 guidance. In x0 form this is the same combination as on ε (or v): every
network output is affine in the model's output at fixed (x, σ), so guiding D, ε or v agree.

The conditional and unconditional outputs come from ONE call of the wrapped denoiser on a doubled
batch ``[x; x]`` with model kwargs ``[∅; c]``; that call is ONE function evaluation of the guided
model: a solver's NFE counts guided evaluations (the convention of DPM-Solver++, UniPC and LD3; two
network passes of the batch each). Solvers and learned corrections see an ordinary denoiser.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from dode.core.denoisers import as_sigma

__all__ = ["ClassifierFreeGuidance"]


def _doubled(uncond: Any, cond: Any, n: int, key: str, device: torch.device) -> Any:
    """``[∅; c]`` of one model kwarg for a batch of ``n``, on ``device``: tensors stacked along dim 0
    (a ∅ or c of batch 1 is expanded to ``n``); equal non-tensors passed as they are."""
    if not isinstance(cond, Tensor) and not isinstance(uncond, Tensor):
        if uncond != cond:
            raise ValueError(f"classifier-free guidance: model kwarg {key!r} differs between ∅ and c "
                             f"but is not a tensor ({uncond!r} vs {cond!r})")
        return cond
    parts = []
    for v in (uncond, cond):
        v = torch.as_tensor(v, device=device)
        if v.ndim == 0 or v.shape[0] not in (1, n):
            raise ValueError(f"classifier-free guidance: model kwarg {key!r} has shape {tuple(v.shape)}, "
                             f"expected a batch of {n} or 1 along dim 0")
        parts.append(v.expand(n, *v.shape[1:]))
    return torch.cat(parts, dim=0)


class ClassifierFreeGuidance(nn.Module):
    """The guided denoiser ``D_w`` of a conditional denoiser ``inner`` (one whose network takes its
    condition from ``inner.model_kwargs``) at guidance scale ``scale``.

    ``null``: the model kwargs of the empty condition ∅ (e.g. ``{"class_labels": tensor([null])}``,
    ``{"encoder_hidden_states": embedding of ""}``), each of batch 1 or the sampling batch.
    ``model_kwargs`` IS the inner denoiser's dict (the condition c, set per batch as for the unguided
    model); every attribute the wrapper lacks (schedule, prediction, σ range, ``decode``, …) is the
    inner denoiser's.
    """

    def __init__(self, inner: nn.Module, scale: float, null: Mapping[str, Any]):
        super().__init__()
        if not hasattr(inner, "model_kwargs"):
            raise TypeError(f"classifier-free guidance needs a conditional denoiser with model_kwargs; "
                            f"got {type(inner).__name__}")
        self.inner = inner
        self.scale = float(scale)
        self.null = dict(null)
        if not self.null:
            raise ValueError("classifier-free guidance needs the model kwargs of the empty condition (null)")

    @property
    def model_kwargs(self) -> dict:
        return self.inner.model_kwargs

    @model_kwargs.setter
    def model_kwargs(self, value: dict) -> None:
        self.inner.model_kwargs = value

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "inner":
                raise
            return getattr(self._modules["inner"], name)

    def forward(self, x: Tensor, sigma) -> Tensor:
        n = x.shape[0]
        sigma = as_sigma(sigma, x)
        cond = self.inner.model_kwargs
        missing = [k for k in cond if k not in self.null] + [k for k in self.null if k not in cond]
        if missing:
            raise ValueError(f"classifier-free guidance: the condition and ∅ must set the same model kwargs; "
                             f"{', '.join(sorted(set(missing)))} set on one side only")
        both = {k: _doubled(self.null[k], cond[k], n, k, x.device) for k in cond}
        self.inner.model_kwargs = both
        try:
            out = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]))
        finally:
            self.inner.model_kwargs = cond
        d_null, d_cond = out[:n], out[n:]
        return d_null + self.scale * (d_cond - d_null)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, null={sorted(self.null)}"
