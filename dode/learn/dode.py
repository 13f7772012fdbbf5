"""D-ODE distillation (Kim, Tang & Yu, CVPR 2024): greedy closed-form fit of the per-evaluation
parameters of a :class:`~dode.core.forms.Correction` against a K× finer teacher (paper Eq. 13–14).

The teacher — DDIM for DDIM, DPM-Solver and DPM-Solver++ students, the student's own method for
iPNDM, DEIS, Euler and Heun (methods.md) — runs on the student's evaluation times, each interval
refined K times in the grid's own spacing, so every student time is a teacher time. Then the student
runs evaluation by evaluation: the state after evaluation k (the input of evaluation k+1, or the
final sample) is affine in θ_k, ``x(θ_k) = a + Σ_m θ_{k,m} b_m``, so

    θ_k = argmin ‖x_teacher − a − B θ‖²   (one column per feature; λ_k = ⟨x_teacher − a, b⟩/⟨b, b⟩)

over the whole batch in float64, and the student continues with θ_k before θ_{k+1} is fitted. The
columns come from replaying the solver with unit parameters: evaluations already made are served
from a cache (:class:`~dode.learn.record.ReplayPath`), so the fit costs one teacher run plus one
student run of network evaluations.
"""
from __future__ import annotations

import time
import warnings
from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dode.version import __version__
from dode.core.denoisers import native_prediction, weights_digest
from dode.core.forms import Correction, get_form
from dode.core.path import ModelPath
from dode.core.sampling import run_solver, solver_grid
from dode.core.protocols import GridSpec, spacing_of
from dode.core.schedules import refine, schedule_of
from dode.core.solvers import get_solver
from dode.learn.grids import grid_record
from dode.learn.record import ReplayPath, Stop, student_points

__all__ = ["fit_correction", "fit_lambdas", "teacher_states"]


StepTarget = Callable[[int, Tensor, float, float], Tensor]
# step_fit(k, columns b_m, residual x_teacher − a) -> θ_k over the columns (PAS's adaptive search)
StepFit = Callable[[int, list, Tensor], list]


def teacher_states(denoiser, noise: Tensor, teacher: str, points: list[float], scale: int,
                   spacing: str | None = None) -> tuple[dict, dict]:
    """States of ``teacher`` at every σ of ``points`` (each interval refined ``scale`` times in
    ``spacing``, see :func:`~dode.core.schedules.refine`; for discrete-time models K·N is capped at T,
    with a warning). Returns (states, info)."""
    spec = get_solver(teacher)
    sched = schedule_of(denoiser)
    n = len(points) - 1
    if sched.discrete and scale * n > sched.T:
        capped = max(1, sched.T // n)
        warnings.warn(f"K·N = {scale}·{n} exceeds the model's T = {sched.T} timesteps; using K = {capped}")
        scale = capped
    fine = refine(torch.tensor(points, dtype=torch.float64), scale, denoiser, spacing)
    plan = spec.plan_for_steps(len(fine) - 1, bool(fine[-1] == 0))
    path = ModelPath(denoiser, record=points)
    final = run_solver(path, spec, noise, fine, plan)
    states = {call.sigma: call.x for call in path.calls}  # the last state passed to the model at each σ
    states[float(fine[-1])] = final
    return states, {"teacher": teacher, "teacher_scale": scale, "teacher_nfe": path.nfe}


def _least_squares(cols: list[Tensor], residual: Tensor) -> list[float]:
    """argmin_θ ‖residual − Σ θ_m cols_m‖² in float64 over the whole batch."""
    A = torch.stack([c.reshape(-1).double() for c in cols], 1)
    r = residual.reshape(-1, 1).double()
    if A.shape[1] == 1:
        bb = float((A * A).sum())
        return [float((A * r).sum()) / bb if bb > 0 else 0.0]
    return torch.linalg.lstsq(A, r, driver="gelsd").solution.flatten().tolist()


def fit_correction(denoiser, noise: Tensor, solver: str = "dpm3", nfe: int = 10, scale: int = 10,
                   form: str = "dode", grid: GridSpec = None, teacher: str | None = None,
                   targets: Sequence[Tensor] | StepTarget | None = None, step_fit: StepFit | None = None,
                   progress: bool = False, **provenance) -> Correction:
    """Fit a correction of ``form`` for ``solver`` at ``nfe`` on one batch of standard-normal ``noise``.

    ``teacher`` overrides the solver's default teacher. ``targets`` replaces the teacher: either the
    wanted state after each evaluation (e.g. planted targets), or a function
    ``targets(k, x_start, sigma_start, sigma_next)`` of the student's own state at the start of the
    step that evaluation k belongs to (the last model input at a σ above ``sigma_next``) — IIA's
    fine-step targets. ``step_fit(k, columns, residual)`` replaces the least-squares θ_k (PAS fits
    θ_k under L1 and keeps it only where it helps). Extra keyword arguments (seed range, …) go into
    the provenance.
    """
    get_form(form)
    start = time.perf_counter()
    spec, sigmas, plan = solver_grid(denoiser, solver, nfe, grid)
    after, points = student_points(denoiser, spec, sigmas, plan)
    info: dict = {}
    if targets is None:
        states, info = teacher_states(denoiser, noise, teacher or spec.teacher, points, scale,
                                      spacing_of(grid, spec.name, denoiser))
        targets = [states[s] for s in after]
    teacher_seconds = time.perf_counter() - start
    correction = Correction(form, [[] for _ in range(nfe)])
    cache: list[Tensor] = []

    def replay(stop: int) -> tuple[Tensor, float, ModelPath]:
        path = ReplayPath(denoiser, correction, cache, stop)
        try:
            return run_solver(path, spec, noise, sigmas, plan), float(sigmas[-1]), path
        except Stop as s:
            return s.x, s.sigma, path

    for k in tqdm(range(nfe), desc=f"fit {form} {solver}@{nfe}", disable=not progress, leave=False):
        a, sigma_next, path = replay(k + 1)
        assert sigma_next == after[k]
        present = path.columns.get(k, [])
        cols, used = [], []
        for m, ok in enumerate(present):
            if not ok:
                continue
            correction.theta[k] = [1.0 if j == m else 0.0 for j in range(len(present))]
            cols.append(replay(k + 1)[0] - a)
            used.append(m)
        theta = [0.0] * len(present)
        if cols:
            if callable(targets):
                j = max(i for i in range(k + 1) if path.sigmas[i] > sigma_next)
                target = targets(k, path.calls[j].x, path.sigmas[j], sigma_next)
            else:
                target = targets[k]
            fitted = step_fit(k, cols, target - a) if step_fit else _least_squares(cols, target - a)
            for m, v in zip(used, fitted):
                theta[m] = v
        correction.theta[k] = theta
    correction.space = correction.space or native_prediction(denoiser)
    correction.provenance = {
        "solver": spec.name, "nfe": nfe, "form": form, "grid": grid_record(grid, sigmas),
        "sigmas": [float(v) for v in sigmas], "model": weights_digest(denoiser), "scale": scale,
        "batch": int(noise.shape[0]), **info, "fit_seconds": time.perf_counter() - start,
        "teacher_seconds": teacher_seconds, "dode_version": __version__, **provenance,
    }
    return correction


def fit_lambdas(denoiser, noise: Tensor, solver: str = "dpm3", nfe: int = 10, scale: int = 10,
                grid: GridSpec = None) -> Tensor:
    """D-ODE's λ (one per model evaluation, float64) for :func:`dode.sample` (paper Eq. 14)."""
    return fit_correction(denoiser, noise, solver, nfe, scale, "dode", grid).lambdas

