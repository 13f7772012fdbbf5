"""Tiny networks with the official key names and config helpers, shared by the checkpoint tests
(no real weights are needed: none exist on the test machines)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dode.models.arch import ADMUNet, DDPMUNet

CONF = Path(__file__).resolve().parents[2] / "conf" / "checkpoint"
MINE = sorted(p for p in CONF.glob("*.yaml") if not p.name.startswith("digits"))


def md5(path: Path) -> str:
    """The md5 hex digest of a file."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def sigma_at(schedule, steps) -> torch.Tensor:
    """σ of integer training steps n (τ = n + 1), float64."""
    return schedule.sigma(torch.as_tensor(steps, dtype=torch.float64) + 1)


def vp_reference(eps_fn, x, sigma, schedule):
    """D(x, σ) = x − σ ε(x_vp, t) computed by hand from an ε-network at integer steps."""
    a = torch.rsqrt(1 + sigma**2).to(x.dtype).reshape(-1, 1, 1, 1)
    t = schedule.t(sigma) - 1
    assert torch.equal(t, torch.round(t))
    eps = eps_fn(x * a, t.to(torch.float32))
    return x - sigma.to(x.dtype).reshape(-1, 1, 1, 1) * eps


def cfg_from(name: str, **over) -> DictConfig:
    """conf/checkpoint/<name>.yaml with the entries ``over`` merged in."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg.merge_with(OmegaConf.create(over))
    return cfg


def tiny_ddpm(seed=0, **kw) -> tuple[DDPMUNet, dict]:
    """A 16×16 DDIM-repository U-Net with random weights, and its ``architecture`` entry."""
    torch.manual_seed(seed)
    arch = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], dropout=0.1, resamp_with_conv=True)
    arch.update(kw)
    return DDPMUNet(resolution=16, **arch).eval(), arch


# ``architecture`` entries of tiny ADM networks: improved-diffusion style, guided-diffusion style, classifier
ADM_IMPROVED = dict(model_channels=32, num_res_blocks=1, channel_mult=[1, 2], attention_resolutions=[8],
                    num_heads=2, num_head_channels=-1, use_scale_shift_norm=True, resblock_updown=False,
                    dropout=0.0, learn_sigma=True)
ADM_GUIDED = dict(ADM_IMPROVED, resblock_updown=True, num_head_channels=32, attention_resolutions=[16, 8])
CLF = dict(model_channels=32, num_res_blocks=1, channel_mult=[1, 2], attention_resolutions=[8],
           num_head_channels=32, use_scale_shift_norm=True, resblock_updown=True, pool="attention", out_channels=7)


def tiny_adm(arch, num_classes=None, seed=0) -> ADMUNet:
    """A 16×16 ADM U-Net of ``architecture`` entry ``arch`` (6 output channels with learned σ, else 3)."""
    torch.manual_seed(seed)
    kw = dict(arch)
    learn = kw.pop("learn_sigma")
    return ADMUNet(16, out_channels=6 if learn else 3, num_classes=num_classes, **kw).eval()
