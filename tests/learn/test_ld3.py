"""LD3 (dode.learn.ld3): only the grid is learned — the fit is the base solver bit for bit on its
learned grid — and on the exact Gaussian ODE that grid lowers the error of the final sample."""
import pytest
import torch

import dode
from dode.core.oracle import GaussianMixture
from dode.learn import fit_ld3, grid_of, sample_learned
from dode.learn.grids import MonotoneGrid
from dode.learn.relaxed import ld3_radius


def _rms(a, b):
    return float((a - b).pow(2).mean().sqrt())


@pytest.mark.parametrize("solver,nfe,ratio", [("ddim", 5, 0.75), ("ipndm", 5, 0.1)])
def test_ld3_grid_lowers_the_error_on_the_exact_gaussian_ode(mixture_noise, solver, nfe, ratio):
    torch.manual_seed(4)
    gm = GaussianMixture(torch.randn(1, 1, 3, 3), stds=[0.6])
    exact = lambda n: gm.exact_solution(n * gm.sigma_max, gm.sigma_max, 0.0)  # noqa: E731
    fit, held_out = mixture_noise(32, 40), mixture_noise(64, 41)
    corr = fit_ld3(gm, fit, solver, nfe, targets=exact(fit), iters=40, radius=0.0)
    p = corr.provenance
    assert p["method"] == "ld3" and p["grid_learned"] and p["grid_changed"] and p["loss_best"] < p["loss_init"]
    grid = grid_of(corr)
    assert MonotoneGrid.monotone(grid[:-1]) and grid[-1] == 0 and grid[0] == p["base_sigmas"][0]
    learned = sample_learned(gm, held_out, corr)
    assert torch.equal(learned, dode.sample(gm, held_out, solver, nfe, grid=grid))  # the base solver, bit for bit
    assert _rms(learned, exact(held_out)) < ratio * _rms(dode.sample(gm, held_out, solver, nfe), exact(held_out))


def test_ld3_defaults_to_ld3s_radius_against_a_teacher(models, mixture_noise):
    corr = fit_ld3(models["vp"], mixture_noise(16, 42), "ddim", 4, iters=5, teacher_nfe=39)
    p = corr.provenance
    assert p["radius"] == pytest.approx(ld3_radius((1, 3, 3), 4)) and p["teacher"] == "heun"
    assert p["relax_max_offset"] <= p["radius"] + 1e-12 and p["fit_seconds"] > 0
    assert corr.theta == [[0.0]] * 4 and p["loss_best"] <= p["loss_init"]
