"""Noise schedules and time grids.

Every solver in dode works in the VE convention of EDM (Karras et al. 2022): a state ``x`` at noise
level ``σ`` is ``x = x0 + σ·n``. A schedule maps its own time variable ``t`` to ``σ`` and back:

* :class:`VESchedule` — continuous EDM/VE models, ``t = σ``.
* :class:`DiscreteVPSchedule` — discrete-time VP models (DDPM, ADM). Time ``τ ∈ [0, T]``: ``τ = n + 1``
  at training step ``n``, ``ᾱ(0) = 1`` and ``log ᾱ`` linear between integers (as DPM-Solver's discrete
  schedule). The VE noise level is ``σ(τ) = sqrt((1 − ᾱ)/ᾱ)`` and the model is called at ``τ − 1``.

A time grid is a float64 tensor of ``N + 1`` decreasing σ (see :func:`time_grid`).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Union

import torch
from torch import Tensor

from dode.core.dmn import dmn_sigmas

if TYPE_CHECKING:  # pragma: no cover - typing only (denoisers imports this module)
    from dode.core.denoisers import Denoiser

GRID_KINDS = ("time_uniform", "time_quadratic", "edm", "logsnr", "dmn", "uniform_torch")
Grid = Union[str, Tensor, None]
_SNAP = 1e-9  # a time this close to an integer *is* that training step


class VESchedule:
    """Continuous VE/EDM schedule: the time variable is σ itself (EDM: σ(t) = t)."""

    discrete = False

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.t_max = self.sigma_max

    def sigma(self, t: Tensor) -> Tensor:
        return torch.as_tensor(t, dtype=torch.float64)

    def t(self, sigma: Tensor) -> Tensor:
        return torch.as_tensor(sigma, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"VESchedule(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class DiscreteVPSchedule:
    """Discrete VP schedule given by ``ᾱ_n = Π_{m≤n} (1 − β_m)``, n = 0 … T−1 (float64).

    Continuous time τ ∈ [0, T] with knots ``log ᾱ(0) = 0`` and ``log ᾱ(n+1) = log ᾱ_n``, linear in
    between, so ``σ(τ)`` is exact at every training step and continuous (for the inner stage points
    of singlestep solvers and refined teacher grids).
    """

    discrete = True

    def __init__(self, alphas_cumprod: Tensor, name: str = "custom"):
        a = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if a.ndim != 1 or len(a) < 2 or not bool(((a > 0) & (a <= 1)).all()):
            raise ValueError("alphas_cumprod must be a 1-D sequence of values in (0, 1]")
        if not bool((a[1:] <= a[:-1]).all()):
            raise ValueError("alphas_cumprod must be non-increasing")
        self.name = name
        self.alphas_cumprod = a
        self.T = len(a)
        self.t_max = float(self.T)
        # knots: τ = 0 … T ; log ᾱ(τ)
        self._log_abar = torch.cat([torch.zeros(1, dtype=torch.float64), a.log()])
        self._taus = torch.arange(self.T + 1, dtype=torch.float64)
        self.sigma_min = float(self.sigma(torch.tensor(1.0)))
        self.sigma_max = float(self.sigma(torch.tensor(self.t_max)))

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "DiscreteVPSchedule":
        """DDPM's linear β schedule (Ho et al. 2020): β_n = linspace(β_start, β_end, T)."""
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        return cls(torch.cumprod(1 - betas, 0), name=f"linear(T={T})")

    @classmethod
    def cosine(cls, T: int = 4000, s: float = 0.008, max_beta: float = 0.999) -> "DiscreteVPSchedule":
        """Improved-DDPM cosine schedule (Nichol & Dhariwal 2021): ᾱ(t) = f(t)/f(0),
        f(t) = cos²((t/T + s)/(1 + s) · π/2), β_n = min(1 − ᾱ(n+1)/ᾱ(n), max_beta)."""
        f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        betas = torch.tensor([min(1 - f(n + 1) / f(n), max_beta) for n in range(T)], dtype=torch.float64)
        return cls(torch.cumprod(1 - betas, 0), name=f"cosine(T={T})")

    def log_alpha_bar(self, tau: Tensor) -> Tensor:
        tau = torch.as_tensor(tau, dtype=torch.float64).clamp(0, self.t_max)
        la = self._log_abar.to(tau.device)  # tables live on the CPU; τ may be on a GPU
        i = torch.clamp(torch.floor(tau).long(), 0, self.T - 1)
        w = tau - i.to(torch.float64)
        return la[i] + w * (la[i + 1] - la[i])

    def sigma(self, tau: Tensor) -> Tensor:
        """σ(τ) = sqrt(1/ᾱ(τ) − 1), computed with expm1 for accuracy at small τ."""
        return torch.sqrt(torch.expm1(-self.log_alpha_bar(tau)))

    def t(self, sigma: Tensor) -> Tensor:
        """Inverse of :meth:`sigma`: τ(σ); a training-step σ maps back to its integer exactly."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        target = -torch.log1p(sigma**2)  # log ᾱ, decreasing in τ
        neg = -self._log_abar.to(sigma.device)  # increasing
        j = torch.searchsorted(neg, -target).clamp(1, self.T)
        lo, hi = neg[j - 1], neg[j]
        tau = (j - 1).to(torch.float64) + (-target - lo) / (hi - lo)
        tau = tau.clamp(0, self.t_max)
        near = torch.round(tau)
        if tau.requires_grad:  # the snapped value, with the interpolation's derivative (differentiable grids)
            near = near + (tau - tau.detach())
        return torch.where((tau - near).abs() < _SNAP, near, tau)

    def __repr__(self) -> str:
        return f"DiscreteVPSchedule({self.name})"


def schedule_of(denoiser: Denoiser) -> VESchedule | DiscreteVPSchedule:
    """The schedule a denoiser declares, or a VE schedule over its σ range."""
    sched = getattr(denoiser, "schedule", None)
    return sched if sched is not None else VESchedule(denoiser.sigma_min, denoiser.sigma_max)


def default_grid(denoiser: Denoiser) -> str:
    """Time-uniform for discrete-time models (the paper's choice), EDM ρ = 7 otherwise."""
    return getattr(denoiser, "default_grid", None) or ("time_uniform" if schedule_of(denoiser).discrete else "edm")


def time_grid(denoiser: Denoiser, steps: int, kind: Grid = None, rho: float = 7.0,
              endpoint: str = "zero", lambda_min: float | None = None) -> Tensor:
    """``steps + 1`` decreasing noise levels, float64, ending at σ = 0 (``endpoint="zero"``) or at the
    model's smallest time (``"sigma_min"``: discrete models τ = 1, i.e. training step 0; VE σ_min).

    * ``time_uniform``: t evenly spaced from t_max to the end (discrete models ending at 0: rounded to
      integer steps, N + 1 points over [0, T]; ending at σ_min: continuous, as the official
      DPM-Solver's ``time_uniform`` from t = 1 to 1/T and th_deis's ``linspace(T − 1, 0, N + 1)``).
    * ``time_quadratic``: √t evenly spaced (DDIM's "quad" and DPM-Solver's time_quadratic).
    * ``uniform_torch`` (discrete models; the D-ODE authors' DDIM): training steps
      ``int(linspace(0, T, N + 1, float32)[k])``, k = N − 1 … 0, then σ = 0 — the top step T is never
      visited, sampling starts at step ⌊T(N − 1)/N⌋.
    * ``edm``: σ_i = (σ_max^{1/ρ} + i/(M−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ for the M positive points,
      then σ = 0 (M = N) or nothing (``sigma_min``: M = N + 1).
    * ``logsnr``: log σ evenly spaced from σ_max to σ_min, the same way.
    * ``dmn``: the log σ of DMN's optimised steps for multistep DPM-Solver++ (Xue et al. 2024,
      :mod:`dode.core.dmn`; data-free, from σ_max and σ_min alone), the same way.
    * a tensor: used as given (must be decreasing; ``steps`` is then its length − 1).

    ``lambda_min`` (discrete models): drop the training steps whose log-SNR λ = −log σ is below it
    from the top, as the official DPM-Solver's ``NoiseScheduleVP`` does at −5.1 (the grid then starts
    at τ = the number of steps kept; none are dropped for DDPM's linear schedule, 16 of 4000 for the
    improved-DDPM cosine one).
    """
    if isinstance(kind, Tensor) or (kind is not None and not isinstance(kind, str)):
        sig = torch.as_tensor(kind, dtype=torch.float64).flatten()
        if len(sig) != steps + 1:
            raise ValueError(f"the explicit grid has {len(sig) - 1} steps but {steps} are needed")
        if not bool((sig[1:] < sig[:-1]).all()) or bool((sig < 0).any()):
            raise ValueError("an explicit grid must hold strictly decreasing, non-negative σ")
        return sig
    kind = kind or default_grid(denoiser)
    if kind not in GRID_KINDS:
        raise ValueError(f"unknown grid {kind!r}; valid grids: {', '.join(GRID_KINDS)} or a tensor of σ")
    if endpoint not in ("zero", "sigma_min"):
        raise ValueError(f"unknown endpoint {endpoint!r}; valid: zero, sigma_min")
    if steps < 1:
        raise ValueError("a grid needs at least one step")
    sched = schedule_of(denoiser)
    to_zero = endpoint == "zero"
    smin, smax = float(denoiser.sigma_min), float(denoiser.sigma_max)
    t_max = sched.t_max
    if lambda_min is not None and sched.discrete:
        t_max = float(int((sched.sigma(torch.arange(1, sched.T + 1, dtype=torch.float64)) <= math.exp(-lambda_min)).sum()))
        smax = float(sched.sigma(torch.tensor(t_max, dtype=torch.float64)))
    i = torch.arange(steps + 1, dtype=torch.float64)
    if kind == "uniform_torch":
        if not sched.discrete or not to_zero:
            raise ValueError("the uniform_torch grid is defined for discrete-time models ending at σ = 0")
        idx = [int(v) for v in torch.linspace(0, sched.T, steps + 1, dtype=torch.float32)[:steps]][::-1]
        if len(set(idx)) != steps:
            raise ValueError(f"{steps} steps do not fit in {sched.T} discrete timesteps")
        return torch.cat([sched.sigma(torch.tensor(idx, dtype=torch.float64) + 1), torch.zeros(1, dtype=torch.float64)])
    if kind in ("time_uniform", "time_quadratic"):
        t_end = 0.0 if to_zero else (1.0 if sched.discrete else sched.t(torch.tensor(smin)).item())
        frac = 1 - i / steps
        u = frac if kind == "time_uniform" else frac**2
        t = t_end + (t_max - t_end) * u
        if sched.discrete and to_zero:
            t = torch.round(t)
            if len(torch.unique(t)) != len(t):
                raise ValueError(f"{steps} steps do not fit in {sched.T} discrete timesteps")
        sig = sched.sigma(t)
        if to_zero:
            sig[-1] = 0.0
        return sig
    m = steps if to_zero else steps + 1
    frac = torch.arange(m, dtype=torch.float64) / max(m - 1, 1)
    if kind == "dmn":
        head = dmn_sigmas(smax, smin, m)
    elif kind == "edm":
        head = (smax ** (1 / rho) + frac * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    else:
        head = torch.exp(math.log(smax) + frac * (math.log(smin) - math.log(smax)))
    return torch.cat([head, torch.zeros(1, dtype=torch.float64)]) if to_zero else head


def refine(sigmas: Tensor, factor: int, denoiser: Denoiser, kind: Grid = None, rho: float = 7.0) -> Tensor:
    """Split every interval of ``sigmas`` into ``factor`` sub-intervals, evenly in the space where
    the grid ``kind`` is uniform (t for time grids, √t for quadratic, σ^{1/ρ} for EDM and explicit
    grids, log σ for logSNR and DMN, except an interval ending at σ = 0, which uses σ^{1/ρ}). Every input σ
    is kept bit for bit, so a teacher on the refined grid passes through every student time."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if factor == 1:
        return sigmas.clone()
    sched = schedule_of(denoiser)
    kind = kind if isinstance(kind, str) else ("edm" if kind is not None else default_grid(denoiser))
    kind = "time_uniform" if kind == "uniform_torch" else kind
    frac = torch.arange(1, factor, dtype=torch.float64) / factor
    out = []
    for a, b in zip(sigmas[:-1], sigmas[1:]):
        out.append(a.reshape(1))
        if kind == "time_uniform" or kind == "time_quadratic":
            p = 1.0 if kind == "time_uniform" else 0.5
            ua, ub = sched.t(a) ** p, sched.t(b) ** p
            inner = sched.sigma((ua + frac * (ub - ua)) ** (1 / p))
        elif kind in ("logsnr", "dmn") and b > 0:
            inner = torch.exp(a.log() + frac * (b.log() - a.log()))
        else:
            ua, ub = a ** (1 / rho), b ** (1 / rho)
            inner = (ua + frac * (ub - ua)) ** rho
        out.append(inner)
    out.append(sigmas[-1:])
    return torch.cat(out)
