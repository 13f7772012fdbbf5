"""Checkpoint loaders: every official on-disk format, written here from tiny random networks with the
official key names, loaded back through dode, and compared with the original module's outputs.
No real weights are needed (none exist on the test machines)."""
from __future__ import annotations

import copy
import hashlib
import pickle
import re
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dode.models.checkpoints import CheckpointError, load_checkpoint
from dode.errors import UserError
from dode.models.arch import ADMEncoderUNet, ADMUNet, DDPMUNet
from dode.core.schedules import DiscreteVPSchedule

CONF = Path(__file__).resolve().parents[2] / "conf" / "checkpoint"
MINE = sorted(p for p in CONF.glob("*.yaml") if not p.name.startswith("digits"))

torch.set_num_threads(1)


def md5(path: Path) -> str:
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


def cfg_from(name: str, **over):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg.merge_with(OmegaConf.create(over))
    return cfg


# ----------------------------------------------------------------------------------------------- configs

def test_configs_state_what_a_user_needs():
    assert len(MINE) >= 11
    for path in MINE:
        c = OmegaConf.to_container(OmegaConf.load(path))
        assert c["name"] == path.stem
        for key in ("loader", "file", "path", "md5", "resolution", "channels", "num_classes", "prediction",
                    "default_grid", "source", "description"):
            assert key in c, (path.name, key)
        assert c["md5"] is None or re.fullmatch(r"[0-9a-f]{32}", c["md5"])
        assert c["prediction"] in ("eps", "x0")
        assert c["source"], path.name
        if c["loader"] != "edm":
            assert c["schedule"]["kind"] in ("linear", "cosine")
    assert OmegaConf.load(CONF / "ddpm-cifar10.yaml").md5 == "1fa350b952534ae442b1d5235cce5cd3"
    assert OmegaConf.load(CONF / "adm-imagenet64-uncond.yaml").schedule.T == 4000
    assert OmegaConf.load(CONF / "adm-imagenet128-cond.yaml").classifier.scale == 1.25


def test_full_size_architectures_have_the_published_sizes():
    def count(m):
        return sum(p.numel() for p in m.parameters())

    with torch.device("meta"):
        assert count(DDPMUNet()) == 35_746_307  # DDPM CIFAR-10: 35.7 M
        assert count(DDPMUNet(ch_mult=(1, 2, 2, 2, 4), resolution=64)) == 78_700_803
        lsun = OmegaConf.to_container(OmegaConf.load(CONF / "adm-lsun-bedroom256.yaml").architecture)
        lsun.pop("learn_sigma")
        assert count(ADMUNet(256, out_channels=6, **lsun)) == 552_814_086


# ----------------------------------------------------------------------------------------------- DDPM

def test_ddpm_unet_has_the_official_key_names():
    keys = set(DDPMUNet(ch=32, ch_mult=(1, 2), attn_resolutions=(8,), resolution=16).state_dict())
    for k in ("temb.dense.0.weight", "temb.dense.1.bias", "conv_in.weight", "down.0.block.0.norm1.weight",
              "down.0.block.1.conv2.bias", "down.0.downsample.conv.weight", "down.1.block.0.nin_shortcut.weight",
              "down.1.attn.0.q.weight", "down.1.attn.1.proj_out.bias", "mid.block_1.temb_proj.weight",
              "mid.attn_1.k.weight", "mid.block_2.norm2.bias", "up.1.block.2.conv1.weight",
              "up.1.upsample.conv.weight", "up.1.attn.2.v.bias", "up.0.block.0.nin_shortcut.weight",
              "norm_out.weight", "conv_out.bias"):
        assert k in keys, k
    assert not any(k.startswith("down.1.downsample") or k.startswith("up.0.upsample") for k in keys)


def _ddim_to_diffusers(key: str, levels: int) -> str:
    """Our (DDIM repository) key → the diffusers UNet2DModel key of the same weight."""
    res = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
           "nin_shortcut": "conv_shortcut"}
    att = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
    simple = {"temb.dense.0": "time_embedding.linear_1", "temb.dense.1": "time_embedding.linear_2",
              "norm_out": "conv_norm_out", "conv_in": "conv_in", "conv_out": "conv_out"}
    head, param = key.rsplit(".", 1)
    if head in simple:
        return f"{simple[head]}.{param}"
    p = head.split(".")
    if p[0] == "mid":
        blk = {"block_1": "resnets.0", "attn_1": "attentions.0", "block_2": "resnets.1"}[p[1]]
        table = att if p[1] == "attn_1" else res
        return f"mid_block.{blk}.{table[p[2]]}.{param}"
    side, level = p[0], int(p[1])
    idx = level if side == "down" else levels - 1 - level
    prefix = f"{side}_blocks.{idx}"
    if p[2] == "block":
        return f"{prefix}.resnets.{p[3]}.{res[p[4]]}.{param}"
    if p[2] == "attn":
        return f"{prefix}.attentions.{p[3]}.{att[p[4]]}.{param}"
    return f"{prefix}.{'downsamplers' if side == 'down' else 'upsamplers'}.0.conv.{param}"


def test_ddpm_unet_matches_diffusers_independent_implementation():
    """diffusers' UNet2DModel configured as DDPM (how google/ddpm-* were converted) is an independent
    implementation of the same network: with the same weights, outputs agree."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    ref = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                      down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                      attention_head_dim=None, norm_eps=1e-6, norm_num_groups=32, flip_sin_to_cos=False, freq_shift=1,
                      downsample_padding=0).eval()
    ours = DDPMUNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0, resolution=16).eval()
    theirs = ref.state_dict()
    mapped = {}
    for k, v in ours.state_dict().items():
        w = theirs[_ddim_to_diffusers(k, 2)]
        mapped[k] = w.reshape(v.shape)
    ours.load_state_dict(mapped)
    x = torch.randn(3, 3, 16, 16)
    t = torch.tensor([0.0, 411.0, 999.0])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t), ref(x, t).sample, rtol=1e-4, atol=1e-4)


def _tiny_ddpm(seed=0, **kw):
    torch.manual_seed(seed)
    arch = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], dropout=0.1, resamp_with_conv=True)
    arch.update(kw)
    return DDPMUNet(resolution=16, **arch).eval(), arch


def test_ddpm_cifar10_plain_state_dict(tmp_path, monkeypatch):
    net, arch = _tiny_ddpm()
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
    net, arch = _tiny_ddpm(seed=1, ch_mult=[1, 2, 2])
    other, _ = _tiny_ddpm(seed=2, ch_mult=[1, 2, 2])
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

ADM_IMPROVED = dict(model_channels=32, num_res_blocks=1, channel_mult=[1, 2], attention_resolutions=[8],
                    num_heads=2, num_head_channels=-1, use_scale_shift_norm=True, resblock_updown=False,
                    dropout=0.0, learn_sigma=True)
ADM_GUIDED = dict(ADM_IMPROVED, resblock_updown=True, num_head_channels=32, attention_resolutions=[16, 8])
CLF = dict(model_channels=32, num_res_blocks=1, channel_mult=[1, 2], attention_resolutions=[8],
           num_head_channels=32, use_scale_shift_norm=True, resblock_updown=True, pool="attention", out_channels=7)


def _adm(arch, num_classes=None, seed=0):
    torch.manual_seed(seed)
    kw = dict(arch)
    learn = kw.pop("learn_sigma")
    return ADMUNet(16, out_channels=6 if learn else 3, num_classes=num_classes, **kw).eval()


def test_adm_has_the_official_key_names():
    keys = set(_adm(ADM_GUIDED, num_classes=5).state_dict())
    for k in ("time_embed.0.weight", "time_embed.2.bias", "label_emb.weight", "input_blocks.0.0.weight",
              "input_blocks.1.0.in_layers.0.weight", "input_blocks.1.0.in_layers.2.weight",
              "input_blocks.1.0.emb_layers.1.weight", "input_blocks.1.0.out_layers.0.bias",
              "input_blocks.1.0.out_layers.3.weight", "input_blocks.1.1.qkv.weight", "input_blocks.1.1.proj_out.bias",
              "input_blocks.1.1.norm.weight", "input_blocks.2.0.in_layers.2.weight",  # ResBlock(down=True)
              "input_blocks.3.0.skip_connection.weight", "middle_block.0.emb_layers.1.weight",
              "middle_block.1.qkv.weight", "middle_block.2.out_layers.3.bias",
              "output_blocks.0.0.skip_connection.weight", "output_blocks.1.2.in_layers.2.weight",  # up=True
              "out.0.weight", "out.2.weight"):
        assert k in keys, k
    improved = set(_adm(ADM_IMPROVED).state_dict())
    assert "input_blocks.2.0.op.weight" in improved and "output_blocks.1.2.conv.weight" in improved
    assert _adm(ADM_GUIDED).state_dict()["input_blocks.1.1.qkv.weight"].shape == (96, 32, 1)
    clf = ADMEncoderUNet(16, **{k: v for k, v in CLF.items()})
    ck = clf.state_dict()
    assert ck["out.2.positional_embedding"].shape == (64, 8 * 8 + 1)
    assert ck["out.2.c_proj.weight"].shape == (7, 64, 1) and "out.2.qkv_proj.weight" in ck


def test_adm_improved_diffusion_learned_sigma_and_rescaled_time(tmp_path):
    """improved-diffusion ImageNet-64 style: cosine T=4000, the network sees t·1000/4000, only the
    first 3 of 6 output channels (ε) are used."""
    net = _adm(ADM_IMPROVED)
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
    net = _adm(arch)
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
    net = _adm(ADM_GUIDED, num_classes=7)
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


# ----------------------------------------------------------------------------------------------- EDM

# A stand-in for EDM's torch_utils.persistence, written for this test: the same pickle format
# (a call to torch_utils.persistence._reconstruct_persistent_obj(meta) with the module's source).
FAKE_PERSISTENCE = '''
import copy, inspect, sys
_version = 6
_decorators = set()

def persistent_class(orig_class):
    if orig_class in _decorators:
        return orig_class
    src = inspect.getsource(sys.modules[orig_class.__module__])

    class Decorator(orig_class):
        _orig_module_src = src
        _orig_class_name = orig_class.__name__

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)

        def __reduce__(self):
            fields = list(super().__reduce__())
            fields += [None] * max(3 - len(fields), 0)
            if fields[0] is not _reconstruct_persistent_obj:
                meta = dict(type="class", version=_version, module_src=self._orig_module_src,
                            class_name=self._orig_class_name, state=fields[2])
                fields[0], fields[1], fields[2] = _reconstruct_persistent_obj, (meta,), None
            return tuple(fields)

    Decorator.__name__ = orig_class.__name__
    Decorator.__module__ = orig_class.__module__
    _decorators.add(Decorator)
    return Decorator

def _reconstruct_persistent_obj(meta):
    raise RuntimeError("the test writer cannot read pickles")
'''

FAKE_DNNLIB_UTIL = '''
class EasyDict(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name)
    def __setattr__(self, name, value):
        self[name] = value
'''

# A tiny EDM-style network module: EDM preconditioning (Karras et al. 2022, Table 1) around a small
# conv net, one-hot class labels, plus an augmentation-pipe-like class that uses torch_utils.misc.
NET_SOURCE = '''
import numpy as np
import torch
from torch_utils import persistence
from torch_utils import misc


@persistence.persistent_class
class TinyNet(torch.nn.Module):
    def __init__(self, img_channels, label_dim, width=16):
        super().__init__()
        self.map_noise = torch.nn.Linear(1, width)
        self.map_label = torch.nn.Linear(label_dim, width, bias=False) if label_dim else None
        self.conv_in = torch.nn.Conv2d(img_channels, width, 3, padding=1)
        self.conv_out = torch.nn.Conv2d(width, img_channels, 3, padding=1)

    def forward(self, x, noise_labels, class_labels):
        emb = self.map_noise(noise_labels.reshape(-1, 1))
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels)
        return self.conv_out(torch.nn.functional.silu(self.conv_in(x) + emb[:, :, None, None]))


@persistence.persistent_class
class EDMPrecond(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_data=0.5, **kwargs):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16, self.sigma_data = use_fp16, sigma_data
        self.sigma_min, self.sigma_max = 0, float("inf")
        self.model = TinyNet(img_channels, label_dim, **kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        F_x = self.model(c_in * x, c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return c_skip * x + c_out * F_x.to(torch.float32)


@persistence.persistent_class
class AugmentLike:
    def __init__(self, p=0.12):
        self.p = float(p)

    def eye(self):
        return misc.constant(np.eye(3))
'''


def _write_edm_pickle(tmp_path: Path, label_dim: int, x, sigma, labels, resolution: int = 8):
    """Build the network from real source files with the test's own persistence module, pickle it in
    EDM's format, compute the live original's output D(x, σ, one-hot labels), then remove every trace
    of the source (files, sys.path, sys.modules). Returns the pickle path and that output."""
    src = tmp_path / "edm_src"
    for rel, text in {"torch_utils/__init__.py": "", "torch_utils/persistence.py": FAKE_PERSISTENCE,
                      "torch_utils/misc.py": "import torch\ndef constant(v, **kw):\n    return torch.as_tensor(v)\n",
                      "dnnlib/__init__.py": "from .util import EasyDict\n", "dnnlib/util.py": FAKE_DNNLIB_UTIL,
                      "edm_training/__init__.py": "", "edm_training/networks.py": NET_SOURCE}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(textwrap.dedent(text))
    names = ("torch_utils", "torch_utils.persistence", "torch_utils.misc", "dnnlib", "dnnlib.util",
             "edm_training", "edm_training.networks")
    assert not any(n in sys.modules for n in names)
    sys.path.insert(0, str(src))
    try:
        import dnnlib  # the test's stand-in, from src
        from edm_training import networks

        torch.manual_seed(0)
        net = networks.EDMPrecond(img_resolution=resolution, img_channels=3, label_dim=label_dim, width=16).eval()
        data = dict(ema=net, augment_pipe=networks.AugmentLike(),
                    dataset_kwargs=dnnlib.EasyDict(path="datasets/x.zip", use_labels=bool(label_dim)))
        f = tmp_path / "net.pkl"
        with open(f, "wb") as fh:
            pickle.dump(data, fh)
        onehot = torch.nn.functional.one_hot(labels, label_dim).float() if labels is not None else None
        with torch.no_grad():
            want = net(x, sigma.float(), onehot)
    finally:
        sys.path.remove(str(src))
        for n in names:
            sys.modules.pop(n, None)
    shutil.rmtree(src)
    raw = f.read_bytes()
    assert b"torch_utils.persistence" in raw and b"_reconstruct_persistent_obj" in raw and b"dnnlib.util" in raw
    return f, want


@pytest.mark.parametrize("name,label_dim", [("edm-cifar10-32x32-cond-vp", 10), ("edm-ffhq-64x64-uncond-vp", 0)])
def test_edm_persistent_pickle(tmp_path, name, label_dim):
    x = torch.randn(3, 3, 8, 8)
    sigma = torch.tensor([0.002, 1.0, 80.0], dtype=torch.float64)
    labels = torch.tensor([1, 9, 4]) if label_dim else None
    f, want = _write_edm_pickle(tmp_path, label_dim, x, sigma, labels)
    den = load_checkpoint(cfg_from(name, path=str(f), resolution=8))
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules  # registered only while loading
    assert (den.num_classes, den.resolution, den.channels, den.prediction) == (label_dim, 8, 3, "x0")
    assert den.default_grid == "edm" and (den.sigma_min, den.sigma_max) == (0.002, 80.0)
    if label_dim:
        den.model_kwargs["class_labels"] = labels
    with torch.no_grad():
        torch.testing.assert_close(den(x, sigma), want, rtol=0, atol=0)
        torch.testing.assert_close(copy.deepcopy(den)(x, sigma), want, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="num_classes"):  # the file is not what the config says
        load_checkpoint(cfg_from(name, path=str(f), resolution=8, num_classes=label_dim + 3))


def test_edm_compat_round_trip_and_module_restore(tmp_path):
    """dode's own persistent_class writes the same format it reads; real modules are put back."""
    from dode.models.arch import edm_compat

    sentinel = object()
    sys.modules["dnnlib"] = sentinel  # pretend a real dnnlib is imported
    try:
        with edm_compat.compat_modules():
            assert sys.modules["dnnlib"] is not sentinel
            from torch_utils import persistence  # noqa: F401
            mod = edm_compat._module_from_source(textwrap.dedent(NET_SOURCE))
            net = mod.EDMPrecond(img_resolution=8, img_channels=3, width=16)
            blob = pickle.dumps(dict(ema=net))
        assert sys.modules["dnnlib"] is sentinel
    finally:
        sys.modules.pop("dnnlib", None)
    back = edm_compat.load_persistent_pickle(__import__("io").BytesIO(blob))["ema"]
    x, s = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        torch.testing.assert_close(back(x, s), net(x, s), rtol=0, atol=0)
    assert back.init_kwargs.width == 16


def test_edm_pickle_needing_missing_names_fails_clearly(tmp_path):
    blob = b"\x80\x04\x95\x1b\x00\x00\x00\x00\x00\x00\x00\x8c\x0ftorch_utils.ops\x94\x8c\x04gone\x94\x93\x94."
    f = tmp_path / "bad.pkl"
    f.write_bytes(blob)
    with pytest.raises(CheckpointError, match="torch_utils.ops.gone"):
        load_checkpoint(cfg_from("edm-cifar10-32x32-uncond-vp", path=str(f)))
    f.write_bytes(pickle.dumps({"ema": 3}))
    with pytest.raises(CheckpointError, match="not an EDM network pickle"):
        load_checkpoint(cfg_from("edm-cifar10-32x32-uncond-vp", path=str(f)))


# ----------------------------------------------------------------------------------------------- errors

def test_missing_file_says_where_to_get_it_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DODE_CHECKPOINT_DIR", str(tmp_path))
    for path in MINE:
        cfg = OmegaConf.load(path)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(cfg)
        msg = str(info.value)
        assert isinstance(info.value, UserError)
        assert Path(cfg.file).name in msg and "checkpoint.path=" in msg and str(tmp_path) in msg, msg
        assert any(s.split()[0] in msg for s in cfg.source)
    cfg = cfg_from("ddpm-cifar10", path=str(tmp_path / "elsewhere.ckpt"))
    with pytest.raises(CheckpointError, match=r"checkpoint.path=.*elsewhere.ckpt does not exist"):
        load_checkpoint(cfg)


def test_missing_classifier_names_its_own_key(tmp_path):
    net = _adm(ADM_GUIDED, num_classes=7)
    f = tmp_path / "128x128_diffusion.pt"
    torch.save(net.state_dict(), f)
    cfg = cfg_from("adm-imagenet128-cond", path=str(f), resolution=16, num_classes=7, architecture=ADM_GUIDED)
    cfg.classifier.path = str(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="checkpoint.classifier.path="):
        load_checkpoint(cfg)


def test_checksum_mismatch(tmp_path):
    net, arch = _tiny_ddpm()
    f = tmp_path / "model-790000.ckpt"
    torch.save(net.state_dict(), f)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(cfg_from("ddpm-cifar10", path=str(f), resolution=16, architecture=arch))
    msg = str(info.value)
    assert "md5" in msg and "1fa350b952534ae442b1d5235cce5cd3" in msg and md5(f) in msg and str(f) in msg
    assert "checkpoint.md5=null" in msg
    load_checkpoint(cfg_from("ddpm-cifar10", path=str(f), resolution=16, architecture=arch, md5=None))


def test_state_dict_that_does_not_fit(tmp_path):
    net, arch = _tiny_ddpm()
    f = tmp_path / "ckpt.pth"
    torch.save(net.state_dict(), f)
    wrong = dict(arch, ch_mult=[1, 2, 2])
    with pytest.raises(CheckpointError, match=r"ckpt.pth does not fit the DDPM U-Net.*missing keys"):
        load_checkpoint(cfg_from("ddpm-celeba64", path=str(f), resolution=16, architecture=wrong))
    g = tmp_path / "imagenet64_uncond_100M_1500K.pt"
    torch.save(_adm(ADM_IMPROVED).state_dict(), g)
    with pytest.raises(CheckpointError, match=r"127 shape mismatches \(e.g. time_embed.0.weight: file \(128, 32\) vs model \(256, 64\)"):
        load_checkpoint(cfg_from("adm-imagenet64-uncond", path=str(g), resolution=16,
                                 architecture=dict(ADM_IMPROVED, model_channels=64)))
    f.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read .*ckpt.pth"):
        load_checkpoint(cfg_from("ddpm-celeba64", path=str(f), resolution=16, architecture=arch))


def test_unknown_loader_lists_known_ones():
    with pytest.raises(CheckpointError, match="known: .*adm.*ddpm.*diffusers.*edm"):
        load_checkpoint({"name": "x", "loader": "nope"})


# ----------------------------------------------------------------------------------------------- labels
