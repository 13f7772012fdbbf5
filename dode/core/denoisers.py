"""Model wrappers: every network becomes one denoiser ``D(x, σ) → x̂0`` in the EDM/VE convention.

A *denoiser* is any callable ``D(x, sigma)`` with attributes ``sigma_min`` and ``sigma_max``; ``x``
is a VE state ``x0 + σ·n`` and ``sigma`` a float64 tensor of shape ``(batch,)``. Optional attributes:

* ``prediction`` — the network's native output, ``"eps"`` or ``"x0"`` (default ``"x0"``). D-ODE's λ
  acts on ε for noise-prediction models and on x0 for data-prediction models (paper, Sec. 3.2).
* ``schedule`` — a :mod:`dode.core.schedules` schedule (default: VE, t = σ).
* ``default_grid`` — the grid the paper uses for the model.
* ``model_kwargs`` — a dict passed to the network on every call (class labels, guidance, …).
* ``latent_shape`` and ``decode(z)`` — latent models: the shape of the solver's state, and the map
  from final states to images in [-1, 1] (the runner decodes before writing shards).
* ``set_prompts(prompts)`` — text-conditioned models: the condition of the next calls, one per sample.
* ``null_condition`` — the model kwargs of the empty condition, for classifier-free guidance
  (:mod:`dode.core.guidance`).
"""
from __future__ import annotations

import hashlib
import weakref
from typing import Callable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from dode.core.schedules import DiscreteVPSchedule, VESchedule

PREDICTIONS = ("eps", "x0", "v")


@runtime_checkable
class Denoiser(Protocol):
    """``D(x, σ) → x̂0`` in the EDM/VE convention (``x = x0 + σ·n``, ``sigma`` float64 of shape
    ``(batch,)``) with its noise range; the optional attributes are listed in the module docstring."""

    sigma_min: float
    sigma_max: float

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor: ...


def as_sigma(sigma, x: Tensor) -> Tensor:
    """σ as a float64 tensor of shape ``(batch,)`` on ``x``'s device."""
    s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    return s.expand(x.shape[0]) if s.ndim == 0 else s.reshape(x.shape[0])


def per_sample(v: Tensor, x: Tensor) -> Tensor:
    """A per-sample vector ``v`` of shape ``(batch,)`` shaped to broadcast against ``x`` ``(batch, …)``."""
    return v.reshape(-1, *([1] * (x.ndim - 1)))


class VPDenoiser(nn.Module):
    """A discrete-time VP network ``model(x_vp, t, **model_kwargs)`` as a VE denoiser.

    With ``a = sqrt(ᾱ) = 1/sqrt(1 + σ²)``: the network sees ``x_vp = a·x`` at time ``τ(σ) − 1`` and
    ``D = x − σ·ε`` (ε-prediction), ``D = x̂0`` (x0-prediction) or ``D = a²·x − σ·a·v`` (v-prediction,
    Salimans & Ho 2022, with v = a·ε − sqrt(1−a²)·x0).
    """

    def __init__(self, model: Callable, schedule: DiscreteVPSchedule, prediction: str = "eps",
                 model_kwargs: dict | None = None):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")
        self.model = model
        self.schedule = schedule
        # λ of D-ODE acts on ε for ε- and v-networks (both are noise-family models), on x0 otherwise
        self.prediction = "x0" if prediction == "x0" else "eps"
        self.output = prediction
        self.model_kwargs = dict(model_kwargs or {})
        self.sigma_min, self.sigma_max = schedule.sigma_min, schedule.sigma_max
        self.default_grid = "time_uniform"

    def forward(self, x: Tensor, sigma) -> Tensor:
        sigma = as_sigma(sigma, x)
        a = torch.rsqrt(1 + sigma**2)
        t = (self.schedule.t(sigma) - 1).to(x.dtype)
        out = self.model(x * per_sample(a, x).to(x.dtype), t, **self.model_kwargs)
        s = per_sample(sigma, x).to(x.dtype)
        if self.output == "eps":
            return x - s * out
        if self.output == "x0":
            return out
        ab = per_sample(a, x).to(x.dtype)
        return ab * ab * x - s * ab * out


class EDMDenoiser(nn.Module):
    """An EDM-preconditioned network ``net(x, sigma, class_labels)`` returning D(x; σ) directly."""

    prediction = "x0"

    def __init__(self, net: Callable, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 model_kwargs: dict | None = None):
        super().__init__()
        self.net = net
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.schedule = VESchedule(sigma_min, sigma_max)
        self.model_kwargs = dict(model_kwargs or {})
        self.default_grid = "edm"

    def forward(self, x: Tensor, sigma) -> Tensor:
        sigma = as_sigma(sigma, x)
        return self.net(x, sigma.to(torch.float32), **self.model_kwargs).to(x.dtype)


def native_prediction(denoiser: Denoiser) -> str:
    """``"eps"`` or ``"x0"``: where D-ODE's correction acts for this denoiser."""
    pred = getattr(denoiser, "prediction", "x0")
    if pred not in ("eps", "x0"):
        raise ValueError(f"denoiser.prediction must be 'eps' or 'x0', got {pred!r}")
    return pred


_DIGESTS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def weights_digest(denoiser) -> str | None:
    """sha256 of the model's weights (every state-dict entry: name, dtype, shape, bytes), or None
    for a model without any (not an ``nn.Module``, or one holding no tensors). Kept in run.json (has
    the checkpoint behind a name changed?) and in a fitted correction's provenance (``model``: was
    it fitted on this model?). Cached per module until one of its tensors changes in place."""
    state = denoiser.state_dict() if isinstance(denoiser, nn.Module) else {}
    if not state:
        return None
    versions = tuple(t._version for t in state.values())
    hit = _DIGESTS.get(denoiser)
    if hit is not None and hit[0] == versions:
        return hit[1]
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    _DIGESTS[denoiser] = (versions, h.hexdigest())
    return h.hexdigest()
