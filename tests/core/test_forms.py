"""Correction forms (dode.core.forms): the registry and each form's features as its paper says — the
one-λ look-ahead on x0, IIA's [Δx̂0, Δε], BIIA's reweighting of Heun's two terms, S4S's gradients."""
import math

import pytest
import torch

import dode
from dode.core.forms import FORMS, Correction, get_form
from dode.core.sampling import solver_grid, trajectory
from dode.errors import InvalidChoice

# the registry as it was in three parallel tables: history kept, space, predictor-history flag
EXPECTED = {"dode": (1, None, False), "lookahead": (1, "x0", False), "dode2": (2, None, False),
            "sep": (1, None, False), "all": (math.inf, None, False), "iia": (1, "x0", True),
            "biia": (1, "x0", True), "s4s": (2, "x0", True), "s4s2": (1, "x0", True), "s4s4": (3, "x0", True),
            "amed": (1, "x0", False),
            "pas": (math.inf, "eps", False), "pas3": (math.inf, "eps", False), "pas2": (math.inf, "eps", False)}


def test_unknown_form_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid forms: dode, lookahead, dode2, sep, all"):
        Correction("dode3")


def test_every_form_is_one_registry_entry():
    assert list(FORMS) == list(EXPECTED)
    for name, (keep, space, predictor) in EXPECTED.items():
        form = get_form(name)
        assert form.name == name and (form.keep, form.space, form.predictor_history) == (keep, space, predictor)
        assert form.corrected_history == name.startswith("pas")  # PAS's history is its corrected trajectory
        assert Correction(name).space == space and Correction(name, space="eps").space == (space or "eps")


def test_get_form_raises_an_invalid_choice_listing_every_form():
    with pytest.raises(InvalidChoice, match="unknown correction form 'dode3'; valid forms: " + ", ".join(EXPECTED)):
        get_form("dode3")


def test_forms_are_registered_in_x0_space():
    for form in ("iia", "biia", "s4s", "s4s2", "s4s4"):
        assert form in FORMS and FORMS[form].space == "x0"
        assert Correction(form).space == "x0"


def test_lookahead_acts_on_x0_for_noise_models(models, mixture_noise):
    fixed = Correction.fixed("lookahead", 0.3, 5)
    assert fixed.space == "x0" and fixed.lambdas.tolist() == [0.3] * 5
    noise = mixture_noise(4, 8)
    la = dode.sample(models["vp"], noise, "ddim", 5, fixed)
    dd = dode.sample(models["vp"], noise, "ddim", 5, Correction.fixed("dode", 0.3, 5))
    assert not torch.allclose(la, dd)


def test_iia_columns_are_delta_x0_and_delta_eps(models, mixture_noise):
    """IIA-DDIM: d̃ = d + θ1 (d_k − d_{k−1}) − θ2 σ_k (ε_k − ε_{k−1}); none at the first evaluation."""
    model, noise = models["vp"], mixture_noise(5, 1)
    _, calls = trajectory(model, noise, "ddim", 3)
    (s0, x0, d0), (s1, x1, d1) = calls[0], calls[1]
    d_tilde = d1 + 0.2 * (d1 - d0) - 0.1 * s1 * ((x1 - d1) / s1 - (x0 - d0) / s0)
    spec, sig, _ = solver_grid(model, "ddim", 3)
    s2 = float(sig[2])
    want = d_tilde + (s2 / s1) * (x1 - d_tilde)
    _, calls_c = trajectory(model, noise, "ddim", 3, Correction("iia", [[5.0, 5.0], [0.2, 0.1], [0.0, 0.0]]))
    torch.testing.assert_close(calls_c[2][1], want, rtol=0, atol=1e-12)  # θ_0 is unused: no prior output


def test_biia_on_heuns_corrector_reweights_the_two_heun_terms(models, mixture_noise):
    """BIIA-EDM: θ on the corrector turns Heun's (½, ½) into (½ − θ/2, ½ + θ/2)."""
    model, noise, c = models["edm"], mixture_noise(6, 0), 0.3
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


def test_gradients_flow_through_dode_sample(models, mixture_noise):
    theta = torch.zeros(5, 3, dtype=torch.float64, requires_grad=True)
    corr = Correction("s4s", [list(row.unbind()) for row in theta])
    x = dode.sample(models["edm"], mixture_noise(4, 6), "ddim", 5, corr)
    x.pow(2).sum().backward()
    assert theta.grad is not None and bool((theta.grad[1:, :2] != 0).all()) and bool((theta.grad[2:] != 0).all())
    assert theta.grad[0, 1:].abs().sum() == 0 and theta.grad[1, 2] == 0  # no d_{k−1}, d_{k−2} yet
