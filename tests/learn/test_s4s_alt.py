"""S4S-Alt (dode.learn.s4s_alt): its grid stays monotone, the loss never rises, and the last
positive σ is searched from the second grid search on."""
import torch

import dode
from dode.learn.grids import MonotoneGrid, sample_learned
from dode.learn.s4s import teacher_samples
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


def test_s4s_alt_frees_the_last_sigma_from_the_second_grid_search_on(models, mixture_noise):
    model, noise = models["edm"], mixture_noise(32, 17)
    kw = dict(iters=20, round_iters=10, grid_evals=15, teacher_nfe=59)
    one = fit_s4s_alt(model, noise, "ddim", 5, rounds=1, **kw).provenance
    assert one["grid"][-2] == one["base_sigmas"][-2] and one["grid"][0] == one["base_sigmas"][0]
    two = fit_s4s_alt(model, noise, "ddim", 5, rounds=2, **kw).provenance
    grids = [h["sigmas"] for h in two["history"] if h["phase"] == "grid"]
    assert grids[0] == one["grid"]  # the same first round
    assert two["grid"][-2] != two["base_sigmas"][-2] and two["grid"][-2] >= model.sigma_min
