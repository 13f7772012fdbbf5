"""Correction forms: one :class:`Form` record per form, and the :class:`Correction` (its parameters).

A correction is linear in its parameters (D-ODE, paper Eq. 8–10): at evaluation k, with ``q_k`` the
solver's estimate in the correction space (ε for noise-prediction models, x0 for data-prediction
ones) and ``q_{k−1}, q_{k−2}, …`` the previous estimates,

    q̃_k = q_k + Σ_m θ_{k,m} · g_{k,m}

(applied to the x0 estimate as d̃ = d + Σ θ g, an ε feature g entering as −σ·g), where the features
``g`` depend on the form: ``dode`` g = [q_k − q_{k−1}] (Eq. 10, θ = λ);
``dode2`` [q_k − q_{k−1}, q_k − q_{k−2}] (Eq. 9); ``sep`` [q_k, q_{k−1}] (θ = (a−1, b), truncated
Eq. 8); ``all`` [q_k, q_{k−1}, …, q_0] (Eq. 8); ``lookahead`` as ``dode`` but always on x0 (LA-DDIM);
``iia``/``biia`` (IIA, Zhang, Niwa & Kleijn, ICLR 2024; :mod:`dode.learn.iia`) [Δx̂0, Δε] / [Δε] of
the last two outputs; ``s4s``/``s4s2``/``s4s4`` (S4S, Frankel et al. 2025; :mod:`dode.learn.s4s`)
the last w = 3/2/4 data predictions; ``amed`` (AMED-Plugin, Zhou et al. 2024; :mod:`dode.learn.amed`)
[d_k − x_k], the step's own direction, so θ = c − 1 scales it: ε̃ = c·ε; ``pas``/``pas3``/``pas2`` (PAS,
Wang et al., ICML 2025; :mod:`dode.learn.pas`) the M = 4/3/2 PCA basis vectors of the sample's own
direction history (:func:`pas_basis`), as ε changes.
First-step rule: in ε space the output before the first evaluation is ``x_T`` in VP scale,
``x_T / sqrt(1 + σ_T²)``; in x0 space there is none, so λ_0 = 0.

A new form is one ``Form(...)`` entry of :data:`FORMS`.
"""
from __future__ import annotations

import json
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from dode.errors import CorrectionMismatch, InvalidChoice


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


def _unit(v: Tensor) -> Tensor:
    """v / ‖v‖ per sample (rows of a (B, D) matrix); a zero row stays zero."""
    return v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)


def pas_basis(directions: Tensor, x_rel: Tensor, prior: Tensor, m: int) -> list[Tensor | None]:
    """PAS's basis (Wang et al., ICML 2025, Sec. 3.2): per sample, u_1 = v/‖v‖ with v the current
    direction (the last row of ``directions``, shape (B, n, D): the direction history, oldest first),
    then the top principal components of the n centred directions (exact SVD; n directions give at
    most n − 1), Gram–Schmidt orthonormalised against u_1 and each other, each signed so that
    ⟨x − x_T, u⟩ > 0 (``x_rel`` = x − x_T; where that is 0, at the first evaluation, ⟨``prior``, u⟩ ≥ 0).
    Returns m entries (B, D), None for the components the history is too short to have."""
    basis = [_unit(directions[:, -1])]
    centred = directions - directions.mean(1, keepdim=True)
    pcs = torch.linalg.svd(centred, full_matrices=False).Vh[:, :min(m - 1, directions.shape[1] - 1)]
    ref = torch.where((x_rel != 0).any(1, keepdim=True), x_rel, prior)
    for j in range(pcs.shape[1]):
        u = pcs[:, j]
        for b in basis:
            u = u - (u * b).sum(1, keepdim=True) * b
        u = _unit(u)
        basis.append(torch.where((ref * u).sum(1, keepdim=True) >= 0, u, -u))
    return basis + [None] * (m - len(basis))


def _pas(m: int) -> Callable[[Estimate, list, str], list]:
    """PAS features: the directions dx/dσ = ε of the history (x_T's VP-scale pseudo-output first, then
    the corrected estimates, :attr:`Form.corrected_history`) and of ``c``; their basis
    (:func:`pas_basis`) as changes of the x0 estimate, −σ·u (d̃ = d − σ Σ θ_m u_m; ε̃ = ε + Σ θ_m u_m)."""
    def features(c: Estimate, h: list, sp: str) -> list:
        flat = [e.q("eps").reshape(len(c.x), -1) for e in (*h, c)]
        x_rel = (c.x - h[0].x).reshape(len(c.x), -1)
        basis = pas_basis(torch.stack(flat, 1), x_rel, flat[0], m)
        return [None if u is None else -c.sigma * u.reshape(c.x.shape) for u in basis]
    return features


# features(current, history, space) -> columns as x0 changes, None where the history is too short.
# The corrected x0 estimate is d̃ = d + Σ_m θ_m · column_m.
Features = Callable[[Estimate, list, str], list]


@dataclass(frozen=True)
class Form:
    """One correction form.

    ``keep``: estimates kept in the history (``math.inf``: all). ``space``: ``"x0"``/``"eps"`` when
    the form fixes the space its features act in, None when it follows the model's native
    prediction. ``predictor_history``: the history holds the outputs of each step's first stage
    only, so the corrector stage of Heun (its D' at σ_{i+1}) is never the "previous output" of the
    next step — IIA-EDM pairs the Euler stage with the past gradient, S4S's predictor weighs past
    predictor outputs. The D-ODE family pairs every stage with the stage before it, the next Euler
    stage with the previous corrector (methods.md, D-EDM: λ on the Euler stage with D_i − D_prev and
    on the corrector with D' − D_i). ``corrected_history``: the history keeps the corrected estimates
    (PAS's trajectory is the corrected one), not the solver's.
    """

    name: str
    features: Features
    keep: float
    space: str | None = None
    predictor_history: bool = False
    corrected_history: bool = False


FORMS: dict[str, Form] = {f.name: f for f in (
    Form("dode", lambda c, h, sp: [_delta(c, _prev(h, 1), sp)], 1),
    Form("lookahead", lambda c, h, sp: [_delta(c, _prev(h, 1), "x0")], 1, "x0"),
    Form("dode2", lambda c, h, sp: [_delta(c, _prev(h, 1), sp), _delta(c, _prev(h, 2), sp)], 2),
    Form("sep", lambda c, h, sp: [_value(c, c, sp), _value(c, _prev(h, 1), sp)], 1),
    Form("all", lambda c, h, sp: [_value(c, e, sp) for e in [c, *reversed(h)]], math.inf),
    # IIA: weights on Δx̂0 and Δε of the last two outputs; BIIA: one weight, on Δε
    Form("iia", lambda c, h, sp: [_delta(c, _prev(h, 1), "x0"), _delta(c, _prev(h, 1), "eps")], 1, "x0", True),
    Form("biia", lambda c, h, sp: [_delta(c, _prev(h, 1), "eps")], 1, "x0", True),
    # S4S: free weights on the last w data predictions (s4s: w = 3)
    Form("s4s", lambda c, h, sp: [_value(c, e, "x0") for e in (c, _prev(h, 1), _prev(h, 2))], 2, "x0", True),
    Form("s4s2", lambda c, h, sp: [_value(c, e, "x0") for e in (c, _prev(h, 1))], 1, "x0", True),
    Form("s4s4", lambda c, h, sp: [_value(c, e, "x0") for e in (c, _prev(h, 1), _prev(h, 2), _prev(h, 3))], 3,
         "x0", True),
    # AMED-Plugin: d̃ = d + θ(d − x), i.e. the direction (x − d)/σ of the step scaled by c = 1 + θ
    Form("amed", lambda c, h, sp: [c.d - c.x], 1, "x0"),
    # PAS: M PCA basis vectors of the sample's direction history (x_T first), on ε
    Form("pas", _pas(4), math.inf, "eps", corrected_history=True),
    Form("pas3", _pas(3), math.inf, "eps", corrected_history=True),
    Form("pas2", _pas(2), math.inf, "eps", corrected_history=True),
)}


def get_form(name: str) -> Form:
    """The registered form ``name``; :class:`~dode.errors.InvalidChoice` listing the valid ones."""
    if name not in FORMS:
        raise InvalidChoice(f"unknown correction form {name!r}; valid forms: {', '.join(FORMS)}")
    return FORMS[name]


@dataclass(frozen=True)
class FittedFor:
    """What a correction was fitted for (from its provenance): it holds only on this solver, at this
    NFE, on this σ grid; None where the provenance does not say (e.g. λ given by hand)."""

    solver: str | None = None
    nfe: int | None = None
    sigmas: tuple[float, ...] | None = None
    model: str | None = None  # sha256 of the model's weights (dode.core.denoisers.weights_digest)

    def check(self, solver: str, nfe: int, sigmas: Sequence[float], model: str | None = None) -> None:
        """:class:`~dode.errors.CorrectionMismatch` (one line) unless ``solver``, ``nfe``, ``sigmas`` and
        the ``model`` digest are those it was fitted for (σ to 1e-12 relative: a grid read back from
        JSON; a digest unknown on either side is not compared)."""
        want = ", ".join(x for x in (self.solver, f"NFE {self.nfe}" if self.nfe is not None else None) if x)
        if self.solver is not None and solver != self.solver:
            raise CorrectionMismatch(f"this correction was fitted for {want}, not for {solver}: fit one for {solver}")
        if self.nfe is not None and int(nfe) != self.nfe:
            raise CorrectionMismatch(f"this correction was fitted for {want}, not for NFE {nfe}: fit one for NFE {nfe}")
        if self.sigmas is not None:
            mine, theirs = torch.tensor(self.sigmas, dtype=torch.float64), torch.as_tensor(sigmas, dtype=torch.float64)
            if mine.shape != theirs.shape or not torch.allclose(mine, theirs.cpu(), rtol=1e-12, atol=0.0):
                raise CorrectionMismatch(f"this correction was fitted for {want} on another σ grid "
                                         f"({_grid_text(self.sigmas)}, not {_grid_text(theirs.tolist())}): "
                                         "sample on its grid (dode.learn.grid_of) or fit one for this grid")
        if self.model and model and model != self.model:
            raise CorrectionMismatch(f"this correction was fitted on another model (weights sha256 {self.model[:12]}…, "
                                     f"this model's {model[:12]}…): fit one for this model")


def _grid_text(sigmas: Sequence[float]) -> str:
    return f"{len(sigmas)} points {float(sigmas[0]):.4g} … {float(sigmas[-1]):.4g}"


@dataclass
class Correction:
    """Per-evaluation parameters θ_k of a linear correction (see module docstring), with provenance.

    ``theta[k]`` holds the parameters of model evaluation k (floats, or tensors when optimised by
    autograd); missing or zero entries leave the estimate untouched, bit for bit. ``afs``: the σ of
    an analytical first step in place of the first evaluation (AMED, :func:`dode.core.sampling.start_state`);
    None: none.
    """

    form: str = "dode"
    theta: list = field(default_factory=list)
    space: str | None = None  # "eps" | "x0"; None: the denoiser's native prediction
    provenance: dict = field(default_factory=dict)
    afs: float | None = None

    def __post_init__(self):
        self.space = get_form(self.form).space or self.space

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
        return cls(form, [[float(lam)] for _ in range(nfe)],
                   provenance={"fixed_lambda": float(lam), "nfe": int(nfe), **provenance})

    @property
    def lambdas(self) -> Tensor:
        """λ_k of a one-parameter form (``dode``/``lookahead``) as a float64 tensor."""
        if self.form not in ("dode", "lookahead"):
            raise ValueError(f"form {self.form!r} has several parameters per evaluation; use .theta")
        return torch.tensor([float(t[0]) if len(t) else 0.0 for t in self.theta], dtype=torch.float64)

    @property
    def fitted_for(self) -> FittedFor:
        """The solver, NFE, σ grid and model this correction was fitted for (its provenance's
        ``solver``, ``nfe``, ``sigmas``, ``model``)."""
        p = self.provenance or {}
        sig = p.get("sigmas")
        return FittedFor(p.get("solver"), int(p["nfe"]) if p.get("nfe") is not None else None,
                         tuple(float(v) for v in sig) if sig is not None else None, p.get("model"))

    def check_run(self, solver: str, nfe: int, sigmas: Sequence[float], model: str | None = None) -> None:
        """Refuse (:class:`~dode.errors.CorrectionMismatch`, one line) a run this correction does not fit:
        θ for another number of evaluations than ``nfe``, or another solver, NFE or grid than it was
        fitted for (no θ is ever silently taken as 0)."""
        if len(self.theta) != int(nfe):
            raise CorrectionMismatch(f"the correction holds θ for {len(self.theta)} model evaluations, the run makes "
                                     f"{nfe}: it belongs to another NFE (or its file is incomplete)")
        self.fitted_for.check(solver, nfe, sigmas, model)

    def theta_at(self, k: int):
        """θ_k, or no parameters past the end of ``theta``."""
        return self.theta[k] if k < len(self.theta) else ()

    def to_dict(self) -> dict:
        theta = [[float(v) for v in t] for t in self.theta]
        out = {"form": self.form, "space": self.space, "theta": theta, "provenance": self.provenance}
        return out if self.afs is None else {**out, "afs": float(self.afs)}

    @classmethod
    def from_dict(cls, d: dict) -> "Correction":
        """The correction of :meth:`to_dict`."""
        afs = d.get("afs")
        return cls(d["form"], [list(t) for t in d["theta"]], d.get("space"), d.get("provenance") or {},
                   None if afs is None else float(afs))

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically: a temporary ``.<name>.<host>.<pid>.tmp`` (the pattern the runner
        clears after a crash), then a rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Correction":
        return cls.from_dict(json.loads(Path(path).read_text()))
