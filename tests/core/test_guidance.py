"""Classifier-free guidance: D_w = D(∅) + w·(D(c) − D(∅)) from one doubled-batch call, usable by
every solver and by the λ fit exactly as a hand-written guided denoiser."""
import pytest
import torch
from torch import nn

from dode.core.denoisers import EDMDenoiser, VPDenoiser
from dode.core.guidance import ClassifierFreeGuidance
from dode.core.path import ModelPath
from dode.core.sampling import sample, solver_grid
from dode.core.schedules import DiscreteVPSchedule
from dode.core.solvers import SOLVERS
from dode.learn import fit_lambdas

NULL = 3  # the "no class" label of the tiny model (trained-with-label-dropout convention)


class TinyClassNet(nn.Module):
    """ε(x, t, y): a nonlinear class-conditional network in float64; records each call's batch size."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 1, 3, padding=1).double()
        self.emb = nn.Embedding(NULL + 1, 16).double()
        self.calls: list[int] = []

    def forward(self, x, t, class_labels=None):
        self.calls.append(x.shape[0])
        temb = (torch.as_tensor(t, dtype=x.dtype) / 1000).reshape(-1, 1, 1, 1)
        return torch.tanh(self.conv(x)) * (1 + temb) + self.emb(class_labels).reshape(-1, 1, 4, 4) * temb


@pytest.fixture()
def parts():
    sched = DiscreteVPSchedule.linear()
    net = TinyClassNet()
    labels = torch.tensor([0, 2, 1, 0, 1, 2])
    return sched, net, labels


def reference(net, sched, labels, w):
    """The CFG formula by hand: two separate calls of the plain conditional denoiser."""
    def den(x, sigma):
        cond = VPDenoiser(net, sched, model_kwargs={"class_labels": labels})(x, sigma)
        null = VPDenoiser(net, sched, model_kwargs={"class_labels": torch.full_like(labels, NULL)})(x, sigma)
        return null + w * (cond - null)
    den.sigma_min, den.sigma_max, den.schedule, den.prediction = sched.sigma_min, sched.sigma_max, sched, "eps"
    den.default_grid = "time_uniform"
    return den


def guided(net, sched, labels, w):
    inner = VPDenoiser(net, sched, model_kwargs={"class_labels": labels})
    return ClassifierFreeGuidance(inner, w, {"class_labels": torch.tensor([NULL])})


@pytest.mark.parametrize("w", [0.0, 1.0, 3.5])
def test_guided_output_is_the_formula_in_one_doubled_call(parts, w):
    sched, net, labels = parts
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64) * 5
    sigma = sched.sigma(torch.tensor([10.0, 250.0, 600.0, 10.0, 999.0, 1.0], dtype=torch.float64))
    g = guided(net, sched, labels, w)
    net.calls.clear()
    out = g(x, sigma)
    assert net.calls == [12]  # one network call of the doubled batch
    torch.testing.assert_close(out, reference(net, sched, labels, w)(x, sigma), rtol=1e-12, atol=1e-12)
    cond = VPDenoiser(net, sched, model_kwargs={"class_labels": labels})(x, sigma)
    null = VPDenoiser(net, sched, model_kwargs={"class_labels": torch.full_like(labels, NULL)})(x, sigma)
    if w == 1.0:
        torch.testing.assert_close(out, cond, rtol=1e-12, atol=1e-12)
    if w == 0.0:
        torch.testing.assert_close(out, null, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(cond, null)  # the condition matters, so the checks above can fail
    assert g.model_kwargs["class_labels"] is labels  # the condition is restored after the call


def test_guidance_wraps_edm_denoisers_and_keeps_their_attributes():
    def net(x, sigma, class_labels=None):
        return x / (1 + sigma.reshape(-1, 1)) + class_labels.double().reshape(-1, 1)

    inner = EDMDenoiser(net, model_kwargs={"class_labels": torch.tensor([1, 2])})
    g = ClassifierFreeGuidance(inner, 2.0, {"class_labels": torch.tensor([0])})
    x = torch.ones(2, 3, dtype=torch.float64)
    # D(c) − D(∅) = label: D_w = x/(1+σ) + 0 + 2·label
    torch.testing.assert_close(g(x, torch.tensor([1.0, 1.0], dtype=torch.float64)),
                               x / 2 + torch.tensor([[2.0], [4.0]], dtype=torch.float64))
    assert (g.sigma_min, g.sigma_max, g.default_grid, g.prediction) == (0.002, 80.0, "edm", "x0")


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_every_solver_samples_the_guided_model_as_a_plain_denoiser(parts, solver):
    sched, net, labels = parts
    nfe = 5  # odd: every solver's plan (Heun spends 2N − 1)
    noise = torch.randn(6, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = guided(net, sched, labels, 2.0)
    net.calls.clear()
    got = sample(g, noise, solver=solver, nfe=nfe)
    assert net.calls == [12] * nfe  # NFE counts guided evaluations, each one doubled call
    want = sample(reference(net, sched, labels, 2.0), noise, solver=solver, nfe=nfe)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_dode_fit_on_the_guided_model_equals_the_fit_on_the_formula(parts):
    sched, net, labels = parts
    noise = torch.randn(6, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    got = fit_lambdas(guided(net, sched, labels, 3.0), noise, "ddim", nfe=4, scale=4)
    want = fit_lambdas(reference(net, sched, labels, 3.0), noise, "ddim", nfe=4, scale=4)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert bool((got != 0).any())


def test_bad_conditions_are_refused(parts):
    sched, net, labels = parts
    with pytest.raises(ValueError, match="empty condition"):
        ClassifierFreeGuidance(VPDenoiser(net, sched), 2.0, {})
    g = ClassifierFreeGuidance(VPDenoiser(net, sched), 2.0, {"class_labels": torch.tensor([NULL])})
    with pytest.raises(ValueError, match="class_labels set on one side only"):
        g(torch.zeros(2, 1, 4, 4, dtype=torch.float64), 1.0)
    g.model_kwargs["class_labels"] = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="expected a batch of 2 or 1"):
        g(torch.zeros(2, 1, 4, 4, dtype=torch.float64), 1.0)
    spec, sig, plan = solver_grid(g, "ddim", 3)
    assert ModelPath(g).denoiser is g and len(sig) == 4


def test_iia_and_s4s_fits_on_the_guided_model_equal_the_fits_on_the_formula(parts):
    from dode.learn import fit_iia, fit_s4s

    sched, net, labels = parts
    noise = torch.randn(6, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    for fit, kw in ((fit_iia, dict(substeps=3)), (fit_s4s, dict(iters=4, teacher="ddim", teacher_nfe=20))):
        got = fit(guided(net, sched, labels, 2.0), noise, "ddim", nfe=4, **kw)
        want = fit(reference(net, sched, labels, 2.0), noise, "ddim", nfe=4, **kw)
        for a, b in zip(got.theta, want.theta):
            torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                                       rtol=1e-7, atol=1e-10)
        assert any(float(torch.as_tensor(v).abs().sum()) > 0 for v in got.theta), fit.__name__
