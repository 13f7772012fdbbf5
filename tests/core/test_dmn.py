"""DMN's optimised steps (dode.core.dmn, spacing ``dmn``): the step weights integrate e^λ times every
polynomial of the step's order exactly, the bound matches its hand-written formula, and the
optimised grid lowers it."""
import math

import pytest
import torch

from dode.core.dmn import dmn_bound, dmn_lambdas, step_weights
from dode.core.oracle import GaussianMixture
from dode.core.schedules import time_grid


def _h0(h):
    return math.expm1(h)


def _h1(h):
    return math.exp(h) * h - _h0(h)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_step_weights_integrate_polynomials_of_the_steps_order_exactly(order):
    lam = torch.tensor([-2.0, -1.2, -0.1, 0.7, 1.5], dtype=torch.float64)
    s = 3
    w = step_weights(lam, s, order)
    a, b = float(lam[s]), float(lam[s + 1])
    grid = torch.linspace(a, b, 20001, dtype=torch.float64)
    for power in range(order):  # Σ_j w_j p(λ_{s−j}) = ∫ e^λ p(λ) dλ for p = λ^power (trapezoid reference)
        exact = float(torch.trapezoid(grid.exp() * grid**power, grid))
        quad = sum(float(wj) * float(lam[s - j]) ** power for j, wj in enumerate(w))
        assert quad == pytest.approx(exact, rel=1e-7, abs=1e-9)


def test_the_bound_of_three_steps_is_its_hand_written_formula():
    lam = [-3.0, -0.5, 1.0, 5.0]
    err = [math.exp(-2 * v) / math.sqrt(1 + math.exp(-2 * v)) for v in lam]  # σ²/√(1 + σ²), σ = e^{−λ}
    h = [b - a for a, b in zip(lam, lam[1:])]
    first = math.exp(lam[0]) * _h0(h[0]) * err[0]  # order 1
    w0 = -math.exp(lam[1]) * _h1(h[1]) / h[0]  # order 2 (step 1 < 3: in quadrature)
    w1 = math.exp(lam[1]) * (_h1(h[1]) + h[0] * _h0(h[1])) / h[0]
    second = math.hypot(w0 * err[0], w1 * err[1])
    last = math.exp(lam[2]) * _h0(h[2]) * err[2]  # order 1
    got = float(dmn_bound(torch.tensor(lam, dtype=torch.float64)))
    assert got == pytest.approx(abs(first) + second + abs(last), rel=1e-12)


@pytest.mark.parametrize("steps", [4, 5, 6, 9])
def test_the_dmn_grid_lowers_the_bound_and_keeps_its_ends(steps):
    a, b = -math.log(80.0), -math.log(0.002)
    lam = torch.tensor(dmn_lambdas(a, b, steps), dtype=torch.float64)
    uniform = torch.linspace(a, b, steps + 1, dtype=torch.float64)
    assert len(lam) == steps + 1 and bool((lam[1:] > lam[:-1]).all())
    assert float(lam[0]) == a and float(lam[-1]) == b
    assert float(dmn_bound(lam)) < 0.5 * float(dmn_bound(uniform))
    g = torch.Generator().manual_seed(steps)  # near a (local) optimum of the kinked bound: small moves gain < 1 %
    for _ in range(20):
        moved = lam.clone()
        moved[1:-1] += 1e-3 * torch.randn(steps - 1, generator=g, dtype=torch.float64)
        assert float(dmn_bound(moved)) > 0.99 * float(dmn_bound(lam))


def test_dmn_is_a_spacing_of_time_grid():
    gm = GaussianMixture(torch.zeros(1, 1, 2, 2), stds=[0.5])
    sig = time_grid(gm, 5, "dmn")
    lam = dmn_lambdas(-math.log(80.0), -math.log(0.002), 4)  # into σ = 0: DMN on the 5 positive points
    assert sig[-1] == 0 and torch.allclose(sig[:-1], torch.exp(-torch.tensor(lam, dtype=torch.float64)), rtol=1e-12)
    end = time_grid(gm, 5, "dmn", endpoint="sigma_min")
    assert len(end) == 6 and float(end[0]) == pytest.approx(80.0) and float(end[-1]) == pytest.approx(0.002)


def test_the_dmn_grid_is_the_same_under_a_callers_inference_mode():
    """dode.sample(..., grid="dmn") inside torch.inference_mode(): the optimisation leaves it (it used to fail
    with "element 0 of tensors does not require grad"); the nodes equal those computed outside."""
    with torch.inference_mode():
        inside = dmn_lambdas(-4.3, 6.1, 7)
    dmn_lambdas.cache_clear()
    assert dmn_lambdas(-4.3, 6.1, 7) == inside
