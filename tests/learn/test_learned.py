"""IIA and S4S / S4S-Alt on the correction hook (dode.learn), on the exact float64 Gaussian-mixture
oracle: the new forms act as their papers say, IIA's targets are the fine solver from the student's
own step start and its fit lowers the per-step error, S4S recovers the coefficients of a solver of its
own family and improves on held-out noise, S4S-Alt keeps its grid monotone and lowers the loss, and
saved fits reload and reproduce samples bit for bit."""
import json
import math

import pytest
import torch

import dode
from dode.errors import UserError
from dode.learned import (FeatureDistance, FineTargets, MonotoneGrid, fit_iia, fit_s4s, fit_s4s_alt, get_distance,
                          grid_of, sample_learned, step_errors, teacher_samples)
from dode.core.oracle import GaussianMixture
from dode.core.forms import FORMS, Correction
from dode.core.sampling import solver_grid, trajectory
from conftest import mixture_noise as _noise

MODERATE = torch.tensor([5.0, 2.0, 1.0, 0.5, 0.25], dtype=torch.float64)  # a well-conditioned grid (S4S recovery)



def _rms(a, b):
    return float((a - b).pow(2).mean().sqrt())


def _t(theta):
    return torch.tensor(theta, dtype=torch.float64)


# ------------------------------------------------------------------------------------------- forms
def test_forms_are_registered_in_x0_space():
    for form in ("iia", "biia", "s4s", "s4s2", "s4s4"):
        assert form in FORMS and FORMS[form].space == "x0"
        assert Correction(form).space == "x0"


def test_biia_on_heuns_corrector_reweights_the_two_heun_terms(models):
    """BIIA-EDM: θ on the corrector turns Heun's (½, ½) into (½ − θ/2, ½ + θ/2)."""
    model, noise, c = models["edm"], _noise(6, 0), 0.3
    spec, sig, plan = solver_grid(model, "heun", 3)  # one Heun step, then Euler into σ = 0
    s, t = float(sig[0]), float(sig[1])
    x = noise * s
    d = model(x, torch.full((6,), s, dtype=torch.float64))
    e1 = (x - d) / s
    xe = x + (t - s) * e1
    e2 = (xe - model(xe, torch.full((6,), t, dtype=torch.float64))) / t
    x1 = x + (t - s) * ((0.5 - c / 2) * e1 + (0.5 + c / 2) * e2)
    want = model(x1, torch.full((6,), t, dtype=torch.float64))  # the final Euler step into 0 is D itself
    got = dode.sample(model, noise, "heun", 3, Correction("biia", [[0.0], [c], [0.0]]))
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_iia_columns_are_delta_x0_and_delta_eps(models):
    """IIA-DDIM: d̃ = d + θ1 (d_k − d_{k−1}) − θ2 σ_k (ε_k − ε_{k−1}); none at the first evaluation."""
    model, noise = models["vp"], _noise(5, 1)
    _, calls = trajectory(model, noise, "ddim", 3)
    (s0, x0, d0), (s1, x1, d1) = calls[0], calls[1]
    d_tilde = d1 + 0.2 * (d1 - d0) - 0.1 * s1 * ((x1 - d1) / s1 - (x0 - d0) / s0)
    spec, sig, _ = solver_grid(model, "ddim", 3)
    s2 = float(sig[2])
    want = d_tilde + (s2 / s1) * (x1 - d_tilde)
    _, calls_c = trajectory(model, noise, "ddim", 3, Correction("iia", [[5.0, 5.0], [0.2, 0.1], [0.0, 0.0]]))
    torch.testing.assert_close(calls_c[2][1], want, rtol=0, atol=1e-12)  # θ_0 is unused: no prior output


# --------------------------------------------------------------------------------------------- IIA
def test_fine_targets_converge_to_the_exact_flow():
    gm = GaussianMixture(torch.zeros(1, 1, 3, 3) + 0.3, stds=[0.7])
    x = _noise(8, 2) * 5.0
    exact = gm.exact_solution(x, 5.0, 0.5)
    errs = [_rms(FineTargets(gm, "ddim", m)(0, x, 5.0, 0.5), exact) for m in (1, 10, 40)]
    assert errs[1] < errs[0] / 5 and errs[2] < errs[1] / 3
    heun = FineTargets(gm, "heun", 10)
    h10, h40 = _rms(heun(0, x, 5.0, 0.5), exact), _rms(FineTargets(gm, "heun", 40)(0, x, 5.0, 0.5), exact)
    assert h10 < errs[1] / 5 and h40 < h10 / 12 and heun.nfe == 20  # second order; 2 NFE per sub-step


def test_iia_targets_start_from_the_students_step_start_on_heun(models, monkeypatch):
    """Both stages of a Heun step are fitted to the fine flow over the step, from the step's start."""
    model, noise = models["edm"], _noise(30, 3)
    seen = []
    fine = FineTargets.fine
    monkeypatch.setattr(FineTargets, "fine", lambda self, x, a, b: seen.append((a, b, x)) or fine(self, x, a, b))
    corr = fit_iia(model, noise, "heun", 7, substeps=4)
    _, sig, _ = solver_grid(model, "heun", 7)
    assert [(a, b) for a, b, _ in seen] == list(zip(sig.tolist()[:-1], sig.tolist()[1:]))  # once per step
    _, calls = trajectory(model, noise, "heun", 7, corr)
    starts = [calls[i][1] for i in (0, 2, 4, 6)]  # the Euler-stage inputs are the step starts
    for (_, _, x), want in zip(seen, starts):
        torch.testing.assert_close(x, want, rtol=0, atol=1e-12)
    assert corr.provenance["target_nfe"] == 3 * 8 + 7 and corr.provenance["fine_solver"] == "heun"


@pytest.mark.parametrize("kind,solver,nfe,form", [("edm", "ddim", 6, "iia"), ("edm", "heun", 7, "iia"),
                                                  ("edm", "heun", 7, "biia"), ("vp", "ddim", 6, "iia"),
                                                  ("vp", "dpm2", 6, "iia")])
def test_iia_reduces_the_per_step_error_on_held_out_noise(kind, solver, nfe, form, models):
    model = models[kind]
    corr = fit_iia(model, _noise(60, 4), solver, nfe, substeps=8, form=form, seeds="0-59")
    assert corr.form == form and corr.theta[0] == [0.0] * len(corr.theta[0])  # no output before the first
    held_out = _noise(60, 5)
    base = step_errors(model, held_out, solver, nfe, None, substeps=8)
    fitted = step_errors(model, held_out, solver, nfe, corr, substeps=8)
    assert fitted.sum() < 0.7 * base.sum(), (base, fitted)
    teacher = teacher_samples(model, held_out)
    base_final = _rms(dode.sample(model, held_out, solver, nfe), teacher)
    assert _rms(dode.sample(model, held_out, solver, nfe, corr), teacher) < base_final
    for key in ("fit_seconds", "substeps", "target_nfe", "solver", "nfe", "batch", "dode_version"):
        assert key in corr.provenance
    assert corr.provenance["method"] == "iia" and corr.provenance["seeds"] == "0-59"


# --------------------------------------------------------------------------------------------- S4S
def test_gradients_flow_through_dode_sample(models):
    theta = torch.zeros(5, 3, dtype=torch.float64, requires_grad=True)
    corr = Correction("s4s", [list(row.unbind()) for row in theta])
    x = dode.sample(models["edm"], _noise(4, 6), "ddim", 5, corr)
    x.pow(2).sum().backward()
    assert theta.grad is not None and bool((theta.grad[1:, :2] != 0).all()) and bool((theta.grad[2:] != 0).all())
    assert theta.grad[0, 1:].abs().sum() == 0 and theta.grad[1, 2] == 0  # no d_{k−1}, d_{k−2} yet


def test_s4s_recovers_the_coefficients_of_a_multistep_teacher(models):
    """DDIM + S4S (window 2) against DPM-Solver++(2M) on the same grid: the multistep coefficients
    θ_k = (1/(2 r_k), −1/(2 r_k)), r_k = h_{k−1}/h_k, are recovered, and so is the solver."""
    model, noise = models["edm"], _noise(40, 7)
    s = MODERATE.tolist()
    want = [[0.0, 0.0]]
    for k in range(1, 4):
        r = math.log(s[k - 1] / s[k]) / math.log(s[k] / s[k + 1])
        want.append([0.5 / r, -0.5 / r])
    target = dode.sample(model, noise, "dpmpp2m", 4, grid=MODERATE)
    corr = fit_s4s(model, noise, "ddim", 4, window=2, grid=MODERATE, targets=target, optimizer="lbfgs", iters=100, lr=1)
    torch.testing.assert_close(_t(corr.theta), _t(want), rtol=0, atol=1e-5)
    held_out = _noise(20, 8)
    torch.testing.assert_close(dode.sample(model, held_out, "ddim", 4, corr, grid=MODERATE),
                               dode.sample(model, held_out, "dpmpp2m", 4, grid=MODERATE), rtol=0, atol=1e-6)
    assert corr.provenance["teacher"] == "given targets" and corr.provenance["loss_best"] < 1e-12


def test_s4s_recovers_planted_coefficients(models):
    model, noise = models["vp"], _noise(40, 9)
    grid = MODERATE[:4]
    planted = [[0.1, 0.0, 0.0], [-0.2, 0.15, 0.0], [0.05, -0.1, 0.08]]
    targets = dode.sample(model, noise, "ddim", 3, Correction("s4s", planted), grid=grid)
    corr = fit_s4s(model, noise, "ddim", 3, window=3, grid=grid, targets=targets, optimizer="lbfgs", iters=100, lr=1)
    torch.testing.assert_close(_t(corr.theta), _t(planted), rtol=0, atol=1e-5)


def test_s4s_with_adam_improves_on_its_initialisation_on_held_out_noise(models):
    model = models["edm"]
    corr = fit_s4s(model, _noise(64, 10), "ddim", 5, iters=100, teacher_nfe=59, val_noise=_noise(32, 11),
                   eval_every=20, progress=True)
    p = corr.provenance
    assert p["optimizer"] == "adam" and p["teacher"] == "heun" and p["teacher_nfe"] == 59
    assert p["val_best"] < 0.5 * p["val_init"] and p["loss_best"] < 0.5 * p["loss_init"] and p["fit_seconds"] > 0
    held_out = _noise(64, 12)
    teacher = teacher_samples(model, held_out, teacher_nfe=59)
    base = _rms(dode.sample(model, held_out, "ddim", 5), teacher)
    assert _rms(dode.sample(model, held_out, "ddim", 5, corr), teacher) < 0.7 * base


def test_s4s_distances(models, tmp_path):
    model, noise = models["edm"], _noise(16, 13)
    calls = []

    def custom(x, y):
        calls.append(1)
        return (x - y).abs().mean()

    corr = fit_s4s(model, noise, "ddim", 3, iters=3, teacher_nfe=19, distance=custom)
    assert calls and corr.provenance["distance"] == "custom"
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 4, dtype=torch.float32))
    feat = FeatureDistance(net)
    y = _noise(4, 14)
    assert float(feat(y, y).detach()) == 0.0 and float(feat(y + 0.1, y).detach()) > 0
    with pytest.raises(UserError, match="lpips_weights=None is not a file"):
        get_distance("lpips")
    with pytest.raises(UserError, match="is not a file"):
        get_distance("lpips", lpips_weights=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="valid: l2, fd_digits, lpips"):
        get_distance("ssim")


def test_fd_digits_distance_has_gradients():
    pytest.importorskip("cleanfid")
    try:
        dist, name = get_distance("fd_digits")
    except UserError as e:  # the classifier asset is not there
        pytest.skip(str(e))
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    loss = dist(x * 2 - 1, torch.zeros(3, 1, 8, 8, dtype=torch.float64))
    loss.backward()
    assert name == "fd_digits" and x.grad is not None and float(x.grad.abs().sum()) > 0


# ----------------------------------------------------------------------------------------- S4S-Alt
def test_monotone_grid_parametrisation(models):
    for kind, space in (("edm", "rho"), ("edm", "logsigma"), ("vp", "time")):
        _, sig, _ = solver_grid(models[kind], "ddim", 6)
        mg = MonotoneGrid(models[kind], sig, space)
        assert mg.n_free == 4
        torch.testing.assert_close(mg.sigmas(mg.init), sig, rtol=1e-12, atol=0)
        for seed in range(5):
            logits = torch.randn(mg.n_free, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
            g = mg.sigmas(logits)
            assert MonotoneGrid.monotone(g) and g[0] == sig[0] and g[-2] == sig[-2] and g[-1] == 0
        free = MonotoneGrid(models[kind], sig, space, free_end=True)  # the last positive σ is learned too
        assert free.n_free == 5
        torch.testing.assert_close(free.sigmas(free.init), sig, rtol=1e-12, atol=0)
        for seed in range(5):
            logits = torch.randn(free.n_free, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
            g = free.sigmas(logits)
            lo = min(models[kind].sigma_min, float(sig[-2]))  # never below the model's σ_min
            assert MonotoneGrid.monotone(g) and g[0] == sig[0] and g[-1] == 0
            assert lo * (1 - 1e-12) <= g[-2] < sig[0]
            u = free._u(torch.tensor([lo, float(sig[0])], dtype=torch.float64))
            want = u[0] + (u[1] - u[0]) * (1 - math.exp(-float(logits[-1]) ** 2))  # in the grid's own space
            assert float(free._u(g[-2:-1])) == pytest.approx(float(want), rel=1e-12)
    with pytest.raises(ValueError, match="free_end needs a grid that ends at σ = 0"):
        MonotoneGrid(models["edm"], torch.tensor([80.0, 1.0, 0.1], dtype=torch.float64), free_end=True)


def test_s4s_alt_keeps_the_grid_monotone_and_lowers_the_loss(models):
    model = models["edm"]
    corr = fit_s4s_alt(model, _noise(48, 15), "ddim", 5, rounds=2, iters=60, round_iters=30, grid_evals=25,
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
    held_out = _noise(64, 16)
    teacher = teacher_samples(model, held_out, teacher_nfe=59)
    base = _rms(dode.sample(model, held_out, "ddim", 5), teacher)
    assert _rms(sample_learned(model, held_out, corr), teacher) < 0.5 * base


def test_s4s_alt_frees_the_last_sigma_from_the_second_grid_search_on(models):
    model, noise = models["edm"], _noise(32, 17)
    kw = dict(iters=20, round_iters=10, grid_evals=15, teacher_nfe=59)
    one = fit_s4s_alt(model, noise, "ddim", 5, rounds=1, **kw).provenance
    assert one["grid"][-2] == one["base_sigmas"][-2] and one["grid"][0] == one["base_sigmas"][0]
    two = fit_s4s_alt(model, noise, "ddim", 5, rounds=2, **kw).provenance
    grids = [h["sigmas"] for h in two["history"] if h["phase"] == "grid"]
    assert grids[0] == one["grid"]  # the same first round
    assert two["grid"][-2] != two["base_sigmas"][-2] and two["grid"][-2] >= model.sigma_min


# ----------------------------------------------------------------------------------- save / reload
def test_saved_fits_reload_and_reproduce_samples_exactly(models, tmp_path):
    model, noise, held_out = models["edm"], _noise(32, 17), _noise(8, 18).float()
    fits = {
        "iia": fit_iia(model, noise, "heun", 5, substeps=4, seeds="0-31"),
        "s4s": fit_s4s(model, noise, "ddim", 4, iters=10, teacher_nfe=19, seeds="0-31"),
        "s4s_alt": fit_s4s_alt(model, noise, "ddim", 4, rounds=1, iters=10, round_iters=5, grid_evals=8,
                               teacher_nfe=19, seeds="0-31"),
    }
    for name, corr in fits.items():
        path = corr.save(tmp_path / name / "lambdas.json")
        meta = json.loads(path.read_text())["provenance"]
        assert meta["seeds"] == "0-31" and meta["fit_seconds"] > 0 and meta["method"] == name
        loaded = Correction.load(path)
        assert loaded.form == corr.form and loaded.space == "x0" and loaded.theta == corr.theta
        solver, nfe = meta["solver"], meta["nfe"]
        want = dode.sample(model, held_out, solver, nfe, corr, grid=grid_of(corr))
        assert torch.equal(dode.sample(model, held_out, solver, nfe, loaded, grid=grid_of(loaded)), want)
        assert torch.equal(sample_learned(model, held_out, loaded), want)
    assert isinstance(grid_of(fits["s4s_alt"]), torch.Tensor) and grid_of(fits["s4s"], "edm") == "edm"


def test_s4s_chunks_accumulate_the_full_batch_gradient(models):
    model, noise = models["edm"], _noise(24, 20)
    target = teacher_samples(model, noise, teacher_nfe=19)
    whole = fit_s4s(model, noise, "ddim", 4, iters=5, targets=target)
    chunked = fit_s4s(model, noise, "ddim", 4, iters=5, targets=target, chunk=7)
    torch.testing.assert_close(_t(chunked.theta), _t(whole.theta), rtol=0, atol=1e-9)
