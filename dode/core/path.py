"""The one model-call path every solver goes through.

A solver asks :class:`ModelPath` for the denoiser's output (:meth:`ModelPath.denoise`, which counts
NFE and records the σ of each evaluation), combines it into the estimate it feeds forward, and passes
that estimate through :meth:`ModelPath.correct` exactly once per evaluation. ``correct`` is the single
hook through which every learned correction enters — D-ODE's λ, its appendix formulations, the one-λ
baselines, IIA, S4S and PAS — so a learned solver is a base solver plus a few numbers, never a copy. The
forms and their math are in :mod:`dode.core.forms`.

The raw network call is :meth:`ModelPath.evaluate` (override it to serve cached outputs, as the
λ fit's replay does); ``record`` keeps the evaluations as :class:`Call` records.
"""
from __future__ import annotations

import math
from collections.abc import Collection
from typing import NamedTuple

import torch
from torch import Tensor

from dode.core.denoisers import as_sigma, native_prediction
from dode.core.forms import Correction, Estimate, get_form


class Call(NamedTuple):
    """One model evaluation: noise level ``sigma``, input state ``x``, output ``d`` = D(x, σ)."""

    sigma: float
    x: Tensor
    d: Tensor


def _is_zero(v) -> bool:
    return not isinstance(v, Tensor) and float(v) == 0.0


class ModelPath:
    """Calls the denoiser for a solver: counts NFE, records σ, applies the correction hook.

    ``record``: False keeps no calls; True keeps every evaluation as a :class:`Call` in ``calls``
    (trajectory figures); a collection of σ keeps only the last evaluation at each of those σ (a
    teacher's states at the student's times, without its other K·N states or a Heun teacher's second
    evaluation at the same σ).
    """

    def __init__(self, denoiser, correction: Correction | None = None,
                 record: bool | Collection[float] = False):
        self.denoiser = denoiser
        self.correction = correction
        self.space = (correction.space or native_prediction(denoiser)) if correction else None
        self.nfe = 0
        self.sigmas: list[float] = []
        self.calls: list[Call] | None = None if record is False else []
        self._keep = None if isinstance(record, bool) else frozenset(float(s) for s in record)
        self._kept_at: dict[float, int] = {}  # σ → its call's index in ``calls`` (σ-set recording)
        self.history: list[Estimate] = []
        self.columns: dict[int, list[bool]] = {}  # evaluation -> which features exist
        self._corrected = -1

    def evaluate(self, x: Tensor, sigma: float) -> Tensor:
        """The raw network call D(x, σ), nothing counted or recorded."""
        return self.denoiser(x, as_sigma(sigma, x))

    def denoise(self, x: Tensor, sigma: float) -> Tensor:
        """One network evaluation D(x, σ) (one NFE)."""
        d = self.evaluate(x, sigma)
        self.nfe += 1
        level = float(sigma.detach() if isinstance(sigma, Tensor) else sigma)
        self.sigmas.append(level)
        if self.calls is not None:
            self._record(Call(level, x, d))
        return d

    def _record(self, call: Call) -> None:
        if self._keep is None:
            self.calls.append(call)
        elif call.sigma in self._keep:
            if call.sigma in self._kept_at:
                self.calls[self._kept_at[call.sigma]] = call
            else:
                self._kept_at[call.sigma] = len(self.calls)
                self.calls.append(call)

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        """Evaluate and correct: for solvers that feed the raw output forward."""
        return self.correct(x, sigma, self.denoise(x, sigma))

    def correct(self, x: Tensor, sigma: float, d_hat: Tensor, corrector: bool = False) -> Tensor:
        """The hook: the solver's estimate ``d_hat`` (x0 form) at evaluation k → corrected estimate.

        ``corrector=True`` marks a corrector stage (Heun's D'): its estimate joins the history — is
        the next evaluation's "previous output" — except for forms with ``predictor_history``."""
        k = self.nfe - 1
        if k == self._corrected or k < 0:
            raise RuntimeError("a solver must call correct() exactly once after each denoise()")
        self._corrected = k
        if self.correction is None:
            return d_hat
        form = get_form(self.correction.form)
        sig = sigma if isinstance(sigma, Tensor) and sigma.requires_grad else float(sigma)  # a learned grid's σ
        cur = Estimate(x, sig, d_hat)
        if self.space == "eps" and k == 0:  # x_T in VP scale plays the output before the first
            prior = x / (torch.sqrt(1 + sig**2) if isinstance(sig, Tensor) else math.sqrt(1 + sig**2))
            self.history = [Estimate(x, sig, x - sig * prior)]
        cols = form.features(cur, self.history, self.space)
        self.columns[k] = [g is not None for g in cols]
        delta = None
        for th, g in zip(self.correction.theta_at(k), cols):
            if g is None or _is_zero(th):
                continue
            delta = th * g if delta is None else delta + th * g
        if form.corrected_history and delta is not None:
            cur = Estimate(x, sig, d_hat + delta)
        if not (corrector and form.predictor_history):
            keep = form.keep
            self.history = (self.history + [cur])[-keep:] if keep != math.inf else self.history + [cur]
        return d_hat if delta is None else d_hat + delta
