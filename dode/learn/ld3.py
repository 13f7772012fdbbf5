"""LD3 — "Learning to Discretize Denoising Diffusion ODEs", Tong, Dao, Nguyen, Le & Do, ICLR 2025 —
on dode's differentiable grids: learn only the time grid of a base solver, nothing else.

The grid is S4S-Alt's :class:`~dode.learn.grids.MonotoneGrid` (σ_0 and σ = 0 fixed; the steps in
between, and with ``free_end`` the last positive σ, are free logits; strictly decreasing for every
value), fitted by Adam through the solver (:func:`~dode.learn.s4s_alt.grid_gradient`) so that the
student's samples match a teacher's on a small batch (LD3 uses ~100 teacher samples), with LD3's
relaxed objective (:mod:`dode.learn.relaxed`; radius ``"ld3"``: its code's default 0.001·dim/N²,
:func:`~dode.learn.relaxed.ld3_radius`). The result is a correction with λ = 0 at every evaluation — the base solver bit for bit — whose
provenance holds the learned grid (``grid``, ``grid_learned``), used when sampling
(:func:`~dode.learn.grids.grid_of`).

Deviations from LD3's code: Adam with a cosine decay on the full batch instead of RMSprop with
gradient clipping on mini-batches and a plateau-driven learning-rate decay; dode's monotone
parametrisation in ``grid_space`` instead of LD3's softmax over log-SNR or time; one grid shared by a
step's stages (LD3's second, decoupled grid is not learned); a normalised step for the starts
(:mod:`dode.learn.relaxed`).
"""
from __future__ import annotations

import time
from typing import Callable

from torch import Tensor

from dode.version import __version__
from dode.core.denoisers import weights_digest
from dode.core.forms import Correction
from dode.core.protocols import GridSpec
from dode.learn.grids import MonotoneGrid, grid_record
from dode.learn.s4s import Reduce, S4SProblem, alone
from dode.learn.s4s_alt import grid_gradient

__all__ = ["fit_ld3"]


def fit_ld3(denoiser, noise: Tensor, solver: str = "ddim", nfe: int = 5, grid: GridSpec = None,
            teacher: str = "heun", teacher_nfe: int = 199, teacher_grid: GridSpec = None,
            targets: Tensor | None = None, distance: str | Callable = "l2", iters: int = 200, lr: float = 0.05,
            grid_space: str = "rho", rho: float = 7.0, free_end: bool = True, radius: float | str | None = "ld3",
            relax_step: float = 1.0, chunk: int | None = None, lpips_weights: str | None = None,
            classifier: str | None = None, progress: bool = False, reduce: Reduce = alone,
            **provenance) -> Correction:
    """LD3: the grid of ``solver`` at ``nfe`` (starting from ``grid``, default the paper protocol's)
    learned by ``iters`` Adam steps (learning rate ``lr``, cosine decay) on the :class:`MonotoneGrid`
    logits in ``grid_space`` so that the student's samples from ``noise`` match ``teacher``'s
    (``teacher_nfe`` evaluations, or ``targets``) in ``distance``, with the relaxed objective of
    ``radius`` (``"ld3"``: LD3's default for this sample size and number of steps; a number; None: the
    plain objective). ``free_end``: the last positive σ is learned too (grids ending at σ = 0). The
    best grid seen by the training loss is kept only if it beats the initial grid. Returns a
    :class:`~dode.core.forms.Correction` with λ = 0 (the base solver) and the grid in its provenance.
    ``reduce``: a data-parallel fit (:class:`~dode.learn.s4s.Reduce`; ``noise`` and ``targets`` this
    process's shares), the same grid on every process."""
    start = time.perf_counter()
    problem = S4SProblem.setup(denoiser, noise, solver, nfe, None, grid, teacher, teacher_nfe, teacher_grid, targets,
                               distance, lpips_weights, classifier, chunk, radius, relax_step, reduce)
    spec, base = problem.spec, problem.sigmas
    mg = MonotoneGrid(denoiser, base, grid_space, rho, free_end and bool(base[-1] == 0))
    params = problem.initial_params()
    loss0 = problem.loss(params, base)
    logits, _, loss, runs = grid_gradient(problem, params, mg, mg.init.clone(), loss0, iters, lr, progress,
                                       f"fit ld3 {spec.name}@{nfe}")
    accepted = loss < loss0
    sigmas = mg.sigmas(logits).detach() if accepted else base
    prov = {"method": "ld3", "solver": spec.name, "nfe": nfe, "grid": [float(v) for v in sigmas], "grid_learned": True,
            "base_grid": grid_record(grid, base), "base_sigmas": [float(v) for v in base],
            "grid_changed": bool(accepted), "sigmas": [float(v) for v in sigmas], "model": weights_digest(denoiser),
            "grid_space": grid_space, "free_end": mg.free_end, "batch": problem.batch,
            "distance": problem.distance_name, **problem.relax_record(), "iters": iters, "lr": lr,
            **problem.teacher_info, "loss_init": loss0, "loss_best": min(loss, loss0), "student_runs": problem.runs,
            "grid_runs": runs, "fit_seconds": time.perf_counter() - start, "dode_version": __version__, **provenance}
    return Correction.from_lambdas([0.0] * len(params), **prov)
