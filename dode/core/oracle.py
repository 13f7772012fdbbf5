"""Analytic oracle models: diffusion models whose exact denoiser is known in closed form.

For data ``x0 ~ Σ_k w_k N(μ_k, s_k² I)`` and ``x = x0 + σ n``, the exact denoiser is the posterior
mean ``D(x, σ) = Σ_k r_k(x, σ) (μ_k + s_k²/(s_k² + σ²) (x − μ_k))`` with responsibilities
``r_k ∝ w_k N(x; μ_k, (s_k² + σ²) I)``. For one component the probability-flow ODE has the exact
solution ``x(σ) = μ + (x(σ_a) − μ) · sqrt(s² + σ²)/sqrt(s² + σ_a²)``. :class:`LatentMixture` is
such a mixture on latents with a fixed linear decoder (the latent models' oracle).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from dode.core.denoisers import VPDenoiser, per_sample, as_sigma
from dode.core.schedules import DiscreteVPSchedule, VESchedule


class GaussianMixture(nn.Module):
    """Exact denoiser of an isotropic Gaussian mixture; usable anywhere a checkpoint is.

    ``means``: (K, *shape); ``stds``: (K,); ``weights``: (K,). As a denoiser it is an x0-prediction
    model on a VE schedule (σ ∈ [sigma_min, sigma_max]); :meth:`eps_model` gives the matching
    noise-prediction network for a discrete VP schedule.
    """

    prediction = "x0"

    def __init__(self, means: Tensor, stds: Sequence[float] | Tensor, weights: Sequence[float] | Tensor | None = None,
                 sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        k = means.shape[0]
        self.register_buffer("means", means)
        self.register_buffer("stds", torch.as_tensor(stds, dtype=torch.float64).reshape(k))
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.register_buffer("log_weights", (w / w.sum()).log())
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.schedule = VESchedule(sigma_min, sigma_max)
        self.default_grid = "edm"

    @property
    def shape(self) -> torch.Size:
        return self.means.shape[1:]

    def forward(self, x: Tensor, sigma) -> Tensor:
        sigma = as_sigma(sigma, x)
        xf = x.reshape(x.shape[0], -1).double()
        mu = self.means.reshape(len(self.means), -1)
        var = self.stds**2 + sigma[:, None] ** 2  # (B, K)
        dim = xf.shape[1]
        sq = ((xf[:, None, :] - mu[None]) ** 2).sum(-1)  # (B, K)
        logp = self.log_weights - 0.5 * sq / var - 0.5 * dim * var.log()
        r = torch.softmax(logp, dim=1)
        shrink = self.stds**2 / var  # (B, K)
        post = mu[None] + shrink[..., None] * (xf[:, None, :] - mu[None])
        return (r[..., None] * post).sum(1).reshape(x.shape).to(x.dtype)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        noise = torch.randn(n, *self.shape, dtype=torch.float64, generator=generator)
        return self.means[k] + per_sample(self.stds[k], noise) * noise

    def exact_solution(self, x: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
        """Exact ODE flow from σ_from to σ_to (single-component mixtures only)."""
        if len(self.means) != 1:
            raise ValueError("the closed-form ODE solution exists for a single Gaussian only")
        s2 = float(self.stds[0]) ** 2
        mu = self.means[0].to(x.dtype)
        return mu + (x - mu) * math.sqrt((s2 + sigma_to**2) / (s2 + sigma_from**2))

    def eps_model(self, schedule: DiscreteVPSchedule):
        """The exact noise-prediction network ``ε(x_vp, t)`` of this data on a VP ``schedule``."""

        def eps(x_vp: Tensor, t: Tensor) -> Tensor:
            tau = torch.as_tensor(t, dtype=torch.float64).reshape(-1) + 1
            sigma = schedule.sigma(tau).expand(x_vp.shape[0])
            x = x_vp / per_sample(torch.rsqrt(1 + sigma**2), x_vp).to(x_vp.dtype)
            return ((x - self(x, sigma)) / per_sample(sigma, x).to(x.dtype)).to(x_vp.dtype)

        return eps

    def as_vp(self, schedule: DiscreteVPSchedule | None = None) -> VPDenoiser:
        """This mixture as a noise-prediction model on a discrete VP schedule (default: linear T=1000)."""
        schedule = schedule or DiscreteVPSchedule.linear()
        return VPDenoiser(self.eps_model(schedule), schedule)


class LatentMixture(nn.Module):
    """An analytic latent model: latents ``z0 ~`` a :class:`GaussianMixture` (``mixture``) and images
    ``decode(z0) = W·vec(z0) + b`` of shape ``image_shape`` (W: (prod(image_shape), prod(latent shape))).

    Its denoiser is the mixture's exact one on latents (VE/x0, or the matching ε-model on a discrete VP
    ``schedule`` when given), so the exact ODE flow of a one-component mixture, decoded, is the exact
    image: solver orders and λ fits can be checked in latent space as in pixel space. For an orthogonal
    square W, the images are themselves the mixture with means ``W·μ_k`` and the same isotropic stds.
    """

    def __init__(self, mixture: GaussianMixture, weight: Tensor, image_shape: Sequence[int],
                 bias: Tensor | None = None, schedule: DiscreteVPSchedule | None = None):
        super().__init__()
        weight = torch.as_tensor(weight, dtype=torch.float64)
        n_lat, n_img = math.prod(mixture.shape), math.prod(image_shape)
        if weight.shape != (n_img, n_lat):
            raise ValueError(f"the decoder must be ({n_img}, {n_lat}) for latents {tuple(mixture.shape)} and images "
                             f"{tuple(image_shape)}, got {tuple(weight.shape)}")
        self.mixture = mixture
        self.model = mixture if schedule is None else mixture.as_vp(schedule)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", torch.zeros(n_img, dtype=torch.float64) if bias is None
                             else torch.as_tensor(bias, dtype=torch.float64).reshape(n_img))
        self.latent_shape = tuple(mixture.shape)
        self.image_shape = tuple(int(v) for v in image_shape)
        self.channels, self.resolution = self.image_shape[0], self.image_shape[-1]
        for key in ("sigma_min", "sigma_max", "schedule", "prediction", "default_grid"):
            setattr(self, key, getattr(self.model, key))

    def forward(self, z: Tensor, sigma) -> Tensor:
        return self.model(z, sigma)

    def decode(self, z: Tensor) -> Tensor:
        """Images ``W·vec(z) + b`` of latents ``z`` (n, *latent_shape), in ``z``'s dtype."""
        out = z.reshape(z.shape[0], -1).double() @ self.weight.T + self.bias
        return out.reshape(z.shape[0], *self.image_shape).to(z.dtype)
