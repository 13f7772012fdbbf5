"""Adapters: one call convention per network family, so that a loaded network becomes a dode denoiser.

* :class:`DiscreteNet` — discrete-time ε-networks (DDPM, ADM, diffusers) as ``(x, t, class_labels) → ε̂``,
  for :class:`dode.core.denoisers.VPDenoiser`;
* :class:`ClassifierGuidance` — ε with classifier guidance added;
* :class:`EDMNet` — EDM's ``EDMPrecond`` as ``(x, σ, class_labels) → D``, for
  :class:`dode.core.denoisers.EDMDenoiser`;
* :func:`schedule_from_config` — the discrete VP schedule of a config's ``schedule`` entry;
* :func:`finish_denoiser` — the attributes every loaded denoiser carries;
* :func:`apply_guidance` — classifier-free guidance from a config's ``guidance`` entry.

Class labels are integers of shape ``(batch,)`` (one-hot rows are accepted and reduced by argmax).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from dode.core.guidance import ClassifierFreeGuidance
from dode.core.schedules import DiscreteVPSchedule
from dode.models.files import CheckpointError, checkpoint_label

__all__ = ["DiscreteNet", "ClassifierGuidance", "EDMNet", "schedule_from_config", "finish_denoiser",
           "apply_guidance"]


def _check_labels(labels: Tensor | None, x: Tensor, num_classes: int, name: str) -> Tensor | None:
    if not num_classes:
        return None
    if labels is None:
        raise ValueError(f"{name} is class-conditional ({num_classes} classes): set "
                         f"denoiser.model_kwargs['class_labels'] (see dode.runner.seeds.draw_labels)")
    labels = torch.as_tensor(labels, device=x.device)
    if labels.ndim == 2:  # one-hot rows
        labels = labels.argmax(dim=1)
    labels = labels.long().reshape(-1)
    if labels.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: {labels.shape[0]} class labels for a batch of {x.shape[0]}")
    return labels


class DiscreteNet(nn.Module):
    """A discrete-time ε-network behind one signature ``(x, t, class_labels=None) → ε̂``.

    ``kind`` is the network's own call convention: ``"ddpm"`` ``net(x, t)``, ``"adm"``
    ``net(x, t, y=labels)``, ``"diffusers"`` ``net(x, t, class_labels=labels).sample``. The timestep
    is multiplied by ``time_scale`` (improved-diffusion's ``rescale_timesteps``: 1000/T), only the
    first ``eps_channels`` output channels are kept (learned-variance networks output [ε, v]), and
    the network runs in float32 whatever the caller's dtype.
    """

    def __init__(self, net: nn.Module, kind: str, eps_channels: int, time_scale: float = 1.0,
                 num_classes: int = 0, name: str = "model"):
        super().__init__()
        if kind not in ("ddpm", "adm", "diffusers"):
            raise ValueError(f"unknown network kind {kind!r}")
        self.net, self.kind, self.eps_channels = net, kind, int(eps_channels)
        self.time_scale, self.num_classes, self.name = float(time_scale), int(num_classes or 0), name

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        labels = _check_labels(class_labels, x, self.num_classes, self.name)
        t = torch.as_tensor(t, device=x.device).float().expand(x.shape[0]) * self.time_scale
        xin = x.float()
        if self.kind == "ddpm":
            out = self.net(xin, t)
        elif self.kind == "adm":
            out = self.net(xin, t, y=labels) if labels is not None else self.net(xin, t)
        else:
            out = self.net(xin, t, class_labels=labels).sample
        return out[:, : self.eps_channels].to(x.dtype)


class ClassifierGuidance(nn.Module):
    """Classifier guidance on ε (Dhariwal & Nichol 2021, guided-diffusion's ``cond_fn`` with DDIM):
    ``ε̂ = ε − s·sqrt(1 − ᾱ_t)·∇_x log p(y | x_t, t)``, the gradient of the classifier's log-softmax
    at the labels ``class_labels``. Works under ``torch.no_grad`` and ``torch.inference_mode``."""

    def __init__(self, eps_model: nn.Module, classifier: nn.Module, schedule: DiscreteVPSchedule, scale: float,
                 time_scale: float = 1.0):
        super().__init__()
        self.eps_model, self.classifier, self.schedule = eps_model, classifier, schedule
        self.scale, self.time_scale = float(scale), float(time_scale)

    @property
    def num_classes(self) -> int:
        return getattr(self.eps_model, "num_classes", 0)

    def log_prob_grad(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """∇_x log p(y | x, t) in float32."""
        with torch.inference_mode(False), torch.enable_grad():
            x_in = x.detach().float().clone().requires_grad_(True)
            tc = t.detach().float().clone() * self.time_scale
            logits = self.classifier(x_in, tc)
            logp = torch.log_softmax(logits.float(), dim=-1)
            picked = logp[torch.arange(len(labels), device=x.device), labels.clone()]
            (grad,) = torch.autograd.grad(picked.sum(), x_in)
        return grad

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        eps = self.eps_model(x, t, class_labels=class_labels)
        if self.scale == 0:
            return eps
        labels = _check_labels(class_labels, x, self.num_classes or 1, "classifier guidance")
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        abar = self.schedule.log_alpha_bar(t.detach().cpu().double() + 1).exp().to(x.device)
        coef = (self.scale * torch.sqrt(1 - abar)).to(torch.float32).reshape(-1, 1, 1, 1)
        return (eps.float() - coef * self.log_prob_grad(x, t, labels)).to(eps.dtype)


class EDMNet(nn.Module):
    """An EDM ``EDMPrecond`` behind ``(x, sigma, class_labels=None) → D``: integer labels become the
    one-hot vectors EDM expects; ``force_fp32`` is passed when set (None: the network's own choice)."""

    def __init__(self, net: nn.Module, num_classes: int = 0, force_fp32: bool | None = None, name: str = "model"):
        super().__init__()
        self.net, self.num_classes, self.force_fp32, self.name = net, int(num_classes or 0), force_fp32, name

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        labels = _check_labels(class_labels, x, self.num_classes, self.name)
        onehot = None
        if labels is not None:
            onehot = torch.nn.functional.one_hot(labels, self.num_classes).to(torch.float32)
        kwargs = {} if self.force_fp32 is None else {"force_fp32": bool(self.force_fp32)}
        return self.net(x.float(), sigma.float(), onehot, **kwargs).to(x.dtype)


def schedule_from_config(s: Mapping | None, cfg: Mapping | None = None) -> DiscreteVPSchedule:
    """A :class:`DiscreteVPSchedule` from ``{kind: linear|cosine|scaled_linear, T, beta_start, beta_end}``
    (default: linear, T = 1000, β 1e-4 → 0.02); ``cfg`` names the checkpoint in the error message."""
    s = dict(s or {"kind": "linear", "T": 1000})
    kind, T = s.get("kind", "linear"), int(s.get("T", 1000))
    if kind == "linear":
        return DiscreteVPSchedule.linear(T, float(s.get("beta_start", 1e-4)), float(s.get("beta_end", 0.02)))
    if kind == "cosine":
        return DiscreteVPSchedule.cosine(T)
    if kind == "scaled_linear":  # β = linspace(√β0, √β1, T)²  (latent diffusion / diffusers)
        b = torch.linspace(float(s.get("beta_start", 1e-4)) ** 0.5, float(s.get("beta_end", 0.02)) ** 0.5, T,
                           dtype=torch.float64) ** 2
        return DiscreteVPSchedule(torch.cumprod(1 - b, 0), name=f"scaled_linear(T={T})")
    raise CheckpointError(f"{checkpoint_label(cfg or {})}: unknown schedule kind {kind!r}; "
                          f"valid: linear, cosine, scaled_linear")


def finish_denoiser(den: nn.Module, cfg: Mapping, path: Path, num_classes: int, resolution: int, channels: int,
                    device: torch.device | str | None = None) -> nn.Module:
    """Give a loaded denoiser the attributes the runner reads (``num_classes``, ``resolution``,
    ``channels``, ``name``, ``path``, ``class_label``, and ``default_grid`` when the config sets one),
    switch it to eval mode without gradients, and move it to ``device`` (when given)."""
    den.num_classes, den.resolution, den.channels = int(num_classes or 0), int(resolution), int(channels)
    den.name, den.path = cfg.get("name"), str(path)
    den.class_label = cfg.get("class_label")
    if cfg.get("default_grid"):
        den.default_grid = cfg["default_grid"]
    den.eval().requires_grad_(False)
    return den.to(device) if device is not None else den


def apply_guidance(den: nn.Module, cfg: Mapping) -> nn.Module:
    """``den`` under classifier-free guidance when the config sets ``guidance.scale`` (else ``den``):
    :class:`dode.core.guidance.ClassifierFreeGuidance` with the empty condition ∅ of
    ``guidance.null_class`` (the label a class-conditional model was trained with for "no class") or
    the model's own ``null_condition`` (text models: the embedding of the empty prompt)."""
    g = dict(cfg.get("guidance") or {})
    unknown = sorted(set(g) - {"scale", "null_class"})
    if unknown:
        raise CheckpointError(f"{checkpoint_label(cfg)}: unknown guidance key(s) {', '.join(unknown)}; "
                              f"valid: scale, null_class")
    if g.get("scale") is None:
        return den
    scale = g["scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise CheckpointError(f"{checkpoint_label(cfg)}: guidance.scale must be a number, got {scale!r}")
    if g.get("null_class") is not None:
        null = {"class_labels": torch.tensor([int(g["null_class"])])}
    else:
        null = getattr(den, "null_condition", None)
    if not null:
        raise CheckpointError(f"{checkpoint_label(cfg)}: guidance.scale={scale} needs the empty condition ∅: set "
                              f"checkpoint.guidance.null_class (the class label the model was trained with for "
                              f"'no class'), or use a text-conditioned model")
    return ClassifierFreeGuidance(den, float(scale), null)
