"""S4S (dode.learn.s4s) on the exact float64 Gaussian-mixture oracle: it recovers the coefficients
of a solver of its own family, improves on held-out noise, and its chunks add up to the batch."""
import math

import torch

import dode
from dode.core.forms import Correction
from dode.learn.s4s import fit_s4s, teacher_samples

MODERATE = torch.tensor([5.0, 2.0, 1.0, 0.5, 0.25], dtype=torch.float64)  # a well-conditioned grid (S4S recovery)


def _rms(a, b):
    return float((a - b).pow(2).mean().sqrt())


def _t(theta):
    return torch.tensor(theta, dtype=torch.float64)


def test_s4s_recovers_the_coefficients_of_a_multistep_teacher(models, mixture_noise):
    """DDIM + S4S (window 2) against DPM-Solver++(2M) on the same grid: the multistep coefficients
    θ_k = (1/(2 r_k), −1/(2 r_k)), r_k = h_{k−1}/h_k, are recovered, and so is the solver."""
    model, noise = models["edm"], mixture_noise(40, 7)
    s = MODERATE.tolist()
    want = [[0.0, 0.0]]
    for k in range(1, 4):
        r = math.log(s[k - 1] / s[k]) / math.log(s[k] / s[k + 1])
        want.append([0.5 / r, -0.5 / r])
    target = dode.sample(model, noise, "dpmpp2m", 4, grid=MODERATE)
    corr = fit_s4s(model, noise, "ddim", 4, window=2, grid=MODERATE, targets=target, optimizer="lbfgs", iters=100, lr=1)
    torch.testing.assert_close(_t(corr.theta), _t(want), rtol=0, atol=1e-5)
    held_out = mixture_noise(20, 8)
    torch.testing.assert_close(dode.sample(model, held_out, "ddim", 4, corr, grid=MODERATE),
                               dode.sample(model, held_out, "dpmpp2m", 4, grid=MODERATE), rtol=0, atol=1e-6)
    assert corr.provenance["teacher"] == "given targets" and corr.provenance["loss_best"] < 1e-12


def test_s4s_recovers_planted_coefficients(models, mixture_noise):
    model, noise = models["vp"], mixture_noise(40, 9)
    grid = MODERATE[:4]
    planted = [[0.1, 0.0, 0.0], [-0.2, 0.15, 0.0], [0.05, -0.1, 0.08]]
    targets = dode.sample(model, noise, "ddim", 3, Correction("s4s", planted), grid=grid)
    corr = fit_s4s(model, noise, "ddim", 3, window=3, grid=grid, targets=targets, optimizer="lbfgs", iters=100, lr=1)
    torch.testing.assert_close(_t(corr.theta), _t(planted), rtol=0, atol=1e-5)


def test_s4s_with_adam_improves_on_its_initialisation_on_held_out_noise(models, mixture_noise):
    model = models["edm"]
    corr = fit_s4s(model, mixture_noise(64, 10), "ddim", 5, iters=100, teacher_nfe=59, val_noise=mixture_noise(32, 11),
                   eval_every=20, progress=True)
    p = corr.provenance
    assert p["optimizer"] == "adam" and p["teacher"] == "heun" and p["teacher_nfe"] == 59
    assert p["val_best"] < 0.5 * p["val_init"] and p["loss_best"] < 0.5 * p["loss_init"] and p["fit_seconds"] > 0
    held_out = mixture_noise(64, 12)
    teacher = teacher_samples(model, held_out, teacher_nfe=59)
    base = _rms(dode.sample(model, held_out, "ddim", 5), teacher)
    assert _rms(dode.sample(model, held_out, "ddim", 5, corr), teacher) < 0.7 * base


def test_s4s_chunks_accumulate_the_full_batch_gradient(models, mixture_noise):
    model, noise = models["edm"], mixture_noise(24, 20)
    target = teacher_samples(model, noise, teacher_nfe=19)
    whole = fit_s4s(model, noise, "ddim", 4, iters=5, targets=target)
    chunked = fit_s4s(model, noise, "ddim", 4, iters=5, targets=target, chunk=7)
    torch.testing.assert_close(_t(chunked.theta), _t(whole.theta), rtol=0, atol=1e-9)
