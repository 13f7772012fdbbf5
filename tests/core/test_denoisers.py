"""Model wrappers and the analytic oracle: ε-, x0- and v-networks give one denoiser; the mixture's
denoiser is the exact posterior mean."""
import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from dode.core.denoisers import Denoiser, EDMDenoiser, VPDenoiser, native_prediction
from dode.core.oracle import GaussianMixture
from dode.core.schedules import DiscreteVPSchedule


@pytest.fixture(scope="module")
def mixture():
    torch.manual_seed(0)
    return GaussianMixture(torch.randn(3, 2) * 2, stds=[0.3, 0.6, 1.0], weights=[0.2, 0.3, 0.5])


def test_mixture_denoiser_is_the_posterior_mean(mixture):
    x = torch.randn(5, 2, dtype=torch.float64) * 2
    for sigma in (0.05, 0.7, 3.0):
        got = mixture(x, torch.full((5,), sigma, dtype=torch.float64))
        mus, stds, w = mixture.means.numpy(), mixture.stds.numpy(), mixture.log_weights.exp().numpy()
        for xi, gi in zip(x.numpy(), got.numpy()):
            like = np.array([wk * multivariate_normal(mu, (s**2 + sigma**2) * np.eye(2)).pdf(xi) for mu, s, wk in zip(mus, stds, w)])
            post = like / like.sum()
            mean = sum(p * (mu + s**2 / (s**2 + sigma**2) * (xi - mu)) for p, mu, s in zip(post, mus, stds))
            np.testing.assert_allclose(gi, mean, rtol=1e-10)


def test_single_gaussian_exact_solution_solves_the_ode():
    g = GaussianMixture(torch.tensor([[1.0, -2.0]]), stds=[0.5])
    x = torch.randn(4, 2, dtype=torch.float64) * 10
    h = 1e-6
    a = g.exact_solution(x, 10.0, 3.0)
    deriv = (g.exact_solution(x, 10.0, 3.0 + h) - g.exact_solution(x, 10.0, 3.0 - h)) / (2 * h)
    eps = (a - g(a, torch.full((4,), 3.0, dtype=torch.float64))) / 3.0  # dx/dσ = ε(x, σ)
    torch.testing.assert_close(deriv, eps, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_vp_wrappers_present_every_parameterisation_as_one_denoiser(prediction, mixture):
    sched = DiscreteVPSchedule.linear()
    eps_net = mixture.eps_model(sched)

    def net(x_vp, t):
        eps = eps_net(x_vp, t)
        a = torch.rsqrt(1 + sched.sigma(t.double() + 1) ** 2)[:, None]
        x0 = (x_vp - (1 - a**2).sqrt() * eps) / a
        return {"eps": eps, "x0": x0, "v": a * eps - (1 - a**2).sqrt() * x0}[prediction]

    den = VPDenoiser(net, sched, prediction=prediction)
    assert native_prediction(den) == ("x0" if prediction == "x0" else "eps")
    x = torch.randn(6, 2, dtype=torch.float64) * 3
    sigma = sched.sigma(torch.tensor([10.0, 250.0, 600.0, 10.0, 999.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(den(x, sigma), mixture(x, sigma), rtol=1e-9, atol=1e-9)
    assert den.sigma_max == pytest.approx(sched.sigma_max) and den.default_grid == "time_uniform"


def test_unknown_prediction_is_refused():
    with pytest.raises(ValueError, match="valid: eps, x0, v"):
        VPDenoiser(lambda x, t: x, DiscreteVPSchedule.linear(), prediction="score")


def test_every_wrapper_is_a_denoiser(mixture):
    """The Denoiser protocol: callable with sigma_min and sigma_max (the oracle, both wrappers); a bare
    network is not one."""
    net = torch.nn.Linear(2, 2)
    vp = VPDenoiser(lambda x, t: x, DiscreteVPSchedule.linear())
    edm = EDMDenoiser(lambda x, s: x)
    for den in (mixture, mixture.as_vp(DiscreteVPSchedule.linear()), vp, edm):
        assert isinstance(den, Denoiser)
    assert not isinstance(net, Denoiser)
    assert (vp.sigma_min, vp.sigma_max) == (DiscreteVPSchedule.linear().sigma_min, DiscreteVPSchedule.linear().sigma_max)
