"""GITS (dode.learn.gits): the dynamic programme finds the true least-cost path, and on the exact
Gaussian ODE the chosen grid lowers the error of the base solver's final sample; dode's guard falls back
to the base solver where the chosen grid is worse."""
import itertools
import math

import pytest
import torch

import dode
import dode.learn.gits as gits_module
from dode.core.oracle import GaussianMixture
from dode.core.sampling import trajectory
from dode.learn import fit_gits, grid_of, sample_learned
from dode.learn.gits import cost_matrix, fine_grid, path_cost, shortest_path, teacher_trajectory


def _rms(a, b):
    return float((a - b).pow(2).mean().sqrt())


def _brute_force(cost, steps, coeff):
    m = cost.shape[0] - 1
    paths = ([0, *inner, m] for inner in itertools.combinations(range(1, m), steps - 1))
    return min((path_cost(cost, p, coeff), p) for p in paths)


@pytest.fixture(scope="module")
def gaussian():
    torch.manual_seed(4)
    gm = GaussianMixture(torch.randn(1, 1, 3, 3), stds=[0.6])
    return gm, (lambda n: gm.exact_solution(n * gm.sigma_max, gm.sigma_max, 0.0))


@pytest.mark.parametrize("steps,coeff", [(1, 1.15), (2, 1.0), (3, 1.15), (4, 0.8), (5, 1.15)])
def test_the_dp_path_is_the_brute_force_minimum_of_random_costs(steps, coeff):
    g = torch.Generator().manual_seed(steps)
    cost = torch.rand(10, 10, generator=g, dtype=torch.float64).triu(1) + torch.tril(torch.full((10, 10), math.inf), 0)
    path, value = shortest_path(cost, steps, coeff)
    best, best_path = _brute_force(cost, steps, coeff)
    assert path == best_path and value == pytest.approx(best, rel=1e-12)
    assert value == pytest.approx(path_cost(cost, path, coeff), rel=1e-12)


def test_the_dp_path_is_the_brute_force_minimum_of_the_teachers_costs(gaussian, mixture_noise):
    gm, _ = gaussian
    base, fine, factor = fine_grid(gm, "ddim", 4, fine=12)
    assert factor == 3 and len(fine) == 13 and torch.equal(fine[::3], base)  # the base grid lies on the fine one
    states, outputs, nfe = teacher_trajectory(gm, mixture_noise(16, 1), "ipndm", fine)
    assert states.shape == (13, 16, 1, 3, 3) and outputs.shape == (12, 16, 1, 3, 3) and nfe == 12
    cost = cost_matrix(states, outputs, fine)
    i, j = 2, 7  # one entry by hand: a DDIM step from the teacher's state at i against its state at j
    jump = outputs[i] + fine[j] / fine[i] * (states[i] - outputs[i])
    assert float(cost[i, j]) == pytest.approx(float(((jump - states[j]).flatten(1).norm(dim=1) / 3).mean()), rel=1e-12)
    for steps in (3, 4, 5):
        path, value = shortest_path(cost, steps, 1.15)
        best, best_path = _brute_force(cost, steps, 1.15)
        assert path == best_path and value == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("nfe", [4, 5])
def test_gits_grid_lowers_the_error_on_the_exact_gaussian_ode(gaussian, mixture_noise, nfe):
    gm, exact = gaussian
    fit, held_out = mixture_noise(32, 40), mixture_noise(64, 41)
    corr = fit_gits(gm, fit, "ddim", nfe)
    p = corr.provenance
    assert p["method"] == "gits" and p["grid_learned"] and p["grid_changed"] and p["cost_best"] < p["cost_base"]
    assert p["guard"] and p["kept"] and not p["fallback"] and p["distance_fit"] < p["distance_base"]
    assert corr.theta == [[0.0]] * nfe and p["fine"] == 60 and p["batch"] == 32
    learned = sample_learned(gm, held_out, corr)
    assert torch.equal(learned, dode.sample(gm, held_out, "ddim", nfe, grid=grid_of(corr)))  # the base solver
    assert _rms(learned, exact(held_out)) < 0.6 * _rms(dode.sample(gm, held_out, "ddim", nfe), exact(held_out))


@pytest.mark.parametrize("model,solver,nfe,points",
                         [("edm", "ddim", 4, 5), ("vp", "ipndm", 5, 6), ("edm", "heun", 5, 4), ("vp", "dpm3", 6, 7)])
def test_gits_grid_is_strictly_decreasing_with_the_plans_points_and_nfe(models, mixture_noise, model, solver, nfe,
                                                                        points):
    den = models[model]
    corr = fit_gits(den, mixture_noise(8, 3), solver, nfe, fine=24, guard=False)
    grid, base = grid_of(corr), torch.tensor(corr.provenance["base_sigmas"], dtype=torch.float64)
    assert len(grid) == points and bool((grid[1:] < grid[:-1]).all())
    assert grid[0] == base[0] and grid[-1] == base[-1]  # the ends of the base grid stay
    _, calls = trajectory(den, mixture_noise(4, 5), solver, nfe, corr, grid)
    assert len(calls) == nfe


def test_gits_refuses_an_unknown_metric_and_a_stage_grid_teacher(models, mixture_noise):
    with pytest.raises(dode.errors.InvalidChoice, match="unknown GITS metric"):
        fit_gits(models["edm"], mixture_noise(4, 6), "ddim", 4, fine=8, metric="dev")
    with pytest.raises(dode.errors.InvalidChoice, match="one grid point per step"):
        fit_gits(models["edm"], mixture_noise(4, 6), "ddim", 4, fine=8, teacher="dpm3")


def _squeezed(cost, steps, coeff):
    """A deliberately bad path: one jump to the last few fine points, then single fine steps."""
    m = cost.shape[0] - 1
    path = [0, *range(m - steps + 1, m + 1)]
    return path, path_cost(cost, path, coeff)


@pytest.mark.parametrize("model,solver,nfe", [("edm", "ddim", 4), ("vp", "ipndm", 5)])
def test_guard_falls_back_to_the_base_solver_bit_for_bit_when_the_grid_is_worse(models, mixture_noise, monkeypatch,
                                                                                 model, solver, nfe):
    den, fit, held_out = models[model], mixture_noise(16, 6), mixture_noise(16, 7)
    monkeypatch.setattr(gits_module, "shortest_path", _squeezed)
    corr = fit_gits(den, fit, solver, nfe, fine=24)
    p = corr.provenance
    assert p["guard"] and p["fallback"] and not p["kept"] and p["distance_fit"] >= p["distance_base"] > 0
    assert not p["grid_learned"] and p["grid"] == p["base_sigmas"] and p["fit_grid"] != p["base_sigmas"]
    assert corr.theta == [[0.0]] * nfe and grid_of(corr) is None  # dode-run samples on the solver's own grid
    base = dode.sample(den, held_out, solver, nfe)
    assert torch.equal(sample_learned(den, held_out, corr), base)
    assert torch.equal(dode.sample(den, held_out, solver, nfe, corr), base)
    kept = fit_gits(den, fit, solver, nfe, fine=24, guard=False)  # without the guard the bad grid stays
    assert kept.provenance["grid_learned"] and kept.provenance["grid"] == p["fit_grid"]
    assert "guard" not in kept.provenance
    assert not torch.equal(sample_learned(den, held_out, kept), base)
