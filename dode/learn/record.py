"""Tracing and replaying a solver on the one model-call path, for the fits of :mod:`dode.learn`.

* :class:`DryDenoiser` stands in for the model (returns its input) to trace where a solver
  evaluates: :func:`student_points` (the σ after each evaluation and the points a teacher must
  pass through) and :func:`feature_columns` (which features of a form exist at each evaluation —
  the first evaluations have a short history).
* :class:`ReplayPath` re-runs a solver with other correction parameters: evaluations already made
  are served from a cache (each network evaluation is made once over all replays), and the run
  stops with :class:`Stop` when it reaches evaluation ``stop_at``. Its ``calls`` keep every
  evaluation's input (the student's states).
"""
from __future__ import annotations

import torch
from torch import Tensor

from dode.core.denoisers import native_prediction
from dode.core.forms import Correction
from dode.core.path import ModelPath
from dode.core.sampling import run_solver
from dode.core.schedules import schedule_of
from dode.core.solvers import Solver

__all__ = ["DryDenoiser", "Stop", "ReplayPath", "student_points", "feature_columns"]


class DryDenoiser:
    """A stand-in model (returns its input) to trace at which σ a solver evaluates."""

    def __init__(self, denoiser):
        self.sigma_min, self.sigma_max = denoiser.sigma_min, denoiser.sigma_max
        self.schedule = schedule_of(denoiser)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        return x


class Stop(Exception):
    """Raised by :class:`ReplayPath` at evaluation ``stop_at``: the state ``x`` at ``sigma`` it got."""

    def __init__(self, x: Tensor, sigma: float):
        super().__init__(sigma)
        self.x, self.sigma = x, sigma


class ReplayPath(ModelPath):
    """Serves the outputs in ``cache`` for evaluations already made (appending new ones) and stops
    at evaluation ``stop_at``; records every call."""

    def __init__(self, denoiser, correction: Correction, cache: list[Tensor], stop_at: int):
        super().__init__(denoiser, correction, record=True)
        self.cache, self.stop_at = cache, stop_at

    def evaluate(self, x: Tensor, sigma: float) -> Tensor:
        k = self.nfe
        if k == self.stop_at:
            raise Stop(x, sigma)
        if k == len(self.cache):
            self.cache.append(super().evaluate(x, sigma))
        return self.cache[k]


def student_points(denoiser, spec: Solver, sigmas: Tensor, plan: list) -> tuple[list[float], list[float]]:
    """(σ after each evaluation — the next evaluation's σ or the final σ —, distinct decreasing
    points the teacher must pass through)."""
    path = ModelPath(DryDenoiser(denoiser))
    spec.fn(path, torch.zeros(1, 1), sigmas, plan)
    after = path.sigmas[1:] + [float(sigmas[-1])]
    points = sorted(set(path.sigmas + [float(sigmas[-1])]), reverse=True)
    return after, points


def feature_columns(denoiser, spec: Solver, sigmas: Tensor, plan: list, form: str) -> list[list[bool]]:
    """Which features of ``form`` exist at each evaluation (the first ones have a short history)."""
    correction = Correction(form, [], native_prediction(denoiser))  # presence depends on history only
    path = ModelPath(DryDenoiser(denoiser), correction)
    run_solver(path, spec, torch.zeros(1, 1, dtype=torch.float64), sigmas, plan)
    return [path.columns[k] for k in range(sum(plan))]
