"""Sampling: run a (possibly learned) solver from standard-normal noise to σ = 0."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from dode.core.forms import Correction
from dode.core.path import Call, ModelPath
from dode.core.schedules import Grid, time_grid
from dode.core.solvers import Solver, get_solver


def solver_grid(denoiser, solver: str | Solver, nfe: int, grid: Grid = None) -> tuple[Solver, Tensor, list]:
    """The solver, its σ grid and its plan (evaluations per step) for exactly ``nfe`` evaluations."""
    spec = solver if isinstance(solver, Solver) else get_solver(solver)
    if grid is not None and not isinstance(grid, str):
        sig = torch.as_tensor(grid, dtype=torch.float64).flatten()
        plan = spec.plan(nfe, bool(sig[-1] == 0))
        if len(plan) != len(sig) - 1:
            raise ValueError(f"{spec.name} with NFE {nfe} takes {len(plan)} steps, but the explicit grid "
                             f"has {len(sig) - 1}")
        return spec, time_grid(denoiser, len(plan), sig), plan
    plan = spec.plan(nfe, True)
    return spec, time_grid(denoiser, len(plan), grid), plan


def as_correction(lambdas: Correction | Sequence[float] | Tensor | None) -> Correction | None:
    if lambdas is None or isinstance(lambdas, Correction):
        return lambdas
    return Correction.from_lambdas(lambdas)


def checked(lambdas: Correction | Sequence[float] | Tensor | None, spec: Solver, nfe: int,
            sigmas: Tensor) -> Correction | None:
    """The correction for a run of ``spec`` at ``nfe`` on ``sigmas``, refused (one line) where it does
    not fit: :meth:`Correction.check_run`."""
    correction = as_correction(lambdas)
    if correction is not None:
        correction.check_run(spec.name, nfe, sigmas)
    return correction


def _wants_grad(noise: Tensor, correction: Correction | None) -> bool:
    """Autograd only when something asks for it (S4S optimises θ through the sampler)."""
    params = [v for t in (correction.theta if correction else []) for v in t]
    return noise.requires_grad or any(isinstance(v, Tensor) and v.requires_grad for v in params)


def run_solver(path: ModelPath, spec: Solver, noise: Tensor, sigmas: Tensor, plan: list) -> Tensor:
    """x_T = σ_0 · noise, then the solver; checks the NFE spent equals the plan's. Runs without
    autograd unless the noise or the correction's parameters require gradients."""
    with torch.set_grad_enabled(_wants_grad(noise, path.correction)):
        x = spec.fn(path, noise * sigmas[0].item(), sigmas, plan)
    if path.nfe != sum(plan):
        raise RuntimeError(f"{spec.name} spent {path.nfe} NFE, its plan says {sum(plan)}")
    return x


def sample(denoiser, noise: Tensor, solver: str = "dpm3", nfe: int = 10,
           lambdas: Correction | Sequence[float] | Tensor | None = None, grid: Grid = None) -> Tensor:
    """Sample from standard-normal ``noise`` with ``solver`` in exactly ``nfe`` network evaluations.

    ``lambdas``: None (the base solver), one λ per evaluation (D-ODE, Eq. 10) as returned by
    :func:`dode.fit_lambdas`, or any :class:`~dode.core.forms.Correction`. ``grid``: a grid name
    (``time_uniform``, ``time_quadratic``, ``edm``, ``logsnr``), a float64 tensor of σ, or None for the
    model's default. Returns the state at the grid's last σ (σ = 0 for named grids), i.e. samples.
    A correction that does not fit the run (θ for another number of evaluations; fitted for another
    solver, NFE or grid) is refused with :class:`~dode.errors.CorrectionMismatch`.
    """
    spec, sigmas, plan = solver_grid(denoiser, solver, nfe, grid)
    return run_solver(ModelPath(denoiser, checked(lambdas, spec, nfe, sigmas)), spec, noise, sigmas, plan)


def trajectory(denoiser, noise: Tensor, solver: str = "ddim", nfe: int = 10,
               lambdas: Correction | Sequence[float] | Tensor | None = None,
               grid: Grid = None) -> tuple[Tensor, list[Call]]:
    """Run like :func:`sample` and also return every evaluation as a :class:`~dode.core.path.Call`
    ``(σ, x, D)`` (for figures)."""
    spec, sigmas, plan = solver_grid(denoiser, solver, nfe, grid)
    path = ModelPath(denoiser, checked(lambdas, spec, nfe, sigmas), record=True)
    return run_solver(path, spec, noise, sigmas, plan), path.calls
