"""S4S-Alt (Frankel et al. 2025): S4S's coefficient fit (:mod:`dode.learn.s4s`) alternated with
optimising the time grid.

The grid's σ between its fixed ends are the :class:`~dode.learn.grids.MonotoneGrid` of free logits ℓ
(one fixed at 0, N − 2 free; strictly monotone for every ℓ), optimised by gradient (``gradient``: Adam
on ℓ through the solver's differentiable grid, :mod:`dode.core.solvers`; ``joint``: with θ in the same
steps) or derivative-free (``nelder_mead``, scipy; each loss one student run on the batch). A grid is
accepted only when it lowers the loss, so the loss never rises. The learned grid is stored as
``provenance["grid"]`` with ``provenance["grid_learned"] = True``
(:func:`~dode.learn.grids.grid_of`, :func:`~dode.learn.grids.sample_learned`).
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dode.version import __version__
from dode.core.denoisers import weights_digest
from dode.core.forms import Correction
from dode.core.protocols import GridSpec
from dode.errors import InvalidChoice
from dode.learn.grids import MonotoneGrid, grid_record
from dode.learn.s4s import Reduce, S4SProblem, alone, optimise, validation_pair

__all__ = ["GRID_SEARCHES", "grid_gradient", "fit_s4s_alt"]

GRID_SEARCHES = ("gradient", "joint", "nelder_mead")
END_START = 0.1  # the smallest |ℓ| of a free end a gradient search starts from


def grid_gradient(problem: S4SProblem, params: Tensor, mg: MonotoneGrid, logits: Tensor, loss0: float, iters: int,
                  lr: float, progress: bool, desc: str,
                  theta_lr: float | None = None) -> tuple[Tensor, Tensor, float, int]:
    """Adam on the grid's free logits for ``iters`` steps, learning rate ``lr`` with a cosine decay to
    lr/100 — ``params`` fixed, or optimised jointly with learning rate ``theta_lr`` when given (entries
    where ``problem.mask`` is 0 stay fixed); the gradient reaches ℓ through σ(ℓ) (chain rule through
    a σ leaf, so the loss's chunks each backpropagate to σ). A free end at |ℓ| < :data:`END_START`
    starts from there (its σ a little above σ_lo). Returns (best logits seen, the parameters with them,
    its loss, student runs)."""
    ell = logits.detach().clone()
    if mg.free_end:  # the end's map u_lo + (u_0 − u_lo)(1 − e^{−ℓ²}) is stationary at ℓ = 0: start off it
        ell[-1] = ell[-1].abs().clamp_min(END_START)
    ell.requires_grad_(True)
    p = params.detach().clone().requires_grad_(theta_lr is not None)
    groups = [{"params": [ell], "lr": lr}] + ([{"params": [p], "lr": theta_lr}] if theta_lr is not None else [])
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(iters, 1), eta_min=lr * 0.01)
    best, runs = (loss0, logits.detach().clone(), params.detach().clone()), 0
    bar = tqdm(total=iters, desc=desc, disable=not progress, leave=False)
    for _ in range(iters + 1):
        with torch.enable_grad():
            sig = mg.sigmas(ell)
        if not MonotoneGrid.monotone(sig.detach()):
            break
        leaf = sig.detach().requires_grad_(True)
        opt.zero_grad()
        loss = problem.loss(p if p.requires_grad else p.detach(), leaf, backward=runs < iters)
        runs += 1
        if math.isfinite(loss) and loss < best[0]:
            best = (loss, ell.detach().clone(), p.detach().clone())
        if runs > iters or not math.isfinite(loss):
            break
        sig.backward(leaf.grad)
        if p.grad is not None:
            p.grad.mul_(problem.mask)
        opt.step()
        sched.step()
        problem.relax(p.detach(), mg.sigmas(ell.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4g}", best=f"{best[0]:.4g}")
    bar.close()
    return best[1], best[2], best[0], runs


def _nelder_mead(problem: S4SProblem, params: Tensor, mg: MonotoneGrid, logits: Tensor, loss0: float,
                 evals: int, step: float, progress: bool, desc: str) -> tuple[Tensor, float, int]:
    """Nelder–Mead on the free logits (params fixed); returns (best logits, its loss, evaluations)."""
    import numpy as np
    from scipy.optimize import minimize

    best = [loss0, logits.clone()]
    bar = tqdm(total=evals, desc=desc, disable=not progress, leave=False)
    count = [0]

    def f(v):
        count[0] += 1
        bar.update(1)
        sig = mg.sigmas(torch.from_numpy(np.asarray(v, dtype=np.float64)))
        if not MonotoneGrid.monotone(sig):
            return 1e300
        with torch.no_grad():
            loss = problem.loss(params, sig)
        if not math.isfinite(loss):
            return 1e300
        if loss < best[0]:
            best[0], best[1] = loss, torch.as_tensor(np.array(v, dtype=np.float64))
        bar.set_postfix(best=f"{best[0]:.4g}")
        return loss

    x0 = logits.numpy()
    simplex = np.vstack([x0] + [x0 + step * e for e in np.eye(len(x0))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        minimize(f, x0, method="Nelder-Mead",
                 options={"maxfev": evals, "initial_simplex": simplex, "xatol": 1e-4, "fatol": 0.0})
    bar.close()
    return best[1], best[0], count[0]


def fit_s4s_alt(denoiser, noise: Tensor, solver: str = "ddim", nfe: int = 5, window: int = 3, grid: GridSpec = None,
                rounds: int = 3, grid_space: str = "rho", grid_search: str = "joint", grid_iters: int = 40,
                grid_lr: float = 0.05, grid_evals: int = 60, grid_step: float = 0.5,
                teacher: str = "heun", teacher_nfe: int = 199, teacher_grid: GridSpec = None,
                targets: Tensor | None = None, distance: str | Callable = "l2", iters: int = 200,
                round_iters: int | None = None, lr: float = 3e-2, chunk: int | None = None,
                val_noise: Tensor | None = None, val_targets: Tensor | None = None, eval_every: int = 10,
                optimizer: str = "adam", lpips_weights: str | None = None, classifier: str | None = None,
                rho: float = 7.0, free_end: bool = True, radius: float | str | None = None, relax_step: float = 1.0,
                progress: bool = False, reduce: Reduce = alone, **provenance) -> Correction:
    """S4S-Alt (Frankel et al. 2025): alternate S4S's coefficient fit (Adam, see :func:`fit_s4s`)
    with the time grid's (:class:`MonotoneGrid` logits in ``grid_space``). ``grid_search``:
    ``"gradient"`` — ``grid_iters`` Adam steps of learning rate ``grid_lr`` through the differentiable
    grid, θ fixed; ``"joint"`` — the same steps moving θ too (learning rate ``lr``); ``"nelder_mead"``
    — Nelder–Mead with at most ``grid_evals`` student runs, initial simplex of size ``grid_step``.
    Schedule: θ-fit (``iters`` Adam steps), then ``rounds`` × [grid fit, θ-fit (``round_iters``
    steps, default ``iters // 2``, warm-started)]. A grid is accepted only if it lowers the training
    loss. ``radius``: the relaxed objective (:func:`fit_s4s`). ``free_end``: from the second grid fit
    on, the last positive σ is free too (only σ_0 and the final σ = 0 stay), else it keeps the base
    grid's value. The learned grid (ending at σ = 0) is ``provenance["grid"]`` (``grid_learned`` =
    True); pass ``grid=grid_of(correction)`` to :func:`dode.sample`, or use :func:`sample_learned`.
    ``reduce``: a data-parallel fit (:func:`fit_s4s`; the grid too is the same on every process).
    """
    start = time.perf_counter()
    if grid_search not in GRID_SEARCHES:
        raise InvalidChoice(f"unknown grid_search {grid_search!r}; valid: {', '.join(GRID_SEARCHES)}")
    problem = S4SProblem.setup(denoiser, noise, solver, nfe, window, grid, teacher, teacher_nfe, teacher_grid,
                               targets, distance, lpips_weights, classifier, chunk, radius, relax_step, reduce)
    spec, sigmas, form = problem.spec, problem.sigmas, problem.form
    val = validation_pair(denoiser, val_noise, val_targets, teacher, teacher_nfe, teacher_grid)
    base = MonotoneGrid(denoiser, sigmas, grid_space, rho)  # validates the grid space and the base grid
    params = problem.initial_params()
    round_iters = iters // 2 if round_iters is None else round_iters
    history, grid_runs = [], 0
    desc = f"fit s4s-alt {spec.name}@{nfe}"
    with torch.enable_grad():
        params, log = optimise(problem, params, sigmas, iters, lr, val, eval_every, progress, f"{desc} θ 0",
                               optimizer)
    history.append({"phase": "theta", "round": 0, "loss": log["loss_best"], "loss_init": log["loss_init"],
                    **({"val": log["val_best"]} if val else {})})
    loss0 = log["loss_init"]
    current = log["loss_best"]
    for r in range(1, rounds + 1):
        # each round re-bases the grid at the current one; the last positive σ joins from round 2 on,
        # once the coefficients have adapted to a grid with the base grid's end
        mg = MonotoneGrid(denoiser, sigmas, grid_space, rho, free_end and r > 1)
        if mg.n_free == 0:
            continue
        if grid_search in ("gradient", "joint"):
            new_logits, new_params, new_loss, n = grid_gradient(
                problem, params, mg, mg.init.clone(), current, grid_iters, grid_lr, progress, f"{desc} grid {r}",
                lr if grid_search == "joint" else None)
            if new_loss < current:
                params = new_params
        else:
            new_logits, new_loss, n = _nelder_mead(problem, params, mg, mg.init.clone(), current, grid_evals,
                                                   grid_step, progress, f"{desc} grid {r}")
        grid_runs += n
        accepted = new_loss < current
        if accepted:
            sigmas, current = mg.sigmas(new_logits), new_loss
        history.append({"phase": "grid", "round": r, "loss": current, "accepted": bool(accepted),
                        "sigmas": [float(v) for v in sigmas]})
        if round_iters > 0:
            with torch.enable_grad():
                p2, log = optimise(problem, params, sigmas, round_iters, lr, val, eval_every, progress,
                                   f"{desc} θ {r}", optimizer)
            if val is not None or log["loss_best"] <= current:
                params, current = p2, log["loss_best"]
            history.append({"phase": "theta", "round": r, "loss": current, **({"val": log["val_best"]} if val else {})})
    learned = not torch.equal(sigmas, base.base)
    prov = {"method": "s4s_alt", "solver": spec.name, "nfe": nfe, "form": form, "window": window,
            "grid": [float(v) for v in sigmas], "grid_learned": True, "base_grid": grid_record(grid, base.base),
            "base_sigmas": [float(v) for v in base.base], "grid_changed": learned, "sigmas": [float(v) for v in sigmas],
            "model": weights_digest(denoiser),
            "grid_space": grid_space, "free_end": bool(free_end), "rounds": rounds, "grid_search": grid_search,
            **({"grid_iters": grid_iters, "grid_lr": grid_lr} if grid_search != "nelder_mead" else
               {"grid_evals": grid_evals, "grid_step": grid_step}),
            "batch": problem.batch, "distance": problem.distance_name, **problem.relax_record(),
            "iters": iters, "round_iters": round_iters, "lr": lr, **problem.teacher_info, "loss_init": loss0,
            "loss_best": current,
            "history": history, "student_runs": problem.runs, "grid_runs": grid_runs,
            "fit_seconds": time.perf_counter() - start, "dode_version": __version__, **provenance}
    return problem.result(params, prov)
