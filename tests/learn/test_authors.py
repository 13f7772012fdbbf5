"""The authors' variant (distill=dode_authors): teacher targets picked by index from the teacher's own
grid, as in the D-ODE authors' released code (docs/protocol.md)."""
import math

import pytest
import torch

import dode
from dode.core.schedules import time_grid
from dode.errors import InvalidChoice
from dode.learn import fit_authors
from dode.learn.authors import authors_targets


def ddim_states(den, noise, sigmas, prior_vp):
    """DDIM written out by hand in VE form: x ← D + (σ_next/σ)(x − D); every state."""
    x = noise * (math.sqrt(1 + sigmas[0] ** 2) if prior_vp else sigmas[0])
    xs = [x]
    for s, t in zip(sigmas[:-1], sigmas[1:]):
        d = den(x, torch.full((x.shape[0],), s, dtype=torch.float64))
        x = d + (t / s) * (x - d)
        xs.append(x)
    return xs


def test_noise_model_targets_are_the_authors_indices(models, mixture_noise):
    """NFE 5, K = 10 on DDPM's schedule: the teacher starts at index 980 and the targets of the first
    four evaluations sit at indices 780, 580, 380, 180 (τ = index + 1), the last at σ = 0."""
    vp, noise = models["vp"], mixture_noise(8, 1)
    targets, info = authors_targets(vp, noise, "ddim", 5, 10)
    sched = vp.schedule
    idx = list(range(980, -1, -20))  # uniform_torch with 50 steps: ⌊50·m/50·…⌋ = 20m, m = 49 … 0
    sig = sched.sigma(torch.tensor(idx, dtype=torch.float64) + 1).tolist() + [0.0]
    xs = ddim_states(vp, noise, sig, prior_vp=True)
    want = [xs[idx.index(i)] for i in (780, 580, 380, 180)] + [xs[-1]]
    assert info["teacher"] == "ddim" and info["teacher_nfe"] == 50 and info["teacher_scale"] == 10
    for got, w in zip(targets, want):
        torch.testing.assert_close(got, w, rtol=1e-10, atol=1e-10)


def test_edm_heun_targets_count_stages_as_steps(models, mixture_noise):
    """Heun at NFE 5 (3 steps): an Euler teacher with K·NFE = 50 steps on EDM's ρ grid of 50 points
    + σ = 0; evaluation k's target is its state after step 10(k + 1)."""
    edm, noise = models["edm"], mixture_noise(8, 2)
    targets, info = authors_targets(edm, noise, "heun", 5, 10)
    sig = time_grid(edm, 50, "edm").tolist()
    xs = ddim_states(edm, noise, sig, prior_vp=False)
    assert info["teacher"] == "euler" and len(targets) == 5
    for k, got in enumerate(targets):
        torch.testing.assert_close(got, xs[10 * (k + 1)], rtol=1e-10, atol=1e-10)


def test_fit_against_the_authors_targets(models, mixture_noise):
    """Each λ_k is the least-squares fit to the authors' target; the variant is in the provenance."""
    vp, noise = models["vp"], mixture_noise(50, 3)
    corr = fit_authors(vp, noise, "ddim", 5, 10)
    targets, _ = authors_targets(vp, noise, "ddim", 5, 10)
    assert corr.provenance["variant"] == "authors" and corr.provenance["teacher_grid"]["grid"] == "uniform_torch"
    aligned = dode.fit_correction(vp, noise, "ddim", 5, 10)
    assert corr.theta != aligned.theta
    # λ_4 minimises ‖target − x(λ)‖ over the last step: perturbing it only raises the error
    def last_error(theta4):
        c = dode.Correction("dode", [t for t in corr.theta[:4]] + [[theta4]], corr.space)
        return float((dode.sample(vp, noise, "ddim", 5, c) - targets[-1]).pow(2).sum())
    best = corr.theta[4][0]
    assert last_error(best) < min(last_error(best - 0.05), last_error(best + 0.05))


def test_variant_exists_where_the_authors_ran_it(models, mixture_noise):
    with pytest.raises(InvalidChoice, match="no D-heun for discrete-time models; the authors' variant exists for: "
                                            "ddim, dpm2, dpm3, ipndm"):
        authors_targets(models["vp"], mixture_noise(2, 0), "heun", 5, 10)
    with pytest.raises(InvalidChoice, match="no D-dpm3 for continuous"):
        authors_targets(models["edm"], mixture_noise(2, 0), "dpm3", 5, 10)
