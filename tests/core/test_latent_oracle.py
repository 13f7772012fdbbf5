"""The latent analytic oracle: solver orders and D-ODE's λ hold in latent space, seen through a fixed
linear decoder."""
import numpy as np
import pytest
import torch

import dode
from dode.core.oracle import GaussianMixture, LatentMixture
from dode.core.schedules import DiscreteVPSchedule, time_grid
from dode.core.solvers import SOLVERS
from dode.learn import fit_lambdas

ORDER = {"ddim": 1, "heun": 2, "dpm2": 2, "dpm3": 3}  # as in test_solvers (logSNR grid, ending at σ_min)


@pytest.fixture(scope="module")
def latent_gaussian():
    """One Gaussian on 1×2×2 latents decoded by a random 48×4 map (+ bias) to 3×4×4 images."""
    g = torch.Generator().manual_seed(0)
    mix = GaussianMixture(torch.randn(1, 1, 2, 2, generator=g), stds=[0.5], sigma_min=0.05, sigma_max=80.0)
    return LatentMixture(mix, torch.randn(48, 4, generator=g, dtype=torch.float64), (3, 4, 4),
                         bias=torch.randn(48, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(ORDER))
def test_solver_order_on_decoded_images(name, latent_gaussian):
    den = latent_gaussian
    noise = torch.randn(32, *den.latent_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    errors, nfes = [], []
    for steps in (40, 80, 160):
        nfe = {"dpm3": 3 * steps - 1, "dpm2": 2 * steps, "heun": 2 * steps}.get(name, steps)
        grid = time_grid(den, len(SOLVERS[name].plan(nfe, False)) + 1, "logsnr")[:-1]
        img = den.decode(dode.sample(den, noise, name, nfe, grid=grid))
        exact = den.decode(den.mixture.exact_solution(noise * grid[0].item(), grid[0].item(), grid[-1].item()))
        assert img.shape == (32, 3, 4, 4)
        errors.append(float((img - exact).norm() / exact.norm()))
        nfes.append(nfe)
    slope = -np.polyfit(np.log(nfes[1:]), np.log(errors[1:]), 1)[0]
    assert slope == pytest.approx(ORDER[name], abs=0.25), (errors, slope)


def test_lambdas_in_latent_space_are_those_of_the_decoded_mixture():
    """With an orthogonal decoder the images are the mixture with means W·μ: sampling and D-ODE's λ fit
    on latents give exactly the pixel-space model's samples (decoded) and λ; λ improves the samples."""
    g = torch.Generator().manual_seed(3)
    sched = DiscreteVPSchedule.linear()
    mix = GaussianMixture(torch.randn(3, 1, 2, 2, generator=g) * 2, stds=[0.2, 0.4, 0.3])
    w, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    lat = LatentMixture(mix, w, (1, 2, 2), schedule=sched)
    pix = GaussianMixture((mix.means.reshape(3, 4) @ w.T).reshape(3, 1, 2, 2), stds=[0.2, 0.4, 0.3]).as_vp(sched)
    noise = torch.randn(64, 1, 2, 2, dtype=torch.float64, generator=g)
    noise_pix = lat.decode(noise)  # W·n is standard normal too
    lam_lat = fit_lambdas(lat, noise, "ddim", nfe=5, scale=10)
    lam_pix = fit_lambdas(pix, noise_pix, "ddim", nfe=5, scale=10)
    torch.testing.assert_close(lam_lat, lam_pix, rtol=1e-8, atol=1e-10)
    x_lat = dode.sample(lat, noise, "ddim", 5, lambdas=lam_lat)
    torch.testing.assert_close(lat.decode(x_lat), dode.sample(pix, noise_pix, "ddim", 5, lambdas=lam_pix),
                               rtol=1e-9, atol=1e-9)
    test = torch.randn(256, 1, 2, 2, dtype=torch.float64, generator=g)
    teacher = lat.decode(dode.sample(lat, test, "ddim", 500))
    err = {k: float((lat.decode(dode.sample(lat, test, "ddim", 5, lambdas=lam)) - teacher).norm())
           for k, lam in (("base", None), ("dode", lam_lat))}
    assert err["dode"] < 0.9 * err["base"], err


def test_decoder_shape_is_checked():
    mix = GaussianMixture(torch.zeros(1, 1, 2, 2), stds=[1.0])
    with pytest.raises(ValueError, match=r"the decoder must be \(48, 4\)"):
        LatentMixture(mix, torch.zeros(4, 48), (3, 4, 4))
