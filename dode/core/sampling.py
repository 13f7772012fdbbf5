"""Sampling: run a (possibly learned) solver from standard-normal noise to σ = 0."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from dode.core.denoisers import weights_digest
from dode.core.forms import Correction
from dode.core.path import Call, ModelPath
from dode.core.protocols import GridSpec, Protocol, resolve
from dode.core.schedules import schedule_of, time_grid
from dode.core.solvers import Solver, get_solver, logsnr_stages


def solver_grid(denoiser, solver: str | Solver, nfe: int, grid: GridSpec = None,
                **overrides) -> tuple[Solver, Tensor, list]:
    """The solver, its σ grid and its plan (evaluations per step) for exactly ``nfe`` evaluations.

    ``grid``: None (the ``paper`` protocol of :mod:`dode.core.protocols`), a preset or spacing name,
    a :class:`~dode.core.protocols.Protocol`, or a tensor of σ (for singlestep DPM-Solver either its
    stage grid, one point per evaluation, or one point per step, stages then at logSNR r);
    ``overrides``: spacing, endpoint, inner (None: the protocol's)."""
    spec = solver if isinstance(solver, Solver) else get_solver(solver)
    proto = resolve(grid, spec.name, denoiser, **overrides)
    if isinstance(proto, Protocol):
        plan = spec.plan(nfe, proto.endpoint == "zero")
        ends = dict(endpoint=proto.endpoint, lambda_min=proto.lambda_min)
        if spec.stage_grid and proto.inner == "logsnr":
            return spec, logsnr_stages(time_grid(denoiser, len(plan), proto.spacing, **ends), plan), plan
        return spec, time_grid(denoiser, spec.intervals(plan), proto.spacing, **ends), plan
    sig = torch.as_tensor(proto, dtype=torch.float64).flatten()
    plan = spec.plan(nfe, bool(sig[-1] == 0))
    sig = time_grid(denoiser, len(sig) - 1, sig)
    if len(sig) - 1 not in spec.explicit_intervals(plan):
        raise ValueError(f"{spec.name} with NFE {nfe} takes {spec.intervals(plan)} grid intervals, but the "
                         f"explicit grid has {len(sig) - 1}")
    if len(sig) - 1 != spec.intervals(plan):  # one point per step: stages at logSNR r
        sig = logsnr_stages(sig, plan)
    return spec, sig, plan


def prior_scale(denoiser, sigma: float | Tensor) -> float | Tensor:
    """x_start = scale · n for standard-normal n at the first σ: x_T ~ N(0, I) in the model's own
    parametrisation — VP (discrete-time models): x_VE = x_VP/α, scale √(1 + σ²); VE/EDM: σ (a 0-dim
    tensor σ of a differentiable grid gives a differentiable scale)."""
    if not schedule_of(denoiser).discrete:
        return sigma
    return torch.sqrt(1 + sigma**2) if isinstance(sigma, Tensor) else math.sqrt(1 + sigma**2)


def start_state(path: ModelPath, noise: Tensor, first: float | Tensor) -> Tensor:
    """The solver's state at its grid's first σ: ``noise``·:func:`prior_scale`; or, for a correction
    with an analytical first step from σ_a = ``correction.afs`` (AFS, Zhou et al. 2024, AMED), x_T =
    noise·prior_scale(σ_a) moved by one Euler step to σ = ``first`` with the prior's ε = x_T/√(1 + σ_a²)
    in place of a model evaluation: x = x_T + (first − σ_a)·x_T/√(1 + σ_a²) (no NFE)."""
    afs = getattr(path.correction, "afs", None)
    if afs is None:
        return noise * prior_scale(path.denoiser, first)
    x_t = noise * prior_scale(path.denoiser, afs)
    return x_t + (first - afs) * (x_t / math.sqrt(1 + afs**2))


def as_correction(lambdas: Correction | Sequence[float] | Tensor | None) -> Correction | None:
    if lambdas is None or isinstance(lambdas, Correction):
        return lambdas
    return Correction.from_lambdas(lambdas)


def checked(lambdas: Correction | Sequence[float] | Tensor | None, spec: Solver, nfe: int,
            sigmas: Tensor, denoiser=None) -> Correction | None:
    """The correction for a run of ``spec`` at ``nfe`` on ``sigmas``, refused (one line) where it does
    not fit: :meth:`Correction.check_run`."""
    correction = as_correction(lambdas)
    if correction is not None:
        fitted_on = (correction.provenance or {}).get("model")
        correction.check_run(spec.name, nfe, sigmas, weights_digest(denoiser) if fitted_on else None)
    return correction


def _wants_grad(noise: Tensor, sigmas: Tensor, correction: Correction | None) -> bool:
    """Autograd only when something asks for it (S4S optimises θ, S4S-Alt and LD3 the grid, through
    the sampler)."""
    params = [v for t in (correction.theta if correction else []) for v in t]
    return noise.requires_grad or sigmas.requires_grad or any(isinstance(v, Tensor) and v.requires_grad
                                                              for v in params)


def run_solver(path: ModelPath, spec: Solver, noise: Tensor, sigmas: Tensor, plan: list) -> Tensor:
    """The first state (:func:`start_state`: noise scaled by :func:`prior_scale`, or an AFS), then the
    solver; checks the NFE spent equals the plan's. Runs without autograd unless the noise, the grid or
    the correction's parameters require gradients."""
    first = sigmas[0] if sigmas.requires_grad else sigmas[0].item()
    with torch.set_grad_enabled(_wants_grad(noise, sigmas, path.correction)):
        x = spec.fn(path, start_state(path, noise, first), sigmas, plan)
    if path.nfe != sum(plan):
        raise RuntimeError(f"{spec.name} spent {path.nfe} NFE, its plan says {sum(plan)}")
    return x


def sample(denoiser, noise: Tensor, solver: str = "dpm3", nfe: int = 10,
           lambdas: Correction | Sequence[float] | Tensor | None = None, grid: GridSpec = None) -> Tensor:
    """Sample from standard-normal ``noise`` with ``solver`` in exactly ``nfe`` network evaluations.

    ``lambdas``: None (the base solver), one λ per evaluation (D-ODE, Eq. 10) as returned by
    :func:`dode.fit_lambdas`, or any :class:`~dode.core.forms.Correction`. ``grid``: None for the
    paper's protocol of this solver and model (the D-ODE authors' grids, docs/protocol.md), a preset
    (``paper``, ``dode``), a spacing (``time_uniform``, ``time_quadratic``, ``edm``, ``logsnr``,
    ``uniform_torch``), a :class:`~dode.core.protocols.Protocol` or a float64 tensor of σ (see
    :func:`solver_grid`). Returns the state at the grid's last σ (σ = 0, or σ_min for protocols
    ending there), i.e. samples.
    A correction that does not fit the run (θ for another number of evaluations; fitted for another
    solver, NFE or grid) is refused with :class:`~dode.errors.CorrectionMismatch`.
    """
    spec, sigmas, plan = solver_grid(denoiser, solver, nfe, grid)
    return run_solver(ModelPath(denoiser, checked(lambdas, spec, nfe, sigmas, denoiser)), spec, noise, sigmas, plan)


def trajectory(denoiser, noise: Tensor, solver: str = "ddim", nfe: int = 10,
               lambdas: Correction | Sequence[float] | Tensor | None = None,
               grid: GridSpec = None) -> tuple[Tensor, list[Call]]:
    """Run like :func:`sample` and also return every evaluation as a :class:`~dode.core.path.Call`
    ``(σ, x, D)`` (for figures)."""
    spec, sigmas, plan = solver_grid(denoiser, solver, nfe, grid)
    path = ModelPath(denoiser, checked(lambdas, spec, nfe, sigmas, denoiser), record=True)
    return run_solver(path, spec, noise, sigmas, plan), path.calls
