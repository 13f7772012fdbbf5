"""PAS — "Diffusion Sampling Correction via Approximately 10 Parameters", Wang et al., ICML 2025
(PCA-based Adaptive Search) — on the one model-call path: a base solver of :mod:`dode.core.solvers`
plus a few coordinates θ_k at chosen evaluations, entering through
:meth:`dode.core.path.ModelPath.correct` (form ``pas``, :func:`dode.core.forms.pas_basis`).

At evaluation k the solver's direction ε_k = dx/dσ = (x − d̃_k)/σ (on multistep solvers the combined
one, as PAS corrects iPNDM's) is corrected inside the span of M per-sample orthonormal vectors:
u_1 = ε_k/‖ε_k‖ and the top principal components of the sample's own direction history
{x_T, ε̃_0, …, ε̃_{k−1}, ε_k} (x_T in VP scale, the corrected past directions),

    ε̃_k = ε_k + Σ_m θ_{k,m} u_{k,m}      (d̃_k = d_k − σ_k Σ_m θ_{k,m} u_{k,m}),

θ_k shared by every sample. θ_k is fitted step by step: the student, already corrected before k,
steps to the next grid point; its state is affine in θ_k (:func:`dode.learn.dode.fit_correction`
replays the columns), and θ_k minimises the mean L1 (or L2) distance to the teacher's state there.
Adaptive search (PAS Sec. 3.3): θ_k is kept only if it lowers that loss by more than the tolerance
(``first_tol`` until a first step is kept, ``tol`` after); otherwise θ_k = 0 and the base step stands.
The teacher is D-ODE's :func:`~dode.learn.dode.teacher_states`: ``teacher`` (Heun, as PAS) on the
student's grid with every interval refined ``scale`` times (K = 10 ≈ PAS's 100 teacher NFE at NFE 5).

Defaults as the authors' code (onefly123/PAS, ``run.sh``): M = 4 basis vectors, x_T in the history,
L1 loss, tolerance 1e-4 for the first and the other kept steps. Deviations, so that θ = 0 is the base
solver bit for bit: (1) PAS replaces the direction by Σ c_m u_m with c_1 initialised to the batch's
mean ‖ε‖, so every sample's direction takes one shared length c_1; here u_1's coordinate is added to
each sample's own length (c_1 = ‖ε_k‖ + θ_1 per sample). (2) Components the history is too short to
have (n directions give n − 1 centred components) are absent, where PAS skips the first step (M = 4)
and takes an arbitrary third component at the second. (3) The coordinates are the exact minimiser
of the loss on the fit batch (L2: least squares; L1: iteratively reweighted least squares), where
PAS runs Adam (lr 0.01, early stop) over 5000 teacher trajectories; the batch is the run's (B = 100).
(4) Exact SVD (``torch.linalg.svd``) instead of the randomised ``torch.pca_lowrank``; signs by
⟨x − x_T, u⟩ ≥ 0, by ⟨x_T, u⟩ at the first evaluation (where x = x_T).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from dode.core.forms import Correction
from dode.core.protocols import GridSpec
from dode.core.solvers import get_solver
from dode.errors import InvalidChoice
from dode.learn.dode import fit_correction

__all__ = ["PAS_FORMS", "LOSSES", "PasStep", "AdaptiveSearch", "fit_pas", "l1_fit"]

PAS_FORMS = ("pas", "pas3", "pas2")
LOSSES = ("l1", "l2")


def _solve(A: Tensor, r: Tensor, w: Tensor | None = None) -> Tensor:
    """argmin_θ Σ w (r − Aθ)² (w = 1: least squares), float64, by the normal equations' pseudo-inverse."""
    Aw = A if w is None else A * w[:, None]
    return torch.linalg.pinv(Aw.T @ A) @ (Aw.T @ r)


def l1_fit(A: Tensor, r: Tensor, iters: int = 100) -> Tensor:
    """argmin_θ mean |r − Aθ| by iteratively reweighted least squares (weights 1/max(|residual|, δ),
    δ = 1e-9 · mean |r|), from the least-squares θ; the best θ seen."""
    theta = _solve(A, r)
    best, best_loss = theta, float((r - A @ theta).abs().mean())
    delta = 1e-9 * float(r.abs().mean()) + 1e-300
    for _ in range(iters):
        theta = _solve(A, r, 1.0 / (r - A @ theta).abs().clamp_min(delta))
        loss = float((r - A @ theta).abs().mean())
        if loss >= best_loss * (1 - 1e-12):
            break
        best, best_loss = theta, loss
    return best


@dataclass(frozen=True)
class PasStep:
    """One evaluation of the search: its ``size`` coordinates (the basis vectors it has), its loss
    against the teacher without (``base``) and with them (``fitted``), and whether they were kept."""

    evaluation: int
    size: int
    base: float
    fitted: float
    kept: bool


@dataclass
class AdaptiveSearch:
    """PAS's per-step fit and keep/skip rule, the ``step_fit`` of :func:`~dode.learn.dode.fit_correction`:
    θ_k = argmin loss(residual − Σ θ_m b_m), kept iff loss(residual) − loss(fit) > tolerance
    (``first_tol`` until one step is kept, then ``tol``); ``steps`` records every evaluation."""

    loss: str = "l1"
    tol: float = 1e-4
    first_tol: float = 1e-4
    steps: list[PasStep] = field(default_factory=list)

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise InvalidChoice(f"PAS's loss is one of {', '.join(LOSSES)}, not {self.loss!r}")

    def error(self, r: Tensor) -> float:
        """Mean L1 (|r|) or L2 (r²) over every element of the batch (PAS's ``L1Loss``/``MSELoss``)."""
        return float(r.abs().mean() if self.loss == "l1" else r.pow(2).mean())

    def __call__(self, k: int, cols: list[Tensor], residual: Tensor) -> list[float]:
        A = torch.stack([c.reshape(-1).double() for c in cols], 1)
        r = residual.reshape(-1).double()
        theta = l1_fit(A, r) if self.loss == "l1" else _solve(A, r)
        base, fitted = self.error(r), self.error(r - A @ theta)
        tol = self.tol if any(s.kept for s in self.steps) else self.first_tol
        kept = base - fitted > tol
        self.steps.append(PasStep(k, len(cols), base, fitted, kept))
        return theta.tolist() if kept else [0.0] * len(cols)


def fit_pas(denoiser, noise: Tensor, solver: str = "ddim", nfe: int = 10, form: str = "pas", loss: str = "l1",
            tol: float = 1e-4, first_tol: float = 1e-4, teacher: str = "heun", scale: int = 10,
            grid: GridSpec = None, targets: list[Tensor] | None = None, progress: bool = False,
            **provenance) -> Correction:
    """PAS for ``solver`` at ``nfe`` on one batch of standard-normal ``noise`` (see the module docstring):
    ``form`` (M = 4/3/2 basis vectors), ``loss`` (l1 | l2), tolerances ``first_tol``/``tol``, the
    ``teacher`` solver on the student's grid refined ``scale`` times (or the given ``targets``: the
    wanted state after each evaluation). The search's record is ``provenance["steps"]``, the kept
    evaluations ``provenance["kept"]`` and their number of coordinates ``provenance["parameters"]``;
    extra keyword arguments go into the provenance."""
    if form not in PAS_FORMS:
        raise InvalidChoice(f"PAS fits the forms {', '.join(PAS_FORMS)}, not {form!r}")
    if get_solver(solver).corrects_back:
        raise InvalidChoice(f"PAS does not fit {solver}: its corrector redoes each step from the raw outputs, so the "
                            "state the fit scores is not the one sampling goes on from")
    search = AdaptiveSearch(loss, float(tol), float(first_tol))
    corr = fit_correction(denoiser, noise, solver, nfe, scale, form, grid, teacher=teacher, targets=targets,
                          step_fit=search, progress=progress, method="pas", loss=loss, tol=float(tol),
                          first_tol=float(first_tol), **provenance)
    corr.provenance.update(steps=[asdict(s) for s in search.steps], kept=[s.evaluation for s in search.steps if s.kept],
                           parameters=sum(s.size for s in search.steps if s.kept))
    return corr
