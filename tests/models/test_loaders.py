"""The ddpm, adm and diffusers loaders: each official on-disk format, written here from tiny random
networks with the official key names, loaded back through dode, and compared with the original
module's outputs."""
from __future__ import annotations

import pytest
import torch

from dode.core.schedules import DiscreteVPSchedule
from dode.models.arch import ADMEncoderUNet
from dode.models.checkpoints import CheckpointError, load_checkpoint
from tiny_checkpoints import ADM_GUIDED, ADM_IMPROVED, CLF, cfg_from, md5, sigma_at, tiny_adm, tiny_ddpm, vp_reference


# ----------------------------------------------------------------------------------------------- DDPM

def test_ddpm_cifar10_plain_state_dict(tmp_path, monkeypatch):
    net, arch = tiny_ddpm()
    f = tmp_path / "ema_diffusion_cifar10_model" / "model-790000.ckpt"
    f.parent.mkdir()
    torch.save(net.state_dict(), f)
    monkeypatch.setenv("DODE_CHECKPOINT_DIR", str(tmp_path))
    den = load_checkpoint(cfg_from("ddpm-cifar10", md5=md5(f), resolution=16, architecture=arch))
    assert (den.num_classes, den.resolution, den.channels, den.prediction) == (0, 16, 3, "eps")
    assert den.default_grid == "time_uniform" and den.schedule.T == 1000
    sched = DiscreteVPSchedule.linear(1000)
    sigma = sigma_at(sched, [0, 250, 999])
    x = torch.randn(3, 3, 16, 16) * sigma.float().reshape(-1, 1, 1, 1)
    with torch.no_grad():
        got = den(x, sigma)
        want = vp_reference(net, x, sigma, sched)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with torch.no_grad():  # float64 states go through the float32 network and come back float64
        assert den(x.double(), sigma).dtype == torch.float64


def test_ddpm_celeba_list_with_ema_last_and_module_prefix(tmp_path):
    net, arch = tiny_ddpm(seed=1, ch_mult=[1, 2, 2])
    other, _ = tiny_ddpm(seed=2, ch_mult=[1, 2, 2])
    ema = {f"module.{k}": v for k, v in net.state_dict().items()}
    raw = {f"module.{k}": v for k, v in other.state_dict().items()}
    f = tmp_path / "ckpt.pth"
    torch.save([raw, {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999)}]}, 17, 123456, ema], f)
    den = load_checkpoint(cfg_from("ddpm-celeba64", path=str(f), resolution=16, architecture=arch))
    sched = den.schedule
    sigma = sigma_at(sched, [10, 500])
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(den(x, sigma), vp_reference(net, x, sigma, sched), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------- ADM

def test_adm_improved_diffusion_learned_sigma_and_rescaled_time(tmp_path):
    """improved-diffusion ImageNet-64 style: cosine T=4000, the network sees t·1000/4000, only the
    first 3 of 6 output channels (ε) are used."""
    net = tiny_adm(ADM_IMPROVED)
    f = tmp_path / "imagenet64_uncond_100M_1500K.pt"
    torch.save(net.state_dict(), f)
    den = load_checkpoint(cfg_from("adm-imagenet64-uncond", path=str(f), resolution=16, architecture=ADM_IMPROVED))
    assert den.schedule.T == 4000 and den.num_classes == 0
    sched = DiscreteVPSchedule.cosine(4000)
    sigma = sigma_at(sched, [0, 1999, 3999])
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        want = vp_reference(lambda xv, t: net(xv, t * 0.25)[:, :3], x, sigma, sched)
        torch.testing.assert_close(den(x, sigma), want, rtol=0, atol=0)


def test_adm_lsun_style_guided_architecture(tmp_path):
    arch = dict(ADM_GUIDED, dropout=0.1)
    net = tiny_adm(arch)
    f = tmp_path / "lsun_bedroom.pt"
    torch.save(net.state_dict(), f)
    den = load_checkpoint(cfg_from("adm-lsun-bedroom256", path=str(f), resolution=16, architecture=arch))
    sched = DiscreteVPSchedule.linear(1000)
    sigma = sigma_at(sched, [3, 700])
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = vp_reference(lambda xv, t: net(xv, t)[:, :3], x, sigma, sched)
        torch.testing.assert_close(den(x, sigma), want, rtol=0, atol=0)
    half = load_checkpoint(cfg_from("adm-lsun-bedroom256", path=str(f), resolution=16, architecture=arch, fp16=True))
    assert half.model.net.input_blocks[1][0].in_layers[2].weight.dtype == torch.float16
    assert half.model.net.time_embed[0].weight.dtype == torch.float32  # as guided-diffusion: convolutions only
    with torch.no_grad():
        torch.testing.assert_close(half(x, sigma), want, rtol=0, atol=0.05)


def test_adm_class_conditional_with_classifier_guidance(tmp_path):
    net = tiny_adm(ADM_GUIDED, num_classes=7)
    torch.manual_seed(5)
    clf = ADMEncoderUNet(16, **CLF).eval()
    f, g = tmp_path / "128x128_diffusion.pt", tmp_path / "128x128_classifier.pt"
    torch.save(net.state_dict(), f)
    torch.save(clf.state_dict(), g)
    cfg = cfg_from("adm-imagenet128-cond", path=str(f), resolution=16, num_classes=7, architecture=ADM_GUIDED)
    cfg.classifier.path, cfg.classifier.architecture = str(g), CLF
    den = load_checkpoint(cfg)
    assert den.num_classes == 7 and den.schedule.T == 1000
    sched = DiscreteVPSchedule.linear(1000)
    sigma = sigma_at(sched, [50, 600])
    x = torch.randn(2, 3, 16, 16)
    y = torch.tensor([3, 6])

    def eps_guided(xv, t):
        eps = net(xv, t, y=y)[:, :3]
        xin = xv.detach().requires_grad_(True)
        logp = torch.log_softmax(clf(xin, t), dim=-1)[torch.arange(2), y].sum()
        (grad,) = torch.autograd.grad(logp, xin)
        abar = sched.alphas_cumprod[t.long()].float().reshape(-1, 1, 1, 1)
        return eps - 1.25 * (1 - abar).sqrt() * grad

    want = vp_reference(eps_guided, x, sigma, sched).detach()
    den.model_kwargs["class_labels"] = y
    with torch.inference_mode():  # the gradient is taken even inside inference mode
        got = den(x, sigma)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, vp_reference(lambda xv, t: net(xv, t, y=y)[:, :3], x, sigma, sched).detach())
    den.model_kwargs.clear()
    with pytest.raises(ValueError, match="class_labels"):
        den(x, sigma)


# ----------------------------------------------------------------------------------------------- diffusers

def test_diffusers_folder_with_scheduler_config(tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    net = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 32), layers_per_block=1,
                      down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                      norm_num_groups=32).eval()
    folder = tmp_path / "ddpm-cifar10-32"
    net.save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=500, beta_start=2e-4, beta_end=0.03).save_pretrained(folder)
    assert (folder / "diffusion_pytorch_model.safetensors").is_file() and (folder / "scheduler_config.json").is_file()
    den = load_checkpoint(cfg_from("diffusers-ddpm-cifar10-32", path=str(folder), resolution=16))
    assert den.schedule.T == 500 and den.resolution == 16 and den.prediction == "eps"
    sched = DiscreteVPSchedule.linear(500, 2e-4, 0.03)
    sigma = sigma_at(sched, [0, 123, 499])
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        want = vp_reference(lambda xv, t: net(xv, t).sample, x, sigma, sched)
        torch.testing.assert_close(den(x, sigma), want, rtol=0, atol=0)
    # the older .bin format, and no scheduler_config.json: the config's schedule is used
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "scheduler_config.json").unlink()
    net.save_pretrained(folder, safe_serialization=False)
    assert (folder / "diffusion_pytorch_model.bin").is_file()
    den = load_checkpoint(cfg_from("diffusers-ddpm-cifar10-32", path=str(folder), resolution=16))
    assert den.schedule.T == 1000
    sigma = sigma_at(den.schedule, [7, 900])
    with torch.no_grad():
        want = vp_reference(lambda xv, t: net(xv, t).sample, x[:2], sigma, den.schedule)
        torch.testing.assert_close(den(x[:2], sigma), want, rtol=0, atol=0)
    (folder / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(CheckpointError, match="no diffusion_pytorch_model"):
        load_checkpoint(cfg_from("diffusers-ddpm-cifar10-32", path=str(folder)))
    with pytest.raises(CheckpointError, match="not a diffusers model folder"):
        load_checkpoint(cfg_from("diffusers-ddpm-cifar10-32", path=str(tmp_path)))
