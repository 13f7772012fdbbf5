"""D-ODE (dode.learn.dode): planted-λ recovery, the teacher on coinciding grids, the appendix
formulations, the first-step rules and the saved-parameter round trip."""
import json

import pytest
import torch

import dode
from dode.core.forms import Correction
from dode.core.sampling import solver_grid, trajectory
from dode.core.solvers import SOLVERS
from dode.learn.dode import teacher_states
from dode.learn.record import student_points

NFE = {name: (7 if name == "heun" else 6) for name in SOLVERS}


def _states_after_each_evaluation(model, noise, name, nfe, correction):
    final, calls = trajectory(model, noise, name, nfe, correction)
    return [x for _, x, _ in calls[1:]] + [final]


@pytest.mark.parametrize("kind", ["edm", "vp"])
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_planted_lambdas_are_recovered(name, kind, models, mixture_noise):
    model, nfe = models[kind], NFE[name]
    planted = torch.linspace(-0.3, 0.5, nfe, dtype=torch.float64)
    if kind == "edm":
        planted[0] = 0.0  # data-prediction models have no output before the first one: λ_0 = 0
    noise = mixture_noise(20, 1)
    targets = _states_after_each_evaluation(model, noise, name, nfe, Correction.from_lambdas(planted))
    fitted = dode.fit_correction(model, noise, name, nfe, targets=targets).lambdas
    torch.testing.assert_close(fitted, planted, rtol=0, atol=1e-6)


@pytest.mark.parametrize("form", ["dode2", "sep", "all"])
def test_planted_multi_column_forms_are_recovered(form, models, mixture_noise):
    model, nfe = models["vp"], 6
    gen = torch.Generator().manual_seed(3)
    theta = [(torch.rand(2 + k if form == "all" else 2, generator=gen, dtype=torch.float64) * 0.4 - 0.2).tolist()
             for k in range(nfe)]
    if form == "dode2":
        theta[0][1] = 0.0  # q_{-2} does not exist at the first evaluation
    planted = Correction(form, theta)
    noise = mixture_noise(30, 4)
    targets = _states_after_each_evaluation(model, noise, "ddim", nfe, planted)
    fitted = dode.fit_correction(model, noise, "ddim", nfe, form=form, targets=targets)
    for got, want in zip(fitted.theta, theta):
        torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind,name", [("vp", "ddim"), ("vp", "dpm3"), ("vp", "ipndm"), ("vp", "deis3"),
                                       ("vp", "dpmpp2m"), ("edm", "ddim"), ("edm", "heun")])
def test_fitted_lambdas_reduce_the_error_to_the_teacher_on_held_out_noise(kind, name, models, mixture_noise):
    model, nfe = models[kind], NFE[name]
    lam = dode.fit_lambdas(model, mixture_noise(100, 5), name, nfe, scale=10)
    assert lam.shape == (nfe,) and lam.dtype == torch.float64
    held_out = mixture_noise(100, 6)
    spec, sigmas, plan = solver_grid(model, name, nfe)
    _, points = student_points(model, spec, sigmas, plan)
    states, info = teacher_states(model, held_out, spec.teacher, points, 10)
    teacher = states[float(sigmas[-1])]  # σ = 0, or σ_min under the paper protocol
    err = lambda x: float((x - teacher).norm())  # noqa: E731
    assert err(dode.sample(model, held_out, name, nfe, lam)) < 0.95 * err(dode.sample(model, held_out, name, nfe))


def test_teacher_runs_on_coinciding_grids_and_is_capped_at_T(models, mixture_noise):
    vp = models["vp"]
    spec, sigmas, plan = solver_grid(vp, "dpm3", 10)
    after, points = student_points(vp, spec, sigmas, plan)
    # the paper protocol: 10 evaluations (inner stages included) + the end at training step 0 (τ = 1)
    assert len(points) == 11 and after[-1] == pytest.approx(vp.schedule.sigma(torch.tensor(1.0)).item(), rel=1e-12)
    states, info = teacher_states(vp, mixture_noise(4, 0), "ddim", points, 10)
    assert set(states) == set(points) and info["teacher_nfe"] == 100
    with pytest.warns(UserWarning, match="exceeds the model's T = 1000"):
        _, info = teacher_states(vp, mixture_noise(4, 0), "ddim", student_points(vp, *solver_grid(vp, "ddim", 200))[1], 10)
    assert info["teacher_scale"] == 5 and info["teacher_nfe"] == 1000


def test_first_step_rules(models, mixture_noise):
    """ε space: the previous output of the first evaluation is x_T in VP scale; x0 space: λ_0 = 0."""
    eps_fit = dode.fit_correction(models["vp"], mixture_noise(50, 7), "ddim", 5)
    x0_fit = dode.fit_correction(models["edm"], mixture_noise(50, 7), "ddim", 5)
    assert eps_fit.space == "eps" and eps_fit.theta[0][0] != 0.0
    assert x0_fit.space == "x0" and x0_fit.theta[0] == [0.0]


def test_saved_parameters_reload_and_reproduce_samples(tmp_path, models, mixture_noise):
    corr = dode.fit_correction(models["vp"], mixture_noise(40, 9), "dpm2", 6, scale=5, seeds="0-39")
    path = corr.save(tmp_path / "fit" / "lambdas.json")
    meta = json.loads(path.read_text())["provenance"]
    for key in ("solver", "nfe", "grid", "scale", "batch", "teacher", "teacher_nfe", "fit_seconds", "dode_version"):
        assert key in meta
    assert meta["seeds"] == "0-39" and meta["teacher"] == "ddim" and meta["batch"] == 40
    loaded = Correction.load(path)
    noise = mixture_noise(8, 10)
    assert torch.equal(dode.sample(models["vp"], noise, "dpm2", 6, loaded), dode.sample(models["vp"], noise, "dpm2", 6, corr))
    assert not list(path.parent.glob("*.tmp"))
