"""Base ODE solvers of the probability-flow ODE in VE form, dx/dσ = ε(x, σ) = (x − D(x, σ))/σ.

Every solver has one signature, ``solver(path, x, sigmas, plan) -> x_end``: ``path`` is the
:class:`~dode.core.path.ModelPath` (the only way to call the model; it counts NFE and applies the learned
correction hook), ``x`` the state at ``sigmas[0]``, ``sigmas`` a float64 grid, and ``plan[i]`` the
number of model evaluations of step i (the solver's plan for the requested NFE; for singlestep
DPM-Solver also the order of step i, for Heun 2 or, on a last step into σ = 0, 1). The grid holds
one interval per step, except for singlestep DPM-Solver (``Solver.stage_grid``), whose grid holds
every evaluation: step i spans ``plan[i]`` intervals, its inner stages on the points in between.
Exponential integrators (DDIM, DPM-Solver, DEIS) take the same iterates in VE form as in VP form,
since ``x_VE = x_VP/α`` and ``σ_VE = σ_VP/α``. One rule for every solver: a step into σ = 0 is first
order (DDIM with the current output), because a higher-order exponential integrator cannot reach
σ = 0 (log σ = −∞; DEIS's Lagrange weights grow like (σ_min/Δσ)^r there).

Differentiable grids: a grid that requires gradients (S4S-Alt, LD3 learn it) is read as 0-dim tensors
and every σ-dependent coefficient is computed with torch (``torch.log``/``expm1`` on 0-dim tensors, DEIS's table by
:func:`deis_table`), so gradients reach every σ; any other grid is read as Python floats, computed
with ``math`` exactly as before.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Union

import numpy as np
import torch
from torch import Tensor

from dode.errors import InvalidChoice, InvalidNFE
from dode.core.path import ModelPath
from dode.core.schedules import schedule_of

SolverFn = Callable[[ModelPath, Tensor, Tensor, list], Tensor]
PlanFn = Callable[[int, bool], list]
Level = Union[float, Tensor]  # a noise level: a Python float, or a 0-dim tensor of a differentiable grid


def _log(v: Level) -> Level:
    """log v: ``math.log`` of a float, ``torch.log`` of a (differentiable) tensor."""
    return torch.log(v) if isinstance(v, Tensor) else math.log(v)


def _expm1(v: Level) -> Level:
    """e^v − 1: ``math.expm1`` of a float, ``torch.expm1`` of a (differentiable) tensor."""
    return torch.expm1(v) if isinstance(v, Tensor) else math.expm1(v)


def _exp(v: Level) -> Level:
    return torch.exp(v) if isinstance(v, Tensor) else math.exp(v)


def levels(sigmas: Tensor) -> list:
    """The grid's σ as Python floats, or as 0-dim tensors when it requires gradients."""
    return list(sigmas.unbind()) if sigmas.requires_grad else sigmas.tolist()


def ddim_step(x: Tensor, d: Tensor, s: Level, t: Level) -> Tensor:
    """DDIM (Song et al. 2021, Eq. 12) in VE form: x_t = D + σ_t·(x − D)/σ_s; exactly D at σ_t = 0."""
    return d + (t / s) * (x - d)


def _eps(x: Tensor, d: Tensor, s: Level) -> Tensor:
    return (x - d) / s


def _pairs(sigmas: Tensor) -> list[tuple[Level, Level]]:
    s = levels(sigmas)
    return list(zip(s[:-1], s[1:]))


# --------------------------------------------------------------------------------------------- plans
def one_per_step(nfe: int, ends_at_zero: bool) -> list:
    """One evaluation per step: N steps = N NFE."""
    if nfe < 1:
        raise InvalidNFE(f"NFE must be at least 1, got {nfe}")
    return [1] * nfe


def heun_plan(nfe: int, ends_at_zero: bool) -> list:
    """EDM Heun: two evaluations per step, Euler on a final step into σ = 0 (2N − 1 NFE)."""
    if ends_at_zero:
        if nfe < 1 or nfe % 2 == 0:
            raise InvalidNFE(f"heun spends 2N−1 NFE for N steps ending at σ = 0: valid NFE are odd "
                             f"(1, 3, 5, 7, 9, 11, …), got {nfe}")
        return [2] * ((nfe - 1) // 2) + [1]
    if nfe < 2 or nfe % 2:
        raise InvalidNFE(f"heun spends 2N NFE for N steps on a grid not ending at 0: valid NFE are even, got {nfe}")
    return [2] * (nfe // 2)


def singlestep_plan(order: int) -> PlanFn:
    """DPM-Solver's order plan (Lu et al. 2022): order 3 → M = nfe//3 + 1 steps of orders
    [3]*(M−2)+[2,1], [3]*(M−1)+[1] or [3]*(M−1)+[2] for nfe mod 3 = 0, 1, 2; order 2 → [2]*M or
    [2]*(M−1)+[1]. A plan that would end with a multi-stage step into σ = 0 is the plan for nfe − 1
    followed by one first-order step."""

    def plan(nfe: int, ends_at_zero: bool) -> list:
        if nfe < 1:
            raise InvalidNFE(f"NFE must be at least 1, got {nfe}")
        if order == 1:
            p = [1] * nfe
        elif order == 2:
            p = [2] * (nfe // 2) + [1] * (nfe % 2)
        else:
            m = nfe // 3 + 1
            p = {0: [3] * (m - 2) + [2, 1], 1: [3] * (m - 1) + [1], 2: [3] * (m - 1) + [2]}[nfe % 3]
            p = [o for o in p if o]
        if ends_at_zero and p[-1] > 1:
            p = plan(nfe - 1, False) + [1]
        return p

    return plan


# ----------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Solver:
    name: str
    fn: SolverFn
    plan: PlanFn
    teacher: str  # the solver the D-ODE teacher runs (methods.md)
    order: int  # nominal order of convergence
    stage_grid: bool = False  # the grid holds every evaluation (singlestep DPM-Solver), not one point a step
    corrects_back: bool = False  # a corrector redoes the last step when the next evaluation arrives (UniPC)

    def intervals(self, plan: list) -> int:
        """The number of grid intervals a run with ``plan`` needs."""
        return sum(plan) if self.stage_grid else len(plan)

    def explicit_intervals(self, plan: list) -> set[int]:
        """The interval counts an explicit σ grid may have for ``plan``: :meth:`intervals`, or for
        singlestep DPM-Solver also one per step (its stages are then placed at logSNR r)."""
        return {self.intervals(plan), len(plan)} if self.stage_grid else {self.intervals(plan)}

    def plan_for_steps(self, steps: int, ends_at_zero: bool) -> list:
        """The plan of this solver on a grid of ``steps`` intervals (teachers run on given grids)."""
        for nfe in range(steps, 3 * steps + 1):
            try:
                p = self.plan(nfe, ends_at_zero)
            except InvalidNFE:
                continue
            if self.intervals(p) == steps:
                return p
        raise InvalidNFE(f"{self.name} cannot run on a grid of {steps} steps")


SOLVERS: dict[str, Solver] = {}


def register(name: str, teacher: str, order: int, plan: PlanFn = one_per_step):
    def deco(fn: SolverFn) -> SolverFn:
        SOLVERS[name] = Solver(name, fn, plan, teacher, order)
        return fn

    return deco


def first_order_into_zero(path: ModelPath, x: Tensor, s: Level, t: Level) -> Tensor | None:
    """The one rule for a step into σ = 0: DDIM with the current output (None when t > 0)."""
    return ddim_step(x, path(x, s), s, t) if t == 0 else None


def get_solver(name: str) -> Solver:
    if name not in SOLVERS:
        raise InvalidChoice(f"unknown solver {name!r}; valid solvers: {', '.join(SOLVERS)}")
    return SOLVERS[name]


# ------------------------------------------------------------------------------------------ solvers
@register("ddim", teacher="ddim", order=1)
def ddim(path: ModelPath, x: Tensor, sigmas: Tensor, plan: list) -> Tensor:
    """DDIM (Song et al. 2021); in VE form the same update as Euler on dx/dσ = ε. Order 1."""
    for s, t in _pairs(sigmas):
        x = ddim_step(x, path(x, s), s, t)
    return x


SOLVERS["euler"] = Solver("euler", ddim, one_per_step, "euler", 1)  # EDM's Euler ≡ DDIM in VE form


@register("heun", teacher="heun", order=2, plan=heun_plan)
def heun(path: ModelPath, x: Tensor, sigmas: Tensor, plan: list) -> Tensor:
    """EDM Heun (Karras et al. 2022, Alg. 1): Euler predictor, trapezoidal corrector. Order 2.
    D-EDM: λ on the Euler stage with D_i − D'_{i−1} (the previous step's corrector output), on the
    corrector with D'_i − D_i (IIA/S4S forms: the Euler stage pairs with D_{i−1}, see
    ``Form.predictor_history`` in :mod:`dode.core.forms`)."""
    for (s, t), n in zip(_pairs(sigmas), plan):
        d = path(x, s)
        x_euler = ddim_step(x, d, s, t)
        if n == 1:
            x = x_euler
            continue
        d2 = path.correct(x_euler, t, path.denoise(x_euler, t), corrector=True)
        x = x + (t - s) * 0.5 * (_eps(x, d, s) + _eps(x_euler, d2, t))
    return x


IPNDM_COEFFS = ([1.0], [1.5, -0.5], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24])


@register("ipndm", teacher="ipndm", order=4)
def ipndm(path: ModelPath, x: Tensor, sigmas: Tensor, plan: list) -> Tensor:
    """iPNDM (Zhang & Chen 2022): ε̃ = Σ_j c_j ε_{i−j} with Adams–Bashforth weights of order
    min(i+1, 4) (no warm-up NFE), then a DDIM step with ε̃; a step into σ = 0 is first order."""
    eps: list[Tensor] = []
    for s, t in _pairs(sigmas):
        if t == 0:
            return first_order_into_zero(path, x, s, t)
        eps = (eps + [_eps(x, path.denoise(x, s), s)])[-4:]
        e = sum(c * eps[-1 - j] for j, c in enumerate(IPNDM_COEFFS[len(eps) - 1]))
        x = ddim_step(x, path.correct(x, s, x - s * e), s, t)
    return x


def dpm_solver(path: ModelPath, x: Tensor, sigmas: Tensor, plan: list) -> Tensor:
    """Singlestep DPM-Solver-1/2/3 (Lu et al. 2022, Alg. 1 and 2, "dpmsolver" type), noise form,
    λ = −log σ. Step i of order k spans k intervals of the stage grid, s → s_1 (→ s_2) → t, with
    h = λ_t − λ_s and r_j = (λ_{s_j} − λ_s)/h (1/2, or 1/3 and 2/3, on a logSNR stage grid)."""
    grid = levels(sigmas)
    start = 0
    for order in plan:
        points, start = grid[start:start + order + 1], start + order
        s, t = points[0], points[-1]
        if order == 1:
            x = ddim_step(x, path(x, s), s, t)
            continue
        h = _log(s / t)
        e_s = _eps(x, path(x, s), s)
        s1 = points[1]
        r1 = _log(s / s1) / h
        u1 = x - s1 * _expm1(r1 * h) * e_s
        e_1 = _eps(u1, path(u1, s1), s1)
        if order == 2:
            x = x - t * _expm1(h) * e_s - (0.5 / r1) * t * _expm1(h) * (e_1 - e_s)
            continue
        s2 = points[2]
        r2 = _log(s / s2) / h
        phi_22 = _expm1(r2 * h) / (r2 * h) - 1
        u2 = x - s2 * _expm1(r2 * h) * e_s - (r2 / r1) * s2 * phi_22 * (e_1 - e_s)
        e_2 = _eps(u2, path(u2, s2), s2)
        phi_2 = _expm1(h) / h - 1
        x = x - t * _expm1(h) * e_s - (1 / r2) * t * phi_2 * (e_2 - e_s)
    return x


def logsnr_stages(sigmas: Tensor, plan: list) -> Tensor:
    """A stage grid from one point per step: inner stages at r = 1/2 (order 2) or 1/3, 2/3
    (order 3) of each step's logSNR interval (a step into σ = 0 has order 1)."""
    out = []
    for (s, t), order in zip(_pairs(sigmas), plan):
        out.append(s)
        if order > 1:
            out += [s * _exp(-r * _log(s / t)) for r in ((0.5,) if order == 2 else (1 / 3, 2 / 3))]
    out.append(levels(sigmas[-1:])[0])
    return torch.stack(out) if sigmas.requires_grad else torch.tensor(out, dtype=torch.float64)


for _k in (1, 2, 3):
    SOLVERS[f"dpm{_k}"] = Solver(f"dpm{_k}", dpm_solver, singlestep_plan(_k), "ddim", _k, stage_grid=True)


def dpmpp_multistep(order: int) -> SolverFn:
    def solver(path: ModelPath, x: Tensor, sigmas: Tensor, plan: list) -> Tensor:
        """DPM-Solver++(2M/3M) (Lu et al. 2022b), data form: D̃ from the last outputs, then
        x_t = (σ_t/σ_s)·x + (1 − e^{−h})·D̃. Warm-up at lower order; first order into σ = 0."""
        d_hist: list[Tensor] = []
        h_hist: list[float] = []
        for s, t in _pairs(sigmas):
            d_hist = (d_hist + [path.denoise(x, s)])[-order:]
            d = d_hist[-1]
            if t > 0 and len(d_hist) >= 2:
                h = _log(s / t)
                r0 = h_hist[-1] / h
                d1_0 = (d - d_hist[-2]) / r0
                if len(d_hist) == 2:
                    d = d + 0.5 * d1_0
                else:
                    r1 = h_hist[-2] / h
                    d1_1 = (d_hist[-2] - d_hist[-3]) / r1
                    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                    d2 = (d1_0 - d1_1) / (r0 + r1)
                    phi_1 = -_expm1(-h)
                    phi_2 = _expm1(-h) / h + 1
                    phi_3 = (_expm1(-h) + h) / h**2 - 0.5
                    d = d + (phi_2 / phi_1) * d1 - (phi_3 / phi_1) * d2
            if t > 0:
                h_hist.append(_log(s / t))
            x = ddim_step(x, path.correct(x, s, d), s, t)
        return x

    return solver


SOLVERS["dpmpp2m"] = Solver("dpmpp2m", dpmpp_multistep(2), one_per_step, "ddim", 2)
SOLVERS["dpmpp3m"] = Solver("dpmpp3m", dpmpp_multistep(3), one_per_step, "ddim", 3)


def _deis_rows(sig, ts, schedule, order: int, nodes: int) -> list:
    """The rows of :func:`deis_coefficients` on a grid ``sig`` with times ``ts``: numpy float64 arrays
    (float grids), or torch tensors through which gradients flow (differentiable grids)."""
    grad = isinstance(sig, Tensor)
    gx, gw = np.polynomial.legendre.leggauss(nodes)
    if grad:
        gx, gw = torch.from_numpy(gx), torch.from_numpy(gw)
    t_of = schedule.t if grad else (lambda v: schedule.t(torch.tensor(v)).numpy())
    cat = torch.cat if grad else np.concatenate
    plain_sig, plain_ts = (sig.detach().tolist(), ts.detach().tolist()) if grad else (sig, ts)
    table = []
    for i in range(len(sig) - 1):
        lo, hi = sig[i + 1:i + 2], sig[i:i + 1]
        inside = lo[:0]
        if schedule.discrete:  # panel edges at the training steps strictly inside (σ_{i+1}, σ_i)
            knots = schedule.sigma(torch.arange(math.ceil(plain_ts[i + 1]), math.floor(plain_ts[i]) + 1,
                                                dtype=torch.float64))
            knots = knots if grad else knots.numpy()
            inside = knots[(knots > plain_sig[i + 1]) & (knots < plain_sig[i])]
        edges = cat([lo, inside, hi])
        a, b = edges[:-1, None], edges[1:, None]
        s_q = ((b - a) / 2 * gx + (a + b) / 2).ravel()
        w_q = ((b - a) / 2 * gw).ravel()
        t_q = t_of(s_q)
        nodes_t = [ts[i - m] for m in range(min(i, order) + 1)]
        row = []
        for j, tj in enumerate(nodes_t):
            basis = None
            for m, tm in enumerate(nodes_t):
                if m != j:
                    f = (t_q - tm) / (tj - tm)
                    basis = f if basis is None else basis * f
            c = -(w_q if basis is None else w_q * basis).sum()  # integral from σ_i down to σ_{i+1}
            row.append(c if grad else float(c))
        table.append(tuple(row))
    return table


@lru_cache(maxsize=64)
def deis_coefficients(sigmas: tuple, schedule, order: int, nodes: int = 8) -> tuple:
    """C_ij = ∫_{σ_i}^{σ_{i+1}} L_j(t(σ)) dσ, j = 0 … min(i, order), with L_j the Lagrange basis in the
    schedule's time on t_i, t_{i−1}, …: the tAB coefficients of DEIS (Zhang & Chen 2022) in VE form,
    where the exponential-integrator kernel is dσ. Composite Gauss–Legendre in float64, one panel
    per unit of discrete time (t(σ) is smooth within them)."""
    sig = np.asarray(sigmas, dtype=np.float64)
    return tuple(_deis_rows(sig, schedule.t(torch.tensor(sig)).numpy(), schedule, order, nodes))


def deis_table(sigmas: Tensor, schedule, order: int) -> tuple:
    """DEIS's coefficients on ``sigmas``: :func:`deis_coefficients` (floats, cached), or 0-dim tensors
    differentiable in every σ when the grid requires gradients (same quadrature, in torch)."""
    if sigmas.requires_grad:
        return tuple(_deis_rows(sigmas, schedule.t(sigmas), schedule, order, 8))
    return deis_coefficients(tuple(sigmas.tolist()), schedule, order)


def deis(order: int) -> SolverFn:
    def solver(path: ModelPath, x: Tensor, sigmas: Tensor, plan: list) -> Tensor:
        """DEIS tAB-r (Zhang & Chen 2022): x_{i+1} = x_i + Σ_j C_ij ε_{i−j} on the last r+1 outputs
        (fewer while the history is short); coefficients computed once per grid; a step into σ = 0 is
        first order."""
        table = deis_table(sigmas, schedule_of(path.denoiser), order)
        eps: list[Tensor] = []
        for (s, t), coeffs in zip(_pairs(sigmas), table):
            if t == 0:
                return first_order_into_zero(path, x, s, t)
            eps = (eps + [_eps(x, path.denoise(x, s), s)])[-(order + 1):]
            e = sum(c * eps[-1 - j] for j, c in enumerate(coeffs)) / (t - s)
            x = ddim_step(x, path.correct(x, s, x - s * e), s, t)
        return x

    return solver


for _r in (1, 2, 3):
    SOLVERS[f"deis{_r}"] = Solver(f"deis{_r}", deis(_r), one_per_step, f"deis{_r}", _r + 1)


def unipc_estimate(ms: list, sig: list, t: Level, order: int, variant: str, m_t: Tensor | None = None) -> Tensor:
    """The x0 estimate D̃ of one UniPC update (Zhao et al. 2023, Alg. 2 and 3, data form) from σ_s = sig[−1]
    to t, as a DDIM step x_t = ddim_step(x_s, D̃, σ_s, t). With λ = −log σ, h = λ_t − λ_s, nodes r_k =
    (λ_{s_k} − λ_s)/h of the last ``order`` − 1 earlier outputs m_k and D_k = (m_k − m_s)/r_k:
    D̃ = m_s + B(h)/(1 − e^{−h}) · Σ_k ρ_k D_k, B(h) = h (bh1) or 1 − e^{−h} (bh2). Predictor (UniP,
    ``m_t`` None): Σ_k ρ_k r_k^{i−1} = b_i for i < order (ρ = 1/2 at order 2). Corrector (UniC): the
    output ``m_t`` at t joins with r = 1, D = m_t − m_s, i ≤ order (ρ = 1/2 at order 1). b_i = −i!·g_i/B(h),
    g_1 = (e^{−h} − 1)/(−h) − 1, g_{i+1} = g_i/(−h) − 1/(i+1)!."""
    s = sig[-1]
    h = _log(s / t)
    nodes = [_log(s / sig[-1 - k]) / h for k in range(1, order)] + ([1.0] if m_t is not None else [])
    diffs = [(ms[-1 - k] - ms[-1]) / r for k, r in enumerate(nodes[:order - 1], 1)]
    if m_t is not None:
        diffs.append(m_t - ms[-1])
    if not diffs:
        return ms[-1]
    hh, phi_1 = -h, _expm1(-h)
    b_h = hh if variant == "bh1" else phi_1
    b, g, fact = [], phi_1 / hh - 1, 1
    for i in range(1, len(nodes) + 1):
        b.append(g * fact / b_h)
        fact *= i + 1
        g = g / hh - 1 / fact
    if len(nodes) == 1:
        rho = [0.5]
    elif isinstance(h, Tensor):  # a differentiable grid
        r = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in nodes])
        rhs = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in b])
        rho = list(torch.linalg.solve(torch.stack([r**i for i in range(len(nodes))]), rhs).unbind())
    else:
        rho = np.linalg.solve(np.vander(np.asarray(nodes), increasing=True).T, np.asarray(b)).tolist()
    return ms[-1] + (b_h / phi_1) * sum(c * d for c, d in zip(rho, diffs))


def unipc(order: int, variant: str) -> SolverFn:
    def solver(path: ModelPath, x: Tensor, sigmas: Tensor, plan: list) -> Tensor:
        """UniPC-p (Zhao et al. 2023), data form, B(h) of ``variant``: each output m at σ_s first
        corrects the state there (UniC: the last step redone with m, no extra NFE), then a UniP step of
        order min(p, outputs so far) leaves from the corrected state with D̃ (:func:`unipc_estimate`)
        through the hook; a step into σ = 0 is first order."""
        ms: list[Tensor] = []
        sig: list[Level] = []
        x_prev, p_prev = None, 0
        for s, t in _pairs(sigmas):
            m = path.denoise(x, s)
            if x_prev is not None:
                x = ddim_step(x_prev, unipc_estimate(ms, sig, s, p_prev, variant, m), sig[-1], s)
            ms, sig = (ms + [m])[-order:], (sig + [s])[-order:]
            p_prev = min(order, len(ms))
            d = m if t == 0 else unipc_estimate(ms, sig, t, p_prev, variant)
            x_prev, x = x, ddim_step(x, path.correct(x, s, d), s, t)
        return x

    return solver


for _p in (2, 3):
    for _v in ("bh1", "bh2"):
        SOLVERS[f"unipc{_p}_{_v}"] = Solver(f"unipc{_p}_{_v}", unipc(_p, _v), one_per_step, "ddim", _p + 1,
                                             corrects_back=True)
