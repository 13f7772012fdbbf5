"""The loaders of the paper's checkpoint formats: ``fn(cfg, device=None) → denoiser``.

* ``ddpm`` — DDIM-repository U-Net state dicts (:func:`load_ddpm`);
* ``adm`` — guided-/improved-diffusion state dicts, optionally with classifier guidance (:func:`load_adm`);
* ``diffusers`` — a diffusers ``UNet2DModel`` folder (:func:`load_diffusers`);
* ``edm`` — EDM network pickles (:func:`load_edm`).

Each finds and checks its file (:mod:`dode.models.files`), builds the network (:mod:`dode.models.arch`,
imported on first use), and wraps it (:mod:`dode.models.adapters`). They are registered by name in
:data:`dode.models.checkpoints.LOADERS`.

The EDM loader reads EDM's ``.pkl`` files without running their code (an allow-list unpickler that
rebuilds dode's own EDM networks); only ``checkpoint.trust_pickle=true`` unpickles them as EDM does,
which runs the code they carry — for trusted files only.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from dode.core.denoisers import EDMDenoiser, VPDenoiser
from dode.core.schedules import DiscreteVPSchedule
from dode.models.adapters import ClassifierGuidance, DiscreteNet, EDMNet, finish_denoiser, schedule_from_config
from dode.models.files import (CheckpointError, checkpoint_label, error_summary, extract_state_dict,
                               load_state_into, load_torch_file, resolve_file, verify_checksum)

__all__ = ["load_ddpm", "load_adm", "load_diffusers", "load_edm", "diffusers_schedule"]

Device = torch.device | str | None
log = logging.getLogger("dode.models")


# --------------------------------------------------------------------------------------------------- DDPM

def load_ddpm(cfg: Mapping, device: Device = None) -> nn.Module:
    """DDPM U-Net state dicts of the DDIM repository's ``Model`` (pytorch_diffusion CIFAR-10 ckpt, DDIM
    ``ckpt.pth`` lists)."""
    from dode.models.arch.ddpm_unet import DDPMUNet
    path = resolve_file(cfg)
    verify_checksum(path, cfg)
    arch = dict(cfg.get("architecture") or {})
    res, channels = int(cfg.get("resolution", 32)), int(cfg.get("channels", 3))
    net = DDPMUNet(in_channels=channels, out_ch=arch.pop("out_ch", channels), resolution=res, **arch)
    state = extract_state_dict(load_torch_file(path, cfg), cfg, path)
    load_state_into(net, state, cfg, path, "DDPM U-Net (DDIM repository Model)")
    schedule = schedule_from_config(cfg.get("schedule"), cfg)
    model = DiscreteNet(net, "ddpm", channels, name=str(cfg.get("name")))
    den = VPDenoiser(model, schedule, prediction=cfg.get("prediction", "eps"))
    return finish_denoiser(den, cfg, path, 0, res, channels, device)


# --------------------------------------------------------------------------------------------------- ADM

def _adm_kwargs(arch: Mapping, res: int, channels: int) -> dict:
    """ADM constructor arguments from a config's ``architecture`` (image size and channels by default)."""
    kw = dict(arch)
    kw.setdefault("image_size", res)
    kw.setdefault("in_channels", channels)
    kw["attention_resolutions"] = tuple(int(r) for r in kw.get("attention_resolutions", (16, 8)))
    if kw.get("channel_mult") is not None:
        kw["channel_mult"] = tuple(kw["channel_mult"])
    return kw


def load_adm(cfg: Mapping, device: Device = None) -> nn.Module:
    """guided-diffusion / improved-diffusion state dicts; optional classifier guidance (``classifier``)."""
    from dode.models.arch.adm import ADMEncoderUNet, ADMUNet
    path = resolve_file(cfg)
    verify_checksum(path, cfg)
    res, channels = int(cfg.get("resolution")), int(cfg.get("channels", 3))
    num_classes = int(cfg.get("num_classes") or 0)
    arch = dict(cfg.get("architecture") or {})
    learn_sigma = bool(arch.pop("learn_sigma", False))
    arch.setdefault("out_channels", 2 * channels if learn_sigma else channels)
    arch["num_classes"] = num_classes or None
    arch["use_fp16"] = bool(cfg.get("fp16") or False)
    net = ADMUNet(**_adm_kwargs(arch, res, channels))
    load_state_into(net, extract_state_dict(load_torch_file(path, cfg), cfg, path), cfg, path, "ADM U-Net")
    schedule = schedule_from_config(cfg.get("schedule"), cfg)
    time_scale = 1000.0 / schedule.T if cfg.get("rescale_timesteps") else 1.0
    model: nn.Module = DiscreteNet(net, "adm", channels, time_scale, num_classes, name=str(cfg.get("name")))
    ccfg = cfg.get("classifier")
    if ccfg and (ccfg.get("file") or ccfg.get("path")):
        ccfg = dict(ccfg)
        ccfg.setdefault("name", f"{cfg.get('name')} classifier")
        cpath = resolve_file(ccfg, key="checkpoint.classifier")
        verify_checksum(cpath, ccfg, key="checkpoint.classifier")
        carch = dict(ccfg.get("architecture") or {})
        carch["use_fp16"] = bool(cfg.get("fp16") or False)
        clf = ADMEncoderUNet(**_adm_kwargs(carch, res, channels))
        load_state_into(clf, extract_state_dict(load_torch_file(cpath, ccfg), ccfg, cpath), ccfg, cpath,
                        "ADM classifier (EncoderUNet)")
        clf.eval().requires_grad_(False)
        model = ClassifierGuidance(model, clf, schedule, float(ccfg.get("scale", 1.0)), time_scale)
    den = VPDenoiser(model, schedule, prediction=cfg.get("prediction", "eps"))
    return finish_denoiser(den, cfg, path, num_classes, res, channels, device)


# --------------------------------------------------------------------------------------------------- diffusers

_DIFFUSERS_PRED = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_DIFFUSERS_BETAS = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}


def diffusers_schedule(folder: Path, cfg: Mapping) -> tuple[DiscreteVPSchedule, str]:
    """Schedule and prediction from the folder's ``scheduler_config.json`` (also looked for in
    ``../scheduler/`` and ``scheduler/``), else the config's ``schedule`` and ``prediction``."""
    sc_path = next((p for p in (folder / "scheduler_config.json", folder.parent / "scheduler" /
                                "scheduler_config.json", folder / "scheduler" / "scheduler_config.json")
                    if p.is_file()), None)
    prediction = cfg.get("prediction", "eps")
    if sc_path is None:
        return schedule_from_config(cfg.get("schedule"), cfg), prediction
    sc = json.loads(sc_path.read_text())
    T = int(sc.get("num_train_timesteps", 1000))
    if sc.get("trained_betas"):
        b = torch.tensor(sc["trained_betas"], dtype=torch.float64)
        sched = DiscreteVPSchedule(torch.cumprod(1 - b, 0), name="trained_betas")
    else:
        kind = _DIFFUSERS_BETAS.get(sc.get("beta_schedule", "linear"))
        if kind is None:
            raise CheckpointError(f"{checkpoint_label(cfg)}: {sc_path} uses beta_schedule "
                                  f"{sc.get('beta_schedule')!r}, which dode does not know "
                                  f"(linear, scaled_linear, squaredcos_cap_v2)")
        sched = schedule_from_config(dict(kind=kind, T=T, beta_start=sc.get("beta_start", 1e-4),
                                          beta_end=sc.get("beta_end", 0.02)), cfg)
    pred = _DIFFUSERS_PRED.get(sc.get("prediction_type", "epsilon"))
    if pred is None:
        raise CheckpointError(f"{checkpoint_label(cfg)}: unknown prediction_type {sc.get('prediction_type')!r} "
                              f"in {sc_path}")
    return sched, pred


def load_diffusers(cfg: Mapping, device: Device = None) -> nn.Module:
    """A diffusers ``UNet2DModel`` folder (config.json + diffusion_pytorch_model.safetensors/.bin)."""
    cfg = {**cfg, "is_dir": True}
    label = checkpoint_label(cfg)
    folder = resolve_file(cfg)
    if folder.is_file() or not (folder / "config.json").is_file():
        sub = folder / "unet"
        if sub.is_dir() and (sub / "config.json").is_file():
            folder = sub
        else:
            raise CheckpointError(f"{label}: {folder} is not a diffusers model folder (no config.json); "
                                  f"give the folder holding config.json and diffusion_pytorch_model.safetensors")
    weights = [folder / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")]
    weight = next((w for w in weights if w.is_file()), None)
    if weight is None:
        raise CheckpointError(f"{label}: {folder} has config.json but no diffusion_pytorch_model.safetensors "
                              f"or .bin; the download is incomplete")
    verify_checksum(weight, cfg)
    try:
        from diffusers import UNet2DModel
    except ImportError as e:
        raise CheckpointError(f"{label}: loading a diffusers folder needs the 'diffusers' package "
                              f"(pip install diffusers)") from e
    try:
        net = UNet2DModel.from_pretrained(str(folder), local_files_only=True,
                                          use_safetensors=weight.suffix == ".safetensors")
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{label}: diffusers could not load {folder} as a UNet2DModel "
                              f"({error_summary(e)})") from e
    conf = net.config
    channels = int(conf.in_channels)
    res = conf.sample_size if isinstance(conf.sample_size, int) else conf.sample_size[0]
    num_classes = int(conf.num_class_embeds or 0)
    for key, have in (("resolution", res), ("channels", channels)):
        if cfg.get(key) not in (None, have):
            raise CheckpointError(f"{label}: {folder} is a {key}={have} model but the config says "
                                  f"{key}={cfg.get(key)}; is it the right folder?")
    schedule, prediction = diffusers_schedule(folder, cfg)
    model = DiscreteNet(net, "diffusers", channels, 1.0, num_classes, name=str(cfg.get("name")))
    den = VPDenoiser(model, schedule, prediction=prediction)
    return finish_denoiser(den, cfg, folder, num_classes, res, channels, device)


# --------------------------------------------------------------------------------------------------- EDM

def load_edm(cfg: Mapping, device: Device = None) -> nn.Module:
    """An EDM network pickle (``dict(ema=EDMPrecond, ...)``), read without running any of its code: the
    networks it names become dode's own (:mod:`dode.models.arch.edm_pickle`) and anything else in it is
    refused. ``trust_pickle: true`` unpickles it as EDM does instead, RUNNING the code it carries
    (:mod:`dode.models.arch.edm_compat`; trusted files only). EDM2 pickles are refused either way.
    The network's resolution, channels and classes must agree with the config's (where both state them)."""
    from dode.models.arch.edm_compat import CompatError, load_persistent_pickle
    from dode.models.arch.edm_pickle import EDMPickleError, check_not_edm2, load_edm_pickle
    label = checkpoint_label(cfg)
    trust = cfg.get("trust_pickle")
    if trust not in (None, True, False):
        raise CheckpointError(f"{label}: checkpoint.trust_pickle must be true or false, got {trust!r}")
    path = resolve_file(cfg)
    verify_checksum(path, cfg)
    if trust:
        log.warning(f"{label}: checkpoint.trust_pickle=true: unpickling {path} runs the code it carries")
    try:
        data = load_persistent_pickle(path) if trust else load_edm_pickle(path)
        check_not_edm2(data.get("ema") if isinstance(data, Mapping) else None)
    except (CompatError, EDMPickleError) as e:
        raise CheckpointError(f"{label}: cannot load {path}: {e}") from e
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{label}: cannot unpickle {path} as an EDM network pickle "
                              f"({error_summary(e)}). "
                              f"Is it the right file, and completely downloaded?") from e
    net = data.get("ema") if isinstance(data, Mapping) else None
    if not isinstance(net, nn.Module):
        raise CheckpointError(f"{label}: {path} is not an EDM network pickle (expected a dict with an "
                              f"'ema' network, got {type(data).__name__})")
    net.eval().requires_grad_(False)
    have = dict(resolution=getattr(net, "img_resolution", None), channels=getattr(net, "img_channels", None),
                num_classes=getattr(net, "label_dim", None))
    for key, val in have.items():
        if val is not None and cfg.get(key) is not None and int(cfg[key]) != int(val):
            raise CheckpointError(f"{label}: {path} holds a network with {key}={val} but the config says "
                                  f"{key}={cfg[key]}; is it the right file for this config?")
    num_classes = int(have["num_classes"] if have["num_classes"] is not None else cfg.get("num_classes") or 0)
    res = int(have["resolution"] or cfg.get("resolution"))
    channels = int(have["channels"] or cfg.get("channels", 3))
    fp16 = cfg.get("fp16")
    model = EDMNet(net, num_classes, force_fp32=None if fp16 is None else not fp16, name=str(cfg.get("name")))
    den = EDMDenoiser(model, float(cfg.get("sigma_min", 0.002)), float(cfg.get("sigma_max", 80.0)))
    return finish_denoiser(den, cfg, path, num_classes, res, channels, device)
