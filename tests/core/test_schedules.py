"""Schedules and time grids against diffusers' schedulers and the published formulas."""
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from dode.core.oracle import GaussianMixture
from dode.core.schedules import DiscreteVPSchedule, refine, time_grid


@pytest.fixture(scope="module")
def vp():
    return GaussianMixture(torch.zeros(1, 2), [1.0]).as_vp(DiscreteVPSchedule.linear())


def test_linear_and_cosine_schedules_match_diffusers():
    ours = DiscreteVPSchedule.linear()
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    np.testing.assert_allclose(ours.alphas_cumprod.numpy(), ref.alphas_cumprod.numpy(), rtol=2e-6)
    cos = DiscreteVPSchedule.cosine(T=4000)
    ref = DDPMScheduler(num_train_timesteps=4000, beta_schedule="squaredcos_cap_v2")
    np.testing.assert_allclose(cos.alphas_cumprod.numpy(), ref.alphas_cumprod.numpy(), rtol=1e-4, atol=1e-9)


def test_discrete_time_maps_training_steps_exactly():
    s = DiscreteVPSchedule.linear()
    taus = torch.arange(0, 1001, dtype=torch.float64)
    sig = s.sigma(taus)
    assert sig[0] == 0 and torch.all(sig[1:] > sig[:-1])
    np.testing.assert_allclose(sig[1:].numpy(), np.sqrt((1 - s.alphas_cumprod) / s.alphas_cumprod).numpy(), rtol=1e-12)
    assert torch.equal(s.t(sig), taus)  # integer steps come back as exact integers
    mid = torch.tensor([0.25, 10.5, 999.75], dtype=torch.float64)
    np.testing.assert_allclose(s.t(s.sigma(mid)).numpy(), mid.numpy(), rtol=1e-10)


def test_time_uniform_grid_is_the_trailing_integer_grid(vp):
    sig = time_grid(vp, 10, "time_uniform")
    taus = vp.schedule.t(sig)
    assert taus.tolist() == [1000.0 - 100 * i for i in range(11)]
    assert sig[-1] == 0 and sig[0] == pytest.approx(vp.sigma_max)


def test_edm_and_logsnr_grids_follow_their_formulas():
    m = GaussianMixture(torch.zeros(1, 2), [0.5])
    sig = time_grid(m, 18, "edm")
    i = np.arange(18)
    rho = 7
    expect = (80 ** (1 / rho) + i / 17 * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho
    np.testing.assert_allclose(sig[:-1].numpy(), expect, rtol=1e-13)
    assert sig[-1] == 0
    log = time_grid(m, 6, "logsnr")[:-1].log()
    np.testing.assert_allclose(np.diff(log.numpy()), np.full(5, (math.log(0.002) - math.log(80)) / 5), rtol=1e-12)


def test_refine_keeps_every_point_bit_for_bit(vp):
    for model, kind in [(vp, "time_uniform"), (GaussianMixture(torch.zeros(1, 2), [0.5]), "edm"),
                        (GaussianMixture(torch.zeros(1, 2), [0.5]), "logsnr")]:
        sig = time_grid(model, 7, kind)
        fine = refine(sig, 4, model, kind)
        assert len(fine) == 4 * 7 + 1
        assert torch.equal(fine[::4], sig)
        assert torch.all(fine[1:] < fine[:-1])
    fine = refine(time_grid(vp, 10), 10, vp, "time_uniform")
    assert torch.equal(vp.schedule.t(fine), torch.arange(1000, -1, -10, dtype=torch.float64))


def test_bad_grids_are_explained(vp):
    with pytest.raises(ValueError, match="valid grids: time_uniform"):
        time_grid(vp, 5, "uniform")
    with pytest.raises(ValueError, match="strictly decreasing"):
        time_grid(vp, 2, torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="do not fit"):
        time_grid(vp, 1001, "time_uniform")
