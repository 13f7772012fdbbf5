"""dode.export → DodeScheduler in a diffusers DDPMPipeline: the pipeline's samples are dode.sample's."""
import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, UNet2DModel

import dode
from dode.core.denoisers import VPDenoiser
from dode.core.forms import Correction
from dode.core.schedules import DiscreteVPSchedule
from dode.errors import CorrectionMismatch
from dode.integrations.diffusers_scheduler import DodeScheduler
from dode.models.adapters import DiscreteNet


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    net = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                      block_out_channels=(8, 16), norm_num_groups=4,
                      down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    return net.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def denoiser(unet):
    return VPDenoiser(DiscreteNet(unet, "diffusers", 1), DiscreteVPSchedule.linear())


def _loop(unet, folder, noise):
    """DDPMPipeline's loop, but the first network input rounded as dode's (x_T·√(1 + σ_0²)·ᾱ_0^{1/2} in
    float32): then every later state is the scheduler's own."""
    sched = DodeScheduler.from_pretrained(folder)
    sched.set_timesteps()
    s0 = torch.tensor(sched.sigmas[0].item(), dtype=torch.float64)
    x = (noise * math.sqrt(1 + s0.item() ** 2)) * torch.rsqrt(1 + s0**2).float()
    for k, t in enumerate(sched.timesteps):
        x = sched.step(unet(x, t).sample, t, noise if k == 0 else x).prev_sample
    return x


def _pipeline_and_dode(unet, denoiser, folder, solver, nfe, lambdas=None, grid=None, seed=3):
    pipe = DDPMPipeline(unet=unet, scheduler=DodeScheduler.from_pretrained(folder))
    images = pipe(batch_size=4, generator=torch.Generator().manual_seed(seed), num_inference_steps=nfe,
                  output_type="np").images
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed))  # DDPMPipeline's draw
    x = dode.sample(denoiser, noise, solver, nfe, lambdas=lambdas, grid=grid)
    return images, (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("solver,nfe,grid", [("ddim", 5, None), ("unipc3_bh2", 6, "logsnr"), ("dpm3", 6, None),
                                             ("deis2", 4, None)])
def test_the_pipeline_gives_dode_samples(unet, denoiser, tmp_path, solver, nfe, grid):
    """Base solvers of every kind (one-step, multistep predictor–corrector, singlestep stage grid,
    schedule-dependent coefficients) on their protocols. The pipeline feeds x_T itself to the network,
    dode its float32 round trip through VE scale (about 1e-7 apart): equal to 1e-5; with that first input
    the same, every state is equal bit for bit."""
    path = dode.export(tmp_path, denoiser, solver, nfe, grid=grid)
    assert path.name == "scheduler_config.json" and json.loads(path.read_text())["solver"] == solver
    ours, ref = _pipeline_and_dode(unet, denoiser, tmp_path, solver, nfe, grid=grid)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(_loop(unet, tmp_path, noise), dode.sample(denoiser, noise, solver, nfe, grid=grid))


def test_a_fitted_d_ddim_runs_in_the_pipeline(unet, denoiser, tmp_path):
    """D-DDIM fitted by dode, exported with its λ: the pipeline gives D-DDIM's samples, not DDIM's."""
    noise = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    corr = dode.fit_correction(denoiser, noise, "ddim", 5, scale=4)
    dode.export(tmp_path / "d", denoiser, "ddim", 5, corr)
    dode.export(tmp_path / "base", denoiser, "ddim", 5)
    saved = json.loads((tmp_path / "d" / "scheduler_config.json").read_text())["correction"]
    assert saved["theta"] == corr.to_dict()["theta"]
    ours, ref = _pipeline_and_dode(unet, denoiser, tmp_path / "d", "ddim", 5, lambdas=corr)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    base, _ = _pipeline_and_dode(unet, denoiser, tmp_path / "base", "ddim", 5)
    assert np.abs(base - ours).max() > 1e-3


def test_export_refuses_what_does_not_fit(denoiser, tmp_path):
    lam = Correction.from_lambdas([0.1] * 5, solver="ddim", nfe=5)
    with pytest.raises(CorrectionMismatch):
        dode.export(tmp_path, denoiser, "ddim", 6, lam)
    dode.export(tmp_path, denoiser, "ddim", 5, lam)
    sched = DodeScheduler.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="exactly NFE 5"):
        sched.set_timesteps(10)
    from dode.core.oracle import GaussianMixture
    with pytest.raises(ValueError, match="discrete-time VP models"):
        dode.export(tmp_path, GaussianMixture(torch.zeros(1, 2), [1.0]), "ddim", 5)


def test_a_fitted_pas_runs_in_the_pipeline(unet, denoiser, tmp_path):
    """PAS (its basis from the direction history, the corrected past directions) replayed one
    evaluation per scheduler step: the pipeline's states are dode.sample's, bit for bit."""
    from dode.learn import fit_pas

    corr = fit_pas(denoiser, torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)), "ipndm", 5, scale=4)
    assert corr.provenance["kept"]
    dode.export(tmp_path, denoiser, "ipndm", 5, corr)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        x = _loop(unet, tmp_path, noise)
        assert torch.equal(x, dode.sample(denoiser, noise, "ipndm", 5, corr))
        assert not torch.allclose(x, dode.sample(denoiser, noise, "ipndm", 5))


def test_a_fitted_amed_plugin_runs_in_the_pipeline(unet, denoiser, tmp_path):
    """AMED-Plugin at an even NFE (its grid with the inserted times and the direction scales) exported and
    replayed one evaluation per scheduler step: the pipeline's states are dode's, bit for bit. At an odd
    NFE its analytical first step moves x_T before the first network call, which the pipeline's loop
    cannot do: refused with the reason."""
    from dode.learn import fit_amed, sample_learned

    fit_noise = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="analytical first step"):
        dode.export(tmp_path / "afs", denoiser, "ddim", 5, fit_amed(denoiser, fit_noise, "ddim", 5, scale=4, iters=5))
    corr = fit_amed(denoiser, fit_noise, "ddim", 4, scale=4, iters=5)
    assert corr.afs is None and corr.provenance["grid_learned"]
    dode.export(tmp_path, denoiser, "ddim", 4, corr)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        x = _loop(unet, tmp_path, noise)
        assert torch.equal(x, sample_learned(denoiser, noise, corr))
        assert not torch.allclose(x, dode.sample(denoiser, noise, "ddim", 4), rtol=1e-2)
