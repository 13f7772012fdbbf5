"""S4S-Alt (dode.learn.s4s_alt): its grid stays monotone, the loss never rises, the last positive σ
is searched from the second grid search on, and a grid learned by gradient on the exact Gaussian ODE
lowers the error of the final sample."""
import pytest
import torch

import dode
from dode.learn.grids import MonotoneGrid, sample_learned
from dode.learn.s4s import teacher_samples
from dode.core.oracle import GaussianMixture
from dode.errors import InvalidChoice
from dode.learn.grids import grid_of
from dode.learn.s4s_alt import fit_s4s_alt


def _rms(a, b):
    return float((a - b).pow(2).mean().sqrt())


def test_s4s_alt_keeps_the_grid_monotone_and_lowers_the_loss(models, mixture_noise):
    model = models["edm"]
    corr = fit_s4s_alt(model, mixture_noise(48, 15), "ddim", 5, rounds=2, iters=60, round_iters=30, grid_evals=25,
                       teacher_nfe=59)
    p = corr.provenance
    grid = torch.tensor(p["grid"], dtype=torch.float64)
    assert MonotoneGrid.monotone(grid) and grid[-1] == 0 and len(grid) == 6
    assert p["grid_learned"] and p["grid_changed"]
    assert grid[0] == p["base_sigmas"][0] and p["free_end"]  # σ_0 stays; the last positive σ is free by default
    losses = [h["loss"] for h in p["history"]]
    assert all(b <= a for a, b in zip(losses, losses[1:]))
    assert p["loss_best"] < 0.8 * losses[0] < losses[0] < p["loss_init"]  # the grid search paid off
    assert any(h["phase"] == "grid" and h["accepted"] for h in p["history"])
    held_out = mixture_noise(64, 16)
    teacher = teacher_samples(model, held_out, teacher_nfe=59)
    base = _rms(dode.sample(model, held_out, "ddim", 5), teacher)
    assert _rms(sample_learned(model, held_out, corr), teacher) < 0.5 * base


@pytest.mark.parametrize("search", ["gradient", "joint", "nelder_mead"])
def test_s4s_alt_frees_the_last_sigma_from_the_second_grid_search_on(models, mixture_noise, search):
    model, noise = models["edm"], mixture_noise(32, 17)
    kw = dict(iters=20, round_iters=10, grid_evals=15, grid_iters=10, teacher_nfe=59, grid_search=search)
    one = fit_s4s_alt(model, noise, "ddim", 5, rounds=1, **kw).provenance
    assert one["grid"][-2] == one["base_sigmas"][-2] and one["grid"][0] == one["base_sigmas"][0]
    two = fit_s4s_alt(model, noise, "ddim", 5, rounds=2, **kw).provenance
    grids = [h["sigmas"] for h in two["history"] if h["phase"] == "grid"]
    assert grids[0] == one["grid"]  # the same first round
    assert two["grid"][-2] != two["base_sigmas"][-2] and two["grid"][-2] >= model.sigma_min


@pytest.mark.parametrize("solver,nfe,ratio", [("ddim", 5, 0.7), ("dpmpp2m", 5, 0.05)])
def test_a_grid_learned_by_gradient_on_the_exact_gaussian_ode_lowers_the_final_error(mixture_noise, solver, nfe,
                                                                                       ratio):
    torch.manual_seed(3)
    gm = GaussianMixture(torch.randn(1, 1, 3, 3), stds=[0.5])  # one Gaussian: the ODE's flow is exact
    exact = lambda n: gm.exact_solution(n * gm.sigma_max, gm.sigma_max, 0.0)  # noqa: E731
    fit, held_out = mixture_noise(32, 18), mixture_noise(64, 19)
    corr = fit_s4s_alt(gm, fit, solver, nfe, iters=0, round_iters=0, rounds=2, grid_iters=25, targets=exact(fit),
                       grid_search="gradient")  # the grid alone: θ stays 0
    p = corr.provenance
    assert p["grid_search"] == "gradient" and p["grid_changed"] and all(v == 0 for row in corr.theta for v in row)

    def error(grid):
        return _rms(dode.sample(gm, held_out, solver, nfe, grid=grid), exact(held_out))

    assert error(grid_of(corr)) < ratio * error(None)


def test_s4s_alt_refuses_an_unknown_grid_search(models, mixture_noise):
    with pytest.raises(InvalidChoice, match="gradient, joint, nelder_mead"):
        fit_s4s_alt(models["edm"], mixture_noise(4, 1), "ddim", 3, grid_search="bfgs")
