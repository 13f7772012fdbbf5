"""GITS — "On the Trajectory Regularity of ODE-based Diffusion Sampling", Chen, Zhou, Wang, Shen & Lyu,
ICML 2024 (Geometry-Inspired Time Scheduling): a base solver's time grid chosen by dynamic
programming over a fine candidate grid, from a few warm-up teacher trajectories.

A teacher runs from the warm-up noises on a fine grid σ̂_0 > … > σ̂_M and is recorded at every fine
point: its state x̂_i and the model's output D̂_i = D(x̂_i, σ̂_i) there. Jumping from fine point i to
j with one first-order step (DDIM, the same as Euler in VE form) from the teacher's state costs

    c_ij = E_batch ‖ D̂_i + (σ̂_j/σ̂_i)(x̂_i − D̂_i) − x̂_j ‖₂ / √dim,

no model evaluation beyond the teacher's. The grid is the path 0 = p_0 < p_1 < … < p_N = M through
the fine points with exactly N steps (N = the number of steps of the base solver's plan at the
requested NFE: Heun's 2-evaluation steps count once) minimising GITS's discounted sum

    C(p) = Σ_{k=0}^{N−1} γ^k c_{p_k p_{k+1}},   γ = ``coeff`` (GITS: 1.15),

solved exactly by the recursion V_1(i) = c_iM, V_k(i) = min_{i<j<M} c_ij + γ V_{k−1}(j)
(:func:`shortest_path`). The result is a correction with λ = 0 at every evaluation (the base solver
bit for bit) whose provenance holds the grid (``grid``, ``grid_learned``), sampled with
:func:`~dode.learn.grids.grid_of` exactly like LD3's.

Deviations from GITS's code (gits-main): the fine grid is the base grid refined (each interval split
into ⌈``fine``/N⌉ in the protocol's spacing, :func:`~dode.core.schedules.refine`), so its first and
last σ are the base grid's and the base grid is itself a path (the chosen path's cost is never
above the base grid's); GITS uses a 61-point EDM ρ = 7 grid from σ_max to σ_min. Cost ``l2``
(GITS's ``--metric=l2``) divided by √dim, a scale only (the argmin is unchanged); its code's default
``dev`` metric (the deviation from the start–end line) is not implemented; ``l1`` is. The cost step
is first order for every base solver, as in GITS (which uses Euler for its ipndm, dpm and dpmpp
students too). A singlestep DPM-Solver then gets one grid point per step (stages at logSNR r). No
AFS option.

dode's guard (``guard``, not in GITS): the chosen grid is kept only if the final samples it gives
from the warm-up noises are closer to the teacher's final state (mean squared distance) than those of
the base solver on its own grid (the same last σ: the fine grid refines the base grid); else the
result is the base solver (:func:`~dode.learn.grids.guarded`).
"""
from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from dode.version import __version__
from dode.core.denoisers import weights_digest
from dode.core.forms import Correction
from dode.core.path import ModelPath
from dode.core.protocols import GridSpec, spacing_of
from dode.core.sampling import run_solver, solver_grid
from dode.core.schedules import refine
from dode.core.solvers import ddim_step, get_solver
from dode.errors import InvalidChoice
from dode.learn.grids import grid_record, guarded

__all__ = ["fine_grid", "teacher_trajectory", "cost_matrix", "shortest_path", "path_cost", "fit_gits"]

METRICS = ("l2", "l1")


def fine_grid(denoiser, solver: str, nfe: int, grid: GridSpec = None, fine: int = 60) -> tuple[Tensor, Tensor, int]:
    """(the base grid's step points, the fine candidate grid, the refinement factor): every step of
    ``solver``'s grid at ``nfe`` split into ⌈fine/N⌉ intervals in the grid's spacing (singlestep
    DPM-Solver's stage points are dropped: one point per step)."""
    spec, sigmas, plan = solver_grid(denoiser, solver, nfe, grid)
    steps = len(plan)
    if len(sigmas) - 1 != steps:  # a stage grid: keep the step boundaries
        idx = [0] + torch.cumsum(torch.tensor(plan), 0).tolist()
        sigmas = sigmas[idx]
    factor = max(1, math.ceil(fine / steps))
    return sigmas, refine(sigmas, factor, denoiser, spacing_of(grid, spec.name, denoiser)), factor


def teacher_trajectory(denoiser, noise: Tensor, teacher: str, sigmas: Tensor) -> tuple[Tensor, Tensor, int]:
    """``teacher`` run on the grid ``sigmas`` from ``noise``: its states x̂_i at every σ of the grid
    (the last model input there; the final state at the last σ) and the model's outputs D̂_i at
    σ_0 … σ_{M−1}, stacked as (M+1, B, …) and (M, B, …); and its NFE."""
    spec = get_solver(teacher)
    if spec.stage_grid:
        raise InvalidChoice(f"the GITS teacher must take one grid point per step; {teacher!r} places its "
                            "stages on the grid")
    plan = spec.plan_for_steps(len(sigmas) - 1, bool(sigmas[-1] == 0))
    levels = sigmas.tolist()
    path = ModelPath(denoiser, record=levels[:-1])
    with torch.no_grad():
        final = run_solver(path, spec, noise, sigmas, plan)
    calls = sorted(path.calls, key=lambda c: -c.sigma)
    if [c.sigma for c in calls] != levels[:-1]:
        raise RuntimeError(f"the teacher {teacher!r} did not evaluate the model at every fine σ")
    states = torch.stack([c.x for c in calls] + [final])
    return states, torch.stack([c.d for c in calls]), path.nfe


def cost_matrix(states: Tensor, outputs: Tensor, sigmas: Tensor, metric: str = "l2") -> Tensor:
    """c_ij (module docstring) for 0 ≤ i < j ≤ M, +∞ elsewhere: the batch mean of ‖DDIM step from
    (x̂_i, D̂_i) to σ̂_j − x̂_j‖ (``l2``: /√dim, ``l1``: /dim), float64 (M+1)×(M+1)."""
    if metric not in METRICS:
        raise InvalidChoice(f"unknown GITS metric {metric!r}; valid: {', '.join(METRICS)}")
    m = len(sigmas) - 1
    dim = states[0, 0].numel()
    flat_x, flat_d = states.flatten(2), outputs.flatten(2)
    cost = torch.full((m + 1, m + 1), math.inf, dtype=torch.float64)
    for i in range(m):  # pair by pair in float64: memory of one batch of states, not of the trajectory's
        s, x_i, d_i = float(sigmas[i]), flat_x[i].double(), flat_d[i].double()
        for j in range(i + 1, m + 1):
            diff = ddim_step(x_i, d_i, s, float(sigmas[j])) - flat_x[j].double()
            norm = diff.norm(dim=-1) / math.sqrt(dim) if metric == "l2" else diff.abs().sum(-1) / dim
            cost[i, j] = norm.mean()
    return cost


def path_cost(cost: Tensor, path: list[int], coeff: float) -> float:
    """C(p) = Σ_k γ^k c_{p_k p_{k+1}} of a path of fine indices."""
    return float(sum(coeff**k * float(cost[a, b]) for k, (a, b) in enumerate(zip(path[:-1], path[1:]))))


def shortest_path(cost: Tensor, steps: int, coeff: float = 1.15) -> tuple[list[int], float]:
    """The path 0 = p_0 < … < p_N = M with N = ``steps`` minimising C(p) (module docstring), by
    dynamic programming over V_k(i), the least discounted cost from i to M in k steps; and its cost."""
    m = cost.shape[0] - 1
    if not 1 <= steps <= m:
        raise ValueError(f"{steps} steps do not fit on a fine grid of {m} intervals")
    value = torch.full((steps + 1, m + 1), math.inf, dtype=torch.float64)
    choice = torch.full((steps + 1, m + 1), -1, dtype=torch.long)
    value[1, :m] = cost[:m, m]
    for k in range(2, steps + 1):
        for i in range(m - k + 1):
            cand = cost[i, i + 1:m] + coeff * value[k - 1, i + 1:m]
            j = int(torch.argmin(cand))
            value[k, i], choice[k, i] = cand[j], i + 1 + j
    path = [0]
    for k in range(steps, 1, -1):
        path.append(int(choice[k, path[-1]]))
    return path + [m], float(value[steps, 0])


def fit_gits(denoiser, noise: Tensor, solver: str = "ddim", nfe: int = 5, grid: GridSpec = None, fine: int = 60,
             teacher: str = "ipndm", coeff: float = 1.15, metric: str = "l2", guard: bool = True,
             progress: bool = False, **provenance) -> Correction:
    """GITS: the grid of ``solver`` at ``nfe`` chosen among the points of the base grid (``grid``,
    default the paper protocol's) refined to about ``fine`` intervals, by the dynamic programme over
    the costs of one-step jumps between ``teacher``'s states from the warm-up ``noise`` (GITS: 256
    warm-up samples, an iPNDM teacher on 61 points, γ = 1.15). Returns a
    :class:`~dode.core.forms.Correction` with λ = 0 (the base solver) and the grid in its provenance;
    with ``guard`` the base solver on its own grid instead where that grid's samples are closer to the
    teacher's (:func:`~dode.learn.grids.guarded`). ``progress`` is accepted for the registry's signature
    (the fit is one teacher run)."""
    start = time.perf_counter()
    spec = get_solver(solver)
    base, fine_sigmas, factor = fine_grid(denoiser, solver, nfe, grid, fine)
    states, outputs, teacher_nfe = teacher_trajectory(denoiser, noise, teacher, fine_sigmas)
    teacher_seconds = time.perf_counter() - start
    cost = cost_matrix(states, outputs, fine_sigmas, metric)
    steps = len(base) - 1
    path, best = shortest_path(cost, steps, coeff)
    base_path = list(range(0, len(fine_sigmas), factor))
    sigmas = solver_grid(denoiser, spec, nfe, fine_sigmas[path])[1]  # singlestep DPM-Solver: stages added
    prov = {"method": "gits", "solver": spec.name, "nfe": nfe, "grid": [float(v) for v in sigmas], "grid_learned": True,
            "base_grid": grid_record(grid, base), "base_sigmas": [float(v) for v in base],
            "grid_changed": path != base_path, "sigmas": [float(v) for v in sigmas], "model": weights_digest(denoiser),
            "fine": len(fine_sigmas) - 1, "fine_path": path, "teacher": teacher, "teacher_nfe": teacher_nfe,
            "teacher_seconds": teacher_seconds, "coeff": coeff, "metric": metric, "cost_best": best,
            "cost_base": path_cost(cost, base_path, coeff), "batch": int(noise.shape[0]),
            "dode_version": __version__, **provenance}
    fitted = Correction.from_lambdas([0.0] * nfe, **prov)
    if guard:
        fitted = guarded(fitted, denoiser, noise, grid, lambda sigma: states[-1])
    fitted.provenance["fit_seconds"] = time.perf_counter() - start
    return fitted
