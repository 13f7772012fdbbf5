"""DMN — the optimised time steps of "Accelerating Diffusion Sampling with Optimized Time Steps", Xue,
Liu, Chen, Zhang, Hu, Xie & Li, CVPR 2024 (code: DM-NonUniform): a data-free grid, from the noise
schedule alone, for multistep DPM-Solver++ (the spacing ``dmn`` of :func:`dode.core.schedules.time_grid`).

In log-SNR λ = −log σ (VE σ) with nodes λ_0 < … < λ_N (σ_max … σ_min), step s of DPM-Solver++
integrates ``∫_{λ_s}^{λ_{s+1}} e^λ x̂_0(λ) dλ`` with x̂_0 the Lagrange polynomial through the data
predictions at the last k nodes (k = 1 on the first and last step, 2 on the second and second-to-last,
3 otherwise, the lower-order warm-up and final steps): weights w_{s,j} = ∫ e^λ ℓ_j(λ) dλ
(:func:`step_weights`). With an error ε_n = e(λ_n) in the prediction at node n, e = σ_VP²/α =
σ²/√(1 + σ²) (the code's default; σ_VP, α the VP noise and signal levels), DMN minimises the bound

    B(λ) = Σ_{k=1 steps} |w ε| + Σ_{s<3, k>1} ‖(w_{s,j} ε_{s−j})_j‖₂ + Σ_n |Σ_{s≥3} w_{s,s−n} ε_n|

(:func:`dmn_bound`; the first three steps in quadrature, the later ones summed per node; for more than
7 steps every step is summed per node, the code's ``truncNum`` rule) over the interior λ with the ends
fixed, starting from uniform λ (the authors' choice for pixel-space models).

Deviations: the authors solve it with SciPy's ``trust-constr`` under linear ordering constraints;
here the interior gaps are a softmax of free logits (ordered for every value) minimised by L-BFGS
(torch, restarted at the bound's kinks; within ~0.1 % of a local optimum), keeping the better of the
result and the uniform start. A grid into σ = 0 optimises its positive points and appends σ = 0 (its
last, first-order step into 0 is outside the bound).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

__all__ = ["step_weights", "dmn_bound", "dmn_lambdas", "dmn_sigmas"]


def _moments(h: Tensor, order: int) -> list[Tensor]:
    """I_k(h) = ∫_0^h e^u u^k du for k < order (I_0 = e^h − 1, I_k = h^k e^h − k I_{k−1})."""
    out = [torch.expm1(h)]
    for k in range(1, order):
        out.append(h**k * torch.exp(h) - k * out[-1])
    return out


def step_weights(lam: Tensor, s: int, order: int) -> list[Tensor]:
    """w_{s,j} = ∫_{λ_s}^{λ_{s+1}} e^λ ℓ_j(λ) dλ for the nodes λ_s, λ_{s−1}, … (``order`` of them;
    ℓ_j their Lagrange basis polynomials): DPM-Solver++'s weight of each node's data prediction."""
    offsets = [lam[s - j] - lam[s] for j in range(order)]  # u_j = λ_{s−j} − λ_s ≤ 0
    moments = _moments(lam[s + 1] - lam[s], order)
    weights = []
    for j in range(order):
        coeffs = [torch.ones((), dtype=lam.dtype)]  # ℓ_j(u) = Π_{m≠j} (u − u_m)/(u_j − u_m), as monomials in u
        for m in range(order):
            if m != j:
                scaled = [c / (offsets[j] - offsets[m]) for c in coeffs]
                coeffs = [(scaled[i - 1] if i > 0 else 0) - offsets[m] * (scaled[i] if i < len(scaled) else 0)
                          for i in range(len(scaled) + 1)]
        weights.append(torch.exp(lam[s]) * sum(c * moments[k] for k, c in enumerate(coeffs)))
    return weights


def _order(s: int, steps: int) -> int:
    return 1 if s in (0, steps - 1) else 2 if s in (1, steps - 2) else 3


def dmn_bound(lam: Tensor) -> Tensor:
    """B(λ) of the module docstring for the increasing log-SNR nodes ``lam`` (N + 1 of them)."""
    steps = len(lam) - 1
    sig2 = torch.exp(-2 * lam)  # VE σ²
    err = sig2 / torch.sqrt(1 + sig2)
    trunc = 3 if steps <= 7 else 0
    total = torch.zeros((), dtype=lam.dtype)
    per_node = [torch.zeros((), dtype=lam.dtype) for _ in lam]
    for s in range(steps):
        k = _order(s, steps)
        terms = [w * err[s - j] for j, w in enumerate(step_weights(lam, s, k))]
        if k == 1:
            total = total + terms[0].abs()
        elif s < trunc:
            total = total + torch.sqrt(sum(t * t for t in terms))
        else:
            for j, t in enumerate(terms):
                per_node[s - j] = per_node[s - j] + t
    return total + sum(c.abs() for c in per_node)


@lru_cache(maxsize=64)
def dmn_lambdas(lam_start: float, lam_end: float, steps: int, iters: int = 200, restarts: int = 3) -> tuple[float, ...]:
    """The DMN nodes λ_0 = ``lam_start`` < … < λ_N = ``lam_end`` minimising :func:`dmn_bound`
    (uniform λ where no better one is found; cached: a grid is a pure function of its ends and N).
    Works under a caller's ``torch.inference_mode`` too (the optimisation leaves it)."""
    with torch.inference_mode(False):
        return _optimised(lam_start, lam_end, steps, iters, restarts)


def _optimised(lam_start: float, lam_end: float, steps: int, iters: int, restarts: int) -> tuple[float, ...]:
    a, b = float(lam_start), float(lam_end)
    uniform = torch.linspace(a, b, steps + 1, dtype=torch.float64)
    if steps < 3:  # every step first order into fixed ends: nothing to trade
        return tuple(uniform.tolist())

    def nodes(logits: Tensor) -> Tensor:
        gaps = torch.softmax(torch.cat([torch.zeros(1, dtype=torch.float64), logits]), 0)
        return torch.cat([uniform[:1], a + (b - a) * torch.cumsum(gaps, 0)[:-1], uniform[-1:]])

    logits = torch.zeros(steps - 1, dtype=torch.float64, requires_grad=True)

    def closure() -> Tensor:
        logits.grad = None
        loss = dmn_bound(nodes(logits))
        loss.backward()
        return loss

    with torch.enable_grad():
        for _ in range(restarts):  # the bound has kinks (|·|), where L-BFGS's curvature stalls: restart it
            torch.optim.LBFGS([logits], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe").step(closure)
    best = nodes(logits.detach())
    ok = bool(torch.isfinite(best).all()) and float(dmn_bound(best)) < float(dmn_bound(uniform))
    return tuple((best if ok else uniform).tolist())


def dmn_sigmas(sigma_max: float, sigma_min: float, points: int) -> Tensor:
    """``points`` decreasing σ from σ_max to σ_min on the DMN nodes (λ = −log σ)."""
    lam = dmn_lambdas(-math.log(sigma_max), -math.log(sigma_min), points - 1)
    return torch.exp(-torch.tensor(lam, dtype=torch.float64))
