"""IIA — "On Accelerating Diffusion-Based Sampling Processes via Improved Integration Approximation",
Zhang, Niwa & Kleijn, ICLR 2024 — on the one model-call path: a base solver of :mod:`dode.core.solvers`
plus per-evaluation θ_k that enter through :meth:`dode.core.path.ModelPath.correct` (see :mod:`dode.learn`).

For every student step, from the student's own state z_i at σ_i, the *original* solver run over M fine
sub-steps of [σ_i, σ_{i+1}] gives z_fine; the coefficients of the step minimise Σ_batch ‖z_fine − z_{i+1}(θ)‖², a tiny linear least-squares
problem solved in closed form (float64), step by step along the student's own (already corrected)
trajectory. Forms (``dode.core.forms.FORMS``):

* ``iia`` — IIA-DDIM / IIA-DPM-Solver / IIA-EDM: g = [Δx̂0, Δε] = [d_k − d_{k−1}, −σ_k(ε_k − ε_{k−1})]
  (a change δ of ε moves x0 by −σ·δ). On DDIM, ``x_{i+1} = x̂0 + σ_{i+1} ε̂`` picks up
  ``(1 − σ_{i+1}/σ_i)(θ_1 Δx̂0 − σ_i θ_2 Δε)``: weights on the differences of the last two data and
  noise predictions, as IIA-DDIM. On EDM Heun the Euler stage pairs with the previous step's
  gradient (past gradients) and the corrector with the step's own Euler stage, so θ of the corrector
  reweights Heun's two terms ``½ε_i + ½ε'`` (IIA-EDM).
* ``biia`` — BIIA-EDM: one weight, on Δε. On Heun's corrector it turns the trapezoid weights (½, ½)
  into (½ − θ/2, ½ + θ/2); on every other evaluation it adds θ (ε_k − ε_{k−1}) to the gradient.

There is no output before the first evaluation (both forms act in x0 space: no x_T pseudo-output),
so θ_0 = 0. Fine solver: the student's own method (``fine_solver`` overrides it, e.g. ``"ddim"``),
started afresh from the student's state over M sub-intervals refined by
:func:`dode.core.schedules.refine` in the grid's own spacing. What "the step's start" is comes from
:func:`dode.learn.dode.fit_correction`: the last model input at a σ above the evaluation's end — for
Heun's corrector that is the step's start state (so the Euler stage and the corrector of one step
share one fine target, computed once); for the inner stages of singlestep DPM-Solver it is the inner
stage's input (so each stage is fitted to the fine flow over its own sub-interval).
"""
from __future__ import annotations

import torch
from torch import Tensor

from dode.core.forms import Correction
from dode.core.path import ModelPath
from dode.core.sampling import run_solver, solver_grid
from dode.core.protocols import GridSpec, spacing_of
from dode.core.schedules import refine
from dode.core.solvers import Solver, get_solver
from dode.errors import InvalidChoice
from dode.learn.dode import fit_correction

__all__ = ["IIA_FORMS", "FineTargets", "fit_iia", "step_errors"]

IIA_FORMS = ("iia", "biia")


class FineTargets:
    """IIA's step targets: the base solver over ``substeps`` fine sub-steps of one student interval.

    Called by :func:`dode.learn.dode.fit_correction` as ``targets(k, x_start, σ_start, σ_next)``; runs
    ``solver`` (a name or :class:`~dode.core.solvers.Solver`) from ``x_start`` at σ_start to σ_next on the
    interval refined ``substeps`` times by :func:`dode.core.schedules.refine` in ``spacing``.
    The last answer is cached: Heun's two stages of one step ask for the same target. ``nfe`` counts
    the model evaluations spent (per sample).
    """

    def __init__(self, denoiser, solver: str | Solver, substeps: int = 10, spacing: str | None = None):
        if int(substeps) < 1:
            raise ValueError(f"substeps must be at least 1, got {substeps}")
        self.denoiser, self.substeps, self.spacing = denoiser, int(substeps), spacing
        self.spec = solver if isinstance(solver, Solver) else get_solver(solver)
        self.nfe = 0
        self._last: tuple | None = None

    def fine(self, x: Tensor, sigma_start: float, sigma_next: float) -> Tensor:
        fine = refine(torch.tensor([sigma_start, sigma_next], dtype=torch.float64), self.substeps,
                      self.denoiser, self.spacing)
        plan = self.spec.plan_for_steps(len(fine) - 1, bool(fine[-1] == 0))
        path = ModelPath(self.denoiser)
        with torch.no_grad():
            out = self.spec.fn(path, x, fine, plan)
        self.nfe += path.nfe
        return out

    def __call__(self, k: int, x: Tensor, sigma_start: float, sigma_next: float) -> Tensor:
        key = (float(sigma_start), float(sigma_next))
        if self._last is not None and self._last[0] == key and torch.equal(self._last[1], x):
            return self._last[2]
        out = self.fine(x, *key)
        self._last = (key, x, out)
        return out


def fit_iia(denoiser, noise: Tensor, solver: str = "ddim", nfe: int = 10, substeps: int = 10,
            form: str = "iia", grid: GridSpec = None, fine_solver: str | None = None, progress: bool = False,
            **provenance) -> Correction:
    """IIA (Zhang, Niwa & Kleijn, ICLR 2024): fit ``form`` (``iia`` or ``biia``) for ``solver`` at
    ``nfe`` on one batch of standard-normal ``noise``.

    Step by step along the student's own trajectory, θ_k = argmin Σ_batch ‖z_fine − z_{k+1}(θ)‖²
    in closed form (float64 least squares), where z_fine is ``fine_solver`` (default: the student's
    own method) over ``substeps`` (M) sub-steps from the student's state at the start of the step
    (see :class:`FineTargets`). Cost: one student run plus about M·(NFE of the method per step)
    evaluations per student step, on the batch. Returns a :class:`~dode.core.forms.Correction` for
    :func:`dode.sample`; extra keyword arguments go into its provenance.
    """
    if form not in IIA_FORMS:
        raise InvalidChoice(f"IIA fits the forms {', '.join(IIA_FORMS)}, not {form!r}")
    spec = get_solver(solver)
    fine = get_solver(fine_solver or spec.name)
    targets = FineTargets(denoiser, fine, substeps, spacing_of(grid, spec.name, denoiser))
    corr = fit_correction(denoiser, noise, spec.name, nfe, substeps, form, grid, targets=targets,
                          progress=progress, method="iia", substeps=int(substeps), **provenance)
    corr.provenance.update(teacher=fine.name, fine_solver=fine.name, target_nfe=targets.nfe)
    return corr


def step_errors(denoiser, noise: Tensor, solver: str = "ddim", nfe: int = 10,
                correction: Correction | None = None, substeps: int = 10, grid: GridSpec = None,
                fine_solver: str | None = None) -> Tensor:
    """IIA's per-step error: for every evaluation k of the (corrected) student, the RMS distance
    between the state after it and ``fine_solver`` over ``substeps`` sub-steps from the student's
    own state at the start of the step (the same start as in :func:`fit_iia`). float64, shape (nfe,)."""
    spec, sigmas, plan = solver_grid(denoiser, solver, nfe, grid)
    path = ModelPath(denoiser, correction, record=True)
    with torch.no_grad():
        final = run_solver(path, spec, noise, sigmas, plan)
    targets = FineTargets(denoiser, get_solver(fine_solver or spec.name), substeps,
                          spacing_of(grid, spec.name, denoiser))
    inputs = [call.x for call in path.calls]
    after = inputs[1:] + [final]
    sig_after = path.sigmas[1:] + [float(sigmas[-1])]
    errs = []
    for k in range(nfe):
        j = max(i for i in range(k + 1) if path.sigmas[i] > sig_after[k])
        want = targets(k, inputs[j], path.sigmas[j], sig_after[k])
        errs.append(float((after[k] - want).double().pow(2).mean().sqrt()))
    return torch.tensor(errs, dtype=torch.float64)
