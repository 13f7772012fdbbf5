"""D-ODE: the correction hook (λ = 0 is the base solver bit for bit), planted-λ recovery, the
teacher on coinciding grids, the appendix formulations and the saved-parameter round trip."""
import json

import pytest
import torch

import dode
import dode.core.denoisers
from dode.learn.dode import teacher_states
from dode.learn.record import student_points
from dode.core.forms import FORMS, Correction
from dode.core.sampling import solver_grid, trajectory
from dode.core.solvers import SOLVERS
from conftest import mixture_noise as _noise

NFE = {name: (7 if name == "heun" else 6) for name in SOLVERS}


@pytest.mark.parametrize("kind", ["edm", "vp"])
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_zero_lambdas_reproduce_the_base_solver_bit_for_bit(name, kind, models):
    noise = _noise(8, 0).float()
    base = dode.sample(models[kind], noise, name, NFE[name])
    assert torch.equal(dode.sample(models[kind], noise, name, NFE[name], lambdas=torch.zeros(NFE[name])), base)
    for form in FORMS:
        zeros = Correction(form, [[0.0] * 12 for _ in range(NFE[name])])
        assert torch.equal(dode.sample(models[kind], noise, name, NFE[name], lambdas=zeros), base), form


def _states_after_each_evaluation(model, noise, name, nfe, correction):
    final, calls = trajectory(model, noise, name, nfe, correction)
    return [x for _, x, _ in calls[1:]] + [final]


@pytest.mark.parametrize("kind", ["edm", "vp"])
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_planted_lambdas_are_recovered(name, kind, models):
    model, nfe = models[kind], NFE[name]
    planted = torch.linspace(-0.3, 0.5, nfe, dtype=torch.float64)
    if kind == "edm":
        planted[0] = 0.0  # data-prediction models have no output before the first one: λ_0 = 0
    noise = _noise(20, 1)
    targets = _states_after_each_evaluation(model, noise, name, nfe, Correction.from_lambdas(planted))
    fitted = dode.fit_correction(model, noise, name, nfe, targets=targets).lambdas
    torch.testing.assert_close(fitted, planted, rtol=0, atol=1e-6)


@pytest.mark.parametrize("form", ["dode2", "sep", "all"])
def test_planted_multi_column_forms_are_recovered(form, models):
    model, nfe = models["vp"], 6
    gen = torch.Generator().manual_seed(3)
    theta = [(torch.rand(2 + k if form == "all" else 2, generator=gen, dtype=torch.float64) * 0.4 - 0.2).tolist()
             for k in range(nfe)]
    if form == "dode2":
        theta[0][1] = 0.0  # q_{-2} does not exist at the first evaluation
    planted = Correction(form, theta)
    noise = _noise(30, 4)
    targets = _states_after_each_evaluation(model, noise, "ddim", nfe, planted)
    fitted = dode.fit_correction(model, noise, "ddim", nfe, form=form, targets=targets)
    for got, want in zip(fitted.theta, theta):
        torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind,name", [("vp", "ddim"), ("vp", "dpm3"), ("vp", "ipndm"), ("vp", "deis3"),
                                       ("vp", "dpmpp2m"), ("edm", "ddim"), ("edm", "heun")])
def test_fitted_lambdas_reduce_the_error_to_the_teacher_on_held_out_noise(kind, name, models):
    model, nfe = models[kind], NFE[name]
    lam = dode.fit_lambdas(model, _noise(100, 5), name, nfe, scale=10)
    assert lam.shape == (nfe,) and lam.dtype == torch.float64
    held_out = _noise(100, 6)
    spec, sigmas, plan = solver_grid(model, name, nfe)
    _, points = student_points(model, spec, sigmas, plan)
    states, info = teacher_states(model, held_out, spec.teacher, points, 10)
    teacher = states[0.0]
    err = lambda x: float((x - teacher).norm())  # noqa: E731
    assert err(dode.sample(model, held_out, name, nfe, lam)) < 0.95 * err(dode.sample(model, held_out, name, nfe))


def test_teacher_runs_on_coinciding_grids_and_is_capped_at_T(models):
    vp = models["vp"]
    spec, sigmas, plan = solver_grid(vp, "dpm3", 10)
    after, points = student_points(vp, spec, sigmas, plan)
    assert len(points) == 11 and after[-1] == 0.0  # 10 evaluations (inner stages included) + σ = 0
    states, info = teacher_states(vp, _noise(4, 0), "ddim", points, 10)
    assert set(states) == set(points) and info["teacher_nfe"] == 100
    with pytest.warns(UserWarning, match="exceeds the model's T = 1000"):
        _, info = teacher_states(vp, _noise(4, 0), "ddim", student_points(vp, *solver_grid(vp, "ddim", 200))[1], 10)
    assert info["teacher_scale"] == 5 and info["teacher_nfe"] == 1000


def test_first_step_rules(models):
    """ε space: the previous output of the first evaluation is x_T in VP scale; x0 space: λ_0 = 0."""
    eps_fit = dode.fit_correction(models["vp"], _noise(50, 7), "ddim", 5)
    x0_fit = dode.fit_correction(models["edm"], _noise(50, 7), "ddim", 5)
    assert eps_fit.space == "eps" and eps_fit.theta[0][0] != 0.0
    assert x0_fit.space == "x0" and x0_fit.theta[0] == [0.0]


def test_lookahead_acts_on_x0_for_noise_models(models):
    fixed = Correction.fixed("lookahead", 0.3, 5)
    assert fixed.space == "x0" and fixed.lambdas.tolist() == [0.3] * 5
    noise = _noise(4, 8)
    la = dode.sample(models["vp"], noise, "ddim", 5, fixed)
    dd = dode.sample(models["vp"], noise, "ddim", 5, Correction.fixed("dode", 0.3, 5))
    assert not torch.allclose(la, dd)


def test_saved_parameters_reload_and_reproduce_samples(tmp_path, models):
    corr = dode.fit_correction(models["vp"], _noise(40, 9), "dpm2", 6, scale=5, seeds="0-39")
    path = corr.save(tmp_path / "fit" / "lambdas.json")
    meta = json.loads(path.read_text())["provenance"]
    for key in ("solver", "nfe", "grid", "scale", "batch", "teacher", "teacher_nfe", "fit_seconds", "dode_version"):
        assert key in meta
    assert meta["seeds"] == "0-39" and meta["teacher"] == "ddim" and meta["batch"] == 40
    loaded = Correction.load(path)
    noise = _noise(8, 10)
    assert torch.equal(dode.sample(models["vp"], noise, "dpm2", 6, loaded), dode.sample(models["vp"], noise, "dpm2", 6, corr))
    assert not list(path.parent.glob("*.tmp"))


def test_unknown_form_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid forms: dode, lookahead, dode2, sep, all"):
        Correction("dode3")


def test_sampling_builds_no_graph_unless_parameters_ask_for_gradients():
    net = torch.nn.Conv2d(1, 1, 3, padding=1).double()
    model = dode.core.denoisers.EDMDenoiser(lambda x, sigma: net(x))
    noise = _noise(2, 11)
    assert not dode.sample(model, noise, "heun", 5).requires_grad
    theta = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    out = dode.sample(model, noise, "heun", 5, Correction("dode", [[theta]] * 5))
    out.square().sum().backward()
    assert theta.grad is not None and theta.grad.abs() > 0


def _heun_by_hand(model, noise, sig, theta, previous_of_euler):
    """Heun (2 steps + Euler into 0) with x0 corrections θ_k·(D_k − D_prev), written out by hand;
    ``previous_of_euler(d, d_corr)`` picks the output the next Euler stage pairs with."""
    def den(x, s):
        return model(x, torch.full((x.shape[0],), s, dtype=torch.float64))

    x, prev, k = noise * float(sig[0]), None, 0
    for i in range(len(sig) - 1):
        s, t = float(sig[i]), float(sig[i + 1])
        d = den(x, s)
        dt = d if prev is None else d + theta[k] * (d - prev)
        k += 1
        xe = x + (t - s) * (x - dt) / s
        if t == 0:
            return xe
        d2 = den(xe, t)
        d2t = d2 + theta[k] * (d2 - d)
        k += 1
        x = x + (t - s) * 0.5 * ((x - dt) / s + (xe - d2t) / t)
        prev = previous_of_euler(d, d2)


def test_d_edm_pairs_each_heun_stage_with_the_stage_before(models):
    """D-EDM (methods.md): the Euler stage pairs with the previous step's corrector output D'_{i−1},
    the corrector with D'_i − D_i — checked against Heun written out by hand."""
    model, noise = models["edm"], _noise(5, 3)
    _, sig, _ = solver_grid(model, "heun", 5)
    theta = [0.0, -0.4, 0.7, 0.3, -0.2]
    want = _heun_by_hand(model, noise, sig, theta, lambda d, d2: d2)
    got = dode.sample(model, noise, "heun", 5, Correction("dode", [[v] for v in theta]))
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    past_euler = _heun_by_hand(model, noise, sig, theta, lambda d, d2: d)
    assert (got - past_euler).abs().max() > 1e-3  # the pairing matters


@pytest.mark.parametrize("form", sorted(FORMS))
def test_corrector_outputs_join_the_history_except_for_predictor_history_forms(models, form):
    """IIA-EDM and S4S pair the next Euler stage with the past Euler stage (Form.predictor_history)."""
    model, noise = models["edm"], _noise(3, 4)
    _, calls = trajectory(model, noise, "heun", 5)
    path = dode.core.path.ModelPath(model, Correction(form))
    for j, (s, x, d) in enumerate(calls[:2]):  # step 0: Euler stage, corrector
        path.denoise(x, s)
        path.correct(x, s, d, corrector=(j == 1))
    want = calls[0][2] if FORMS[form].predictor_history else calls[1][2]
    torch.testing.assert_close(path.history[-1].d, want)
