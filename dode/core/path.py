"""The one model-call path every solver goes through.

A solver asks :class:`ModelPath` for the denoiser's output (:meth:`ModelPath.denoise`, which counts
NFE and records the σ of each evaluation), combines it into the estimate it feeds forward, and passes
that estimate through :meth:`ModelPath.correct` exactly once per evaluation. ``correct`` is the single
hook through which every learned correction enters — D-ODE's λ, its appendix formulations, the one-λ
baselines, IIA and S4S — so a learned solver is a base solver plus a few numbers, never a copy.

A correction is linear in its parameters (D-ODE, paper Eq. 8–10): at evaluation k, with ``q_k`` the
solver's estimate in the correction space (ε for noise-prediction models, x0 for data-prediction
ones) and ``q_{k−1}, q_{k−2}, …`` the previous estimates,

    q̃_k = q_k + Σ_m θ_{k,m} · g_{k,m}

(applied to the x0 estimate as d̃ = d + Σ θ g, an ε feature g entering as −σ·g), where the features
``g`` depend on the form: ``dode`` g = [q_k − q_{k−1}] (Eq. 10, θ = λ);
``dode2`` [q_k − q_{k−1}, q_k − q_{k−2}] (Eq. 9); ``sep`` [q_k, q_{k−1}] (θ = (a−1, b), truncated
Eq. 8); ``all`` [q_k, q_{k−1}, …, q_0] (Eq. 8); ``lookahead`` as ``dode`` but always on x0 (LA-DDIM).
First-step rule: in ε space the output before the first evaluation is ``x_T`` in VP scale,
``x_T / sqrt(1 + σ_T²)``; in x0 space there is none, so λ_0 = 0.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from dode.core.denoisers import as_sigma, native_prediction
from dode.errors import InvalidChoice


@dataclass(frozen=True)
class Estimate:
    """A solver's estimate at one evaluation: state ``x``, noise level ``sigma``, x0 form ``d``."""

    x: Tensor
    sigma: float
    d: Tensor

    def q(self, space: str) -> Tensor:
        """The estimate in ``space``: ε = (x − d)/σ or x0 = d."""
        return (self.x - self.d) / self.sigma if space == "eps" else self.d


def _delta(cur: Estimate, prev: Estimate | None, space: str) -> Tensor | None:
    """q_k − q_prev as a change of the x0 estimate (an ε change δ moves x0 by −σ·δ)."""
    if prev is None:
        return None
    g = cur.q(space) - prev.q(space)
    return -cur.sigma * g if space == "eps" else g


def _value(cur: Estimate, e: Estimate | None, space: str) -> Tensor | None:
    """q of estimate ``e`` as a change of the current x0 estimate."""
    if e is None:
        return None
    return -cur.sigma * e.q(space) if space == "eps" else e.q(space)


def _prev(h: list, j: int) -> Estimate | None:
    return h[-j] if len(h) >= j else None


Features = Callable[[Estimate, list, str], list]
# form -> (history kept, features(current, history, space) -> columns as x0 changes, None where the
# history is too short). The corrected x0 estimate is d̃ = d + Σ_m θ_m · column_m.
FORMS: dict[str, tuple[float, Features]] = {
    "dode": (1, lambda c, h, sp: [_delta(c, _prev(h, 1), sp)]),
    "lookahead": (1, lambda c, h, sp: [_delta(c, _prev(h, 1), "x0")]),
    "dode2": (2, lambda c, h, sp: [_delta(c, _prev(h, 1), sp), _delta(c, _prev(h, 2), sp)]),
    "sep": (1, lambda c, h, sp: [_value(c, c, sp), _value(c, _prev(h, 1), sp)]),
    "all": (math.inf, lambda c, h, sp: [_value(c, e, sp) for e in [c, *reversed(h)]]),
    # IIA (Zhang, Niwa & Kleijn, ICLR 2024; dode.learn.learned): weights on Δx̂0 and Δε of the last two outputs
    "iia": (1, lambda c, h, sp: [_delta(c, _prev(h, 1), "x0"), _delta(c, _prev(h, 1), "eps")]),
    "biia": (1, lambda c, h, sp: [_delta(c, _prev(h, 1), "eps")]),  # BIIA: one weight, on Δε
    # S4S (Frankel et al. 2025; dode.learn.learned): free weights on the last w data predictions (s4s: w = 3)
    "s4s": (2, lambda c, h, sp: [_value(c, e, "x0") for e in (c, _prev(h, 1), _prev(h, 2))]),
    "s4s2": (1, lambda c, h, sp: [_value(c, e, "x0") for e in (c, _prev(h, 1))]),
    "s4s4": (3, lambda c, h, sp: [_value(c, e, "x0") for e in (c, _prev(h, 1), _prev(h, 2), _prev(h, 3))]),
}
SPACE_OF_FORM: dict[str, str] = {"lookahead": "x0",  # forms whose space does not follow the model
                                 "iia": "x0", "biia": "x0", "s4s": "x0", "s4s2": "x0", "s4s4": "x0"}
# Forms whose history holds the outputs of each step's first stage only, so the corrector stage of
# Heun (its D' at σ_{i+1}) is never the "previous output" of the next step: IIA-EDM pairs the Euler
# stage with the past gradient, S4S's predictor weighs past predictor outputs. The D-ODE family
# pairs every stage with the stage before it, the next Euler stage with the previous corrector
# (methods.md, D-EDM: λ on the Euler stage with D_i − D_prev and on the corrector with D' − D_i).
PREDICTOR_HISTORY = frozenset({"iia", "biia", "s4s", "s4s2", "s4s4"})


def check_form(form: str) -> str:
    if form not in FORMS:
        raise InvalidChoice(f"unknown correction form {form!r}; valid forms: {', '.join(FORMS)}")
    return form


@dataclass
class Correction:
    """Per-evaluation parameters θ_k of a linear correction (see module docstring), with provenance.

    ``theta[k]`` holds the parameters of model evaluation k (floats, or tensors when optimised by
    autograd); missing or zero entries leave the estimate untouched, bit for bit.
    """

    form: str = "dode"
    theta: list = field(default_factory=list)
    space: str | None = None  # "eps" | "x0"; None: the denoiser's native prediction
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        check_form(self.form)
        self.space = SPACE_OF_FORM.get(self.form, self.space)

    @classmethod
    def from_lambdas(cls, lambdas: Sequence[float] | Tensor, **provenance) -> "Correction":
        """D-ODE (Eq. 10): one λ per model evaluation."""
        lam = torch.as_tensor(lambdas, dtype=torch.float64).flatten().tolist()
        return cls("dode", [[v] for v in lam], provenance=dict(provenance))

    @classmethod
    def fixed(cls, form: str, lam: float, nfe: int, **provenance) -> "Correction":
        """One λ shared by every evaluation: Fixed-D-DDIM (``dode``) or LA-DDIM (``lookahead``)."""
        if form not in ("dode", "lookahead"):
            raise InvalidChoice(f"a fixed λ applies to the forms 'dode' and 'lookahead', not {form!r}")
        return cls(form, [[float(lam)] for _ in range(nfe)], provenance={"fixed_lambda": float(lam), **provenance})

    @property
    def lambdas(self) -> Tensor:
        """λ_k of a one-parameter form (``dode``/``lookahead``) as a float64 tensor."""
        if self.form not in ("dode", "lookahead"):
            raise ValueError(f"form {self.form!r} has several parameters per evaluation; use .theta")
        return torch.tensor([float(t[0]) if len(t) else 0.0 for t in self.theta], dtype=torch.float64)

    def theta_at(self, k: int):
        return self.theta[k] if k < len(self.theta) else ()

    def to_dict(self) -> dict:
        theta = [[float(v) for v in t] for t in self.theta]
        return {"form": self.form, "space": self.space, "theta": theta, "provenance": self.provenance}

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{time.time_ns()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Correction":
        d = json.loads(Path(path).read_text())
        return cls(d["form"], [list(t) for t in d["theta"]], d.get("space"), d.get("provenance", {}))


def _is_zero(v) -> bool:
    return not isinstance(v, Tensor) and float(v) == 0.0


class ModelPath:
    """Calls the denoiser for a solver: counts NFE, records σ, applies the correction hook.

    ``record=True`` keeps ``(σ, x, D)`` of every evaluation in ``calls`` (trajectory figures).
    """

    def __init__(self, denoiser, correction: Correction | None = None, record: bool = False):
        self.denoiser = denoiser
        self.correction = correction
        self.space = (correction.space or native_prediction(denoiser)) if correction else None
        self.nfe = 0
        self.sigmas: list[float] = []
        self.calls: list | None = [] if record else None
        self.history: list[Estimate] = []
        self.columns: dict[int, list[bool]] = {}  # evaluation -> which features exist
        self._corrected = -1

    def _evaluate(self, x: Tensor, sigma: float) -> Tensor:
        return self.denoiser(x, as_sigma(sigma, x))

    def denoise(self, x: Tensor, sigma: float) -> Tensor:
        """One network evaluation D(x, σ) (one NFE)."""
        d = self._evaluate(x, sigma)
        self.nfe += 1
        self.sigmas.append(float(sigma))
        if self.calls is not None:
            self.calls.append((float(sigma), x, d))
        return d

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        """Evaluate and correct: for solvers that feed the raw output forward."""
        return self.correct(x, sigma, self.denoise(x, sigma))

    def correct(self, x: Tensor, sigma: float, d_hat: Tensor, corrector: bool = False) -> Tensor:
        """The hook: the solver's estimate ``d_hat`` (x0 form) at evaluation k → corrected estimate.

        ``corrector=True`` marks a corrector stage (Heun's D'): its estimate joins the history — is
        the next evaluation's "previous output" — except for the forms of ``PREDICTOR_HISTORY``."""
        k = self.nfe - 1
        if k == self._corrected or k < 0:
            raise RuntimeError("a solver must call correct() exactly once after each denoise()")
        self._corrected = k
        if self.correction is None:
            return d_hat
        keep, features = FORMS[self.correction.form]
        cur = Estimate(x, float(sigma), d_hat)
        if self.space == "eps" and k == 0:  # x_T in VP scale plays the output before the first
            prior = x / math.sqrt(1 + float(sigma) ** 2)
            self.history = [Estimate(x, float(sigma), x - float(sigma) * prior)]
        cols = features(cur, self.history, self.space)
        self.columns[k] = [g is not None for g in cols]
        delta = None
        for th, g in zip(self.correction.theta_at(k), cols):
            if g is None or _is_zero(th):
                continue
            delta = th * g if delta is None else delta + th * g
        if not (corrector and self.correction.form in PREDICTOR_HISTORY):
            self.history = (self.history + [cur])[-keep:] if keep != math.inf else self.history + [cur]
        return d_hat if delta is None else d_hat + delta
