"""The one model-call path (dode.core.path): θ = 0 is the base solver bit for bit, the pairing of
Heun's stages in the history, no autograd graph unless asked for, and the recording of model calls."""
import pytest
import torch

import dode
import dode.core.denoisers
from dode.core.forms import FORMS, Correction
from dode.core.path import Call, ModelPath
from dode.core.sampling import run_solver, solver_grid, trajectory
from dode.core.solvers import SOLVERS

NFE = {name: (7 if name == "heun" else 6) for name in SOLVERS}


@pytest.mark.parametrize("kind", ["edm", "vp"])
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_zero_lambdas_reproduce_the_base_solver_bit_for_bit(name, kind, models, mixture_noise):
    noise = mixture_noise(8, 0).float()
    base = dode.sample(models[kind], noise, name, NFE[name])
    assert torch.equal(dode.sample(models[kind], noise, name, NFE[name], lambdas=torch.zeros(NFE[name])), base)
    for form in FORMS:
        zeros = Correction(form, [[0.0] * 12 for _ in range(NFE[name])])
        assert torch.equal(dode.sample(models[kind], noise, name, NFE[name], lambdas=zeros), base), form


def test_sampling_builds_no_graph_unless_parameters_ask_for_gradients(mixture_noise):
    net = torch.nn.Conv2d(1, 1, 3, padding=1).double()
    model = dode.core.denoisers.EDMDenoiser(lambda x, sigma: net(x))
    noise = mixture_noise(2, 11)
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


def test_d_edm_pairs_each_heun_stage_with_the_stage_before(models, mixture_noise):
    """D-EDM (methods.md): the Euler stage pairs with the previous step's corrector output D'_{i−1},
    the corrector with D'_i − D_i — checked against Heun written out by hand."""
    model, noise = models["edm"], mixture_noise(5, 3)
    _, sig, _ = solver_grid(model, "heun", 5)
    theta = [0.0, -0.4, 0.7, 0.3, -0.2]
    want = _heun_by_hand(model, noise, sig, theta, lambda d, d2: d2)
    got = dode.sample(model, noise, "heun", 5, Correction("dode", [[v] for v in theta]))
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    past_euler = _heun_by_hand(model, noise, sig, theta, lambda d, d2: d)
    assert (got - past_euler).abs().max() > 1e-3  # the pairing matters


@pytest.mark.parametrize("form", sorted(FORMS))
def test_corrector_outputs_join_the_history_except_for_predictor_history_forms(models, form, mixture_noise):
    """IIA-EDM and S4S pair the next Euler stage with the past Euler stage (Form.predictor_history)."""
    model, noise = models["edm"], mixture_noise(3, 4)
    _, calls = trajectory(model, noise, "heun", 5)
    path = ModelPath(model, Correction(form))
    for j, (s, x, d) in enumerate(calls[:2]):  # step 0: Euler stage, corrector
        path.denoise(x, s)
        path.correct(x, s, d, corrector=(j == 1))
    want = calls[0][2] if FORMS[form].predictor_history else calls[1][2]
    torch.testing.assert_close(path.history[-1].d, want)


def test_record_keeps_every_call_or_only_the_calls_at_given_sigmas(models, mixture_noise):
    model, noise = models["edm"], mixture_noise(3, 12)
    spec, sigmas, plan = solver_grid(model, "heun", 7)
    unrecorded = ModelPath(model)
    final = run_solver(unrecorded, spec, noise, sigmas, plan)
    assert unrecorded.calls is None
    every = ModelPath(model, record=True)
    assert torch.equal(run_solver(every, spec, noise, sigmas, plan), final)
    assert len(every.calls) == every.nfe == 7 and all(isinstance(c, Call) for c in every.calls)
    assert [c.sigma for c in every.calls] == every.sigmas
    for s, x, d in every.calls:
        assert torch.equal(d, model(x, torch.full((len(x),), s, dtype=torch.float64)))
    wanted = {float(sigmas[1]), float(sigmas[3])}  # Heun evaluates twice at each inner σ
    some = ModelPath(model, record=wanted)
    assert torch.equal(run_solver(some, spec, noise, sigmas, plan), final)
    last = {c.sigma: c for c in every.calls if c.sigma in wanted}  # the last evaluation at each wanted σ
    kept = sorted(last.values(), key=lambda c: -c.sigma)
    assert len([c for c in every.calls if c.sigma in wanted]) == 4  # (two at each: corrector, then Euler)
    assert len(some.calls) == len(kept) == 2 and some.sigmas == every.sigmas
    for a, b in zip(some.calls, kept):
        assert a.sigma == b.sigma and torch.equal(a.x, b.x) and torch.equal(a.d, b.d)
    nothing = ModelPath(model, record=())
    run_solver(nothing, spec, noise, sigmas, plan)
    assert nothing.calls == [] and nothing.nfe == 7


def test_evaluate_is_the_one_overridable_network_call(models, mixture_noise):
    class Doubled(ModelPath):
        def evaluate(self, x, sigma):
            return 2 * super().evaluate(x, sigma)

    model, noise = models["edm"], mixture_noise(2, 13)
    spec, sigmas, plan = solver_grid(model, "ddim", 3)
    path = Doubled(model, record=True)
    run_solver(path, spec, noise, sigmas, plan)
    for s, x, d in path.calls:
        assert torch.equal(d, 2 * model(x, torch.full((len(x),), s, dtype=torch.float64)))
