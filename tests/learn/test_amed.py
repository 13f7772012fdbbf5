"""AMED-Plugin (dode.learn.amed): r = 1/2, c = 1 is the base solver on the logSNR-midpoint grid bit for bit;
any r, c (and the AFS) is the authors' Euler plugin step written out by hand; the fit lowers the error of
the final sample on the exact Gaussian ODE; NFE as the authors count it; lambdas.json round trip; dode's
guard falls back to the base solver where the fit is worse (dode-run: tests/runner/test_methods.py)."""
import math

import pytest
import torch

import dode
from dode.core.forms import Correction
from dode.core.oracle import GaussianMixture
from dode.core.path import ModelPath
from dode.core.sampling import run_solver, sample
from dode.core.solvers import get_solver, logsnr_stages
from dode.learn import fit_amed, grid_of, sample_learned
from dode.learn.amed import amed_correction, amed_steps


def _rms(a, b):
    return float((a - b).pow(2).mean().sqrt())


def _counted(den):
    """(denoiser that counts its network calls, counter)."""
    calls = [0]

    def call(x, sigma):
        calls[0] += 1
        return den(x, sigma)

    call.sigma_min, call.sigma_max, call.schedule, call.default_grid = (den.sigma_min, den.sigma_max, den.schedule,
                                                                          den.default_grid)
    return call, calls


@pytest.mark.parametrize("solver", ["ddim", "ipndm"])
def test_half_ratio_unit_scale_is_the_base_solver_on_logsnr_midpoints_bit_for_bit(models, mixture_noise, solver):
    gm, noise = models["edm"], mixture_noise(8, 50)
    corr = amed_correction(gm, solver, 6, [0.5] * 3, [1.0] * 3)
    base = torch.tensor(corr.provenance["base_sigmas"], dtype=torch.float64)
    assert float(base[-1]) == pytest.approx(gm.sigma_min, rel=1e-12) and corr.afs is None and len(base) == 4  # 3 steps to σ_min, no AFS
    midpoints = logsnr_stages(base, [2, 2, 2])
    assert torch.equal(grid_of(corr), midpoints)
    assert torch.equal(sample_learned(gm, noise, corr), sample(gm, noise, solver, 6, grid=midpoints))


def test_any_ratio_scale_and_afs_is_the_authors_euler_plugin(models, mixture_noise):
    """Their Euler plugin: x_s = x + (s − t)ε(x, t), x' = x_s + c(t' − s)ε(x_s, s), s = t'^r t^{1−r}; AFS:
    ε(x_T, σ_0) = x_T/√(1 + σ_0²) without a network call."""
    gm, noise = models["edm"], mixture_noise(8, 51)
    ratios, scales = [0.3, 0.6, 0.45], [1.01, 0.995, 1.02]
    corr = amed_correction(gm, "ddim", 5, ratios, scales)
    t = corr.provenance["base_sigmas"]
    x = noise * t[0]
    for n, (r, c) in enumerate(zip(ratios, scales)):
        s = t[n + 1] ** r * t[n] ** (1 - r)
        e = x / math.sqrt(1 + t[0] ** 2) if n == 0 else (x - gm(x, t[n])) / t[n]
        x_s = x + (s - t[n]) * e
        x = x_s + c * (t[n + 1] - s) * (x_s - gm(x_s, s)) / s
    den, calls = _counted(gm)
    out = sample_learned(den, noise, corr)
    assert calls[0] == 5 and corr.afs == t[0]  # NFE 5 = 3 steps with midpoints, AFS on the first
    assert torch.allclose(out, x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("nfe", [1, 4, 5, 8])
def test_nfe_spent_is_the_requested_nfe(models, mixture_noise, nfe):
    steps, afs = amed_steps(nfe)
    assert 2 * steps - afs == nfe
    den, calls = _counted(models["vp"])
    corr = amed_correction(models["vp"], "ddim", nfe, [0.4] * steps, [1.0] * steps)
    path = ModelPath(den, corr)
    assert len(corr.theta) == nfe
    run_solver(path, get_solver("ddim"), mixture_noise(4, 52), grid_of(corr), [1] * nfe)
    assert calls[0] == nfe == path.nfe


@pytest.mark.parametrize("solver,nfe,ratio", [("ddim", 4, 0.8), ("ddim", 5, 0.3), ("ipndm", 5, 0.1)])
def test_fit_lowers_the_error_on_the_exact_gaussian_ode(mixture_noise, solver, nfe, ratio):
    """Against r = 1/2, c = 1 and against the base solver at the same NFE (held-out noises)."""
    torch.manual_seed(4)
    gm = GaussianMixture(torch.randn(1, 1, 3, 3), stds=[0.6])
    exact = lambda n, s=0.0: gm.exact_solution(n * gm.sigma_max, gm.sigma_max, s)  # noqa: E731
    fit, held_out = mixture_noise(32, 53), mixture_noise(64, 54)
    corr = fit_amed(gm, fit, solver, nfe, targets=lambda s: exact(fit, s), iters=30, scale_dir=0.1)
    p = corr.provenance
    assert all(b <= i for b, i in zip(p["loss_best"], p["loss_init"])) and p["ratios"] != [0.5] * len(p["ratios"])
    steps = len(p["ratios"])
    plain = amed_correction(gm, solver, nfe, [0.5] * steps, [1.0] * steps)  # r = 1/2, c = 1
    learned, truth = sample_learned(gm, held_out, corr), exact(held_out)
    assert _rms(learned, truth) < min(ratio, 0.6) * _rms(sample_learned(gm, held_out, plain), truth)
    assert _rms(learned, truth) < ratio * _rms(dode.sample(gm, held_out, solver, nfe), truth)


def test_the_default_teacher_is_the_base_solver_itself(models, mixture_noise):
    """As the authors' AMED-Plugin setting (sampler_tea = sampler_stu): teacher=None fits exactly what the
    base solver named as teacher fits, and not what Heun does."""
    gm, noise = models["vp"], mixture_noise(16, 56)
    own = fit_amed(gm, noise, "ipndm", 4, iters=3, scale=4, guard=False)
    named = fit_amed(gm, noise, "ipndm", 4, iters=3, teacher="ipndm", scale=4, guard=False)
    heun = fit_amed(gm, noise, "ipndm", 4, iters=3, teacher="heun", scale=4, guard=False)
    assert own.provenance["teacher"] == "ipndm" and own.theta == named.theta and own.theta != heun.theta


def test_lambdas_json_round_trip_replays_the_same_samples(models, mixture_noise, tmp_path):
    gm, noise = models["vp"], mixture_noise(16, 55)
    corr = fit_amed(gm, noise, "ddim", 3, iters=3, teacher="ddim", scale=4, guard=False)
    back = Correction.load(corr.save(tmp_path / "lambdas.json"))
    assert back.afs == corr.afs is not None and back.form == "amed" and back.theta == corr.theta
    assert back.provenance["teacher"] == "ddim" and back.provenance["fit_seconds"] > 0
    assert torch.equal(sample_learned(gm, noise, back), sample_learned(gm, noise, corr))
    plain = Correction.from_lambdas([0.1, 0.2])
    assert "afs" not in plain.to_dict() and Correction.from_dict(plain.to_dict()).afs is None



@pytest.mark.parametrize("nfe", [4, 5])
def test_guard_keeps_a_better_fit_and_falls_back_to_the_base_solver_bit_for_bit(models, mixture_noise, nfe):
    """On the VP mixture, r = 1/2, c = 1 (no Adam step) at NFE/2 steps is worse than DDIM at NFE steps on
    the fit batch; 20 Adam steps per step are better."""
    den, fit, held_out = models["vp"], mixture_noise(16, 6), mixture_noise(16, 7)
    good = fit_amed(den, fit, "ddim", nfe, iters=20, teacher="heun", scale=8)
    p = good.provenance
    assert p["kept"] and not p["fallback"] and p["distance_fit"] < p["distance_base"] and good.form == "amed"
    bad = fit_amed(den, fit, "ddim", nfe, iters=0, teacher="heun", scale=8)
    q = bad.provenance
    assert q["fallback"] and not q["kept"] and q["distance_fit"] >= q["distance_base"] == p["distance_base"]
    assert bad.afs is None and bad.theta == [[0.0]] * nfe and not q["grid_learned"] and grid_of(bad) is None
    assert q["fit_afs"] == (nfe % 2 == 1) and q["fit_grid"] != q["grid"] and q["ratios"] == [0.5] * len(q["ratios"])
    base = dode.sample(den, held_out, "ddim", nfe)
    assert torch.equal(sample_learned(den, held_out, bad), base)
    assert torch.equal(sample(den, held_out, "ddim", nfe, bad), base)
    unguarded = fit_amed(den, fit, "ddim", nfe, iters=0, teacher="heun", scale=8, guard=False)
    assert unguarded.form == "amed" and "guard" not in unguarded.provenance
    assert (unguarded.afs is not None) == (nfe % 2 == 1)
    assert not torch.equal(sample_learned(den, held_out, unguarded), base)
