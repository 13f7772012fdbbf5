"""CompVis latent diffusion checkpoints (Rombach et al. 2022, github.com/CompVis/latent-diffusion) as a
dode denoiser: the model's ``config.yaml`` and its PyTorch Lightning ``.ckpt`` (``loader: ldm_compvis``).

The ``.ckpt`` is read with ``torch.load(weights_only=True)``: no pickled code runs. Lightning's extras
(callbacks, loop state) are pickled objects of ``pytorch_lightning``/``lightning`` classes; when they are
all that ``weights_only`` refuses, they are read as inert placeholders and only ``state_dict`` is kept;
any other object is refused. From the state dict:

* ``model.diffusion_model.*`` (the openaimodel U-Net, unconditional) → diffusers ``UNet2DModel``;
  diffusers' ``convert_ldm_unet_checkpoint`` renames the blocks; the legacy attention blocks
  (``norm``, ``qkv`` as one 1-D conv with channels ordered [head][q, k, v][dim], ``proj_out``) are
  split here into ``to_q``, ``to_k``, ``to_v``, ``to_out.0``;
* ``first_stage_model.*`` (the VQ autoencoder, e.g. VQ-f4) → diffusers ``VQModel`` through
  ``convert_ldm_vae_checkpoint`` and the codebook ``quantize.embedding.weight``.

The schedule is the config's: LDM's ``linear`` β is ``β_n = (√β_start + n/(T−1)·(√β_end − √β_start))²``
(``linear_start``, ``linear_end``, ``timesteps``); checked against the checkpoint's ``alphas_cumprod``
buffer when it has one. ε-prediction (``parameterization: eps``). Sampling runs on latents
``(z_channels, image_size, image_size)``; :meth:`LDMDenoiser.decode` is ``VQ.decode(z / scale_factor)``
(``scale_factor`` of the config, 1 when unset, as LDM's default), quantizing to the codebook first
as LDM's ``decode_first_stage`` does.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from dode.core.denoisers import VPDenoiser
from dode.core.schedules import DiscreteVPSchedule
from dode.models.adapters import finish_denoiser
from dode.models.files import CheckpointError, checkpoint_label, error_summary, resolve_file

__all__ = ["LDMConfig", "LDMDenoiser", "UNetEps", "read_ldm_config", "read_state_dict", "ldm_schedule", "unet_from_compvis",
           "vq_from_compvis", "load_ldm_compvis"]

UNET, FIRST_STAGE = "model.diffusion_model.", "first_stage_model."
LIGHTNING = ("pytorch_lightning.", "lightning.", "lightning_fabric.")  # the modules of Lightning's extras


@dataclass(frozen=True)
class LDMConfig:
    """What dode reads of an LDM ``config.yaml`` (``model.params``)."""

    unet: dict           # unet_config.params
    ddconfig: dict       # first_stage_config.params.ddconfig
    embed_dim: int
    n_embed: int
    linear_start: float
    linear_end: float
    timesteps: int
    scale_factor: float
    image_size: int      # latent side


def read_ldm_config(path: Path, label: str) -> LDMConfig:
    """The :class:`LDMConfig` of an LDM ``config.yaml``; refuses what dode cannot run (conditioning,
    other β schedules or parameterizations, non-VQ first stages)."""
    import yaml

    try:
        p = yaml.safe_load(path.read_text())["model"]["params"]
        unet, first = p["unet_config"]["params"], p["first_stage_config"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise CheckpointError(f"{label}: {path} is not an LDM config.yaml (model.params.unet_config and "
                              f"first_stage_config): {error_summary(e)}") from e
    problems = []
    if p.get("conditioning_key") or unet.get("context_dim") or unet.get("num_classes"):
        problems.append("a conditional model (dode runs the unconditional LDMs)")
    if p.get("beta_schedule", "linear") != "linear" or p.get("parameterization", "eps") != "eps":
        problems.append(f"beta_schedule {p.get('beta_schedule')!r} / parameterization {p.get('parameterization')!r} "
                        "(dode reads linear + eps)")
    if "VQModel" not in str(first.get("target", "")):
        problems.append(f"first stage {first.get('target')!r} (dode reads VQModelInterface)")
    if problems:
        raise CheckpointError(f"{label}: {path} describes {'; '.join(problems)}")
    fp = first["params"]
    return LDMConfig(dict(unet), dict(fp["ddconfig"]), int(fp["embed_dim"]), int(fp["n_embed"]),
                     float(p.get("linear_start", 1e-4)), float(p.get("linear_end", 2e-2)),
                     int(p.get("timesteps", 1000)), float(p.get("scale_factor", 1.0)), int(unet["image_size"]))


class _Inert:
    """A placeholder for a pickled Lightning object: built and filled, never run."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state) -> None:
        pass


def _load_weights_only(path: Path, label: str):
    """``torch.load(weights_only=True)`` of ``path``; pickled Lightning objects as :class:`_Inert`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):  # torch < 2.6
            raise CheckpointError(f"{label}: {path} pickles objects beside its tensors ({error_summary(e)}); "
                                  "reading them as inert placeholders needs torch >= 2.6") from None
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        other = [g for g in found if not g.startswith(LIGHTNING)]
        if other:
            raise CheckpointError(f"{label}: {path} pickles objects other than tensors and Lightning's extras "
                                  f"({', '.join(other[:5])}); dode loads checkpoints without running pickled "
                                  "code and refuses it. Re-save its state_dict alone with torch.save") from None
        try:
            with torch.serialization.safe_globals([(_Inert, g) for g in found]):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e2:  # noqa: BLE001 - extras of a shape the placeholders cannot take (dict subclasses)
            raise CheckpointError(f"{label}: {path} pickles Lightning extras ({', '.join(found[:5])}) of a shape "
                                  f"dode's placeholders cannot take ({type(e2).__name__}); dode never runs pickled "
                                  "code. Re-save its state_dict alone with torch.save (in an environment you "
                                  "trust)") from None


def read_state_dict(path: Path, label: str) -> dict[str, Tensor]:
    """The ``state_dict`` of a Lightning ``.ckpt`` (or a bare state dict), loaded with
    ``weights_only=True``; Lightning objects become :class:`_Inert`, anything else is refused."""
    try:
        obj = _load_weights_only(path, label)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - a file torch cannot read at all
        raise CheckpointError(f"{label}: cannot read {path} ({error_summary(e)}); is the download complete?") from e
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not any(str(k).startswith(UNET) for k in sd):
        raise CheckpointError(f"{label}: {path} holds no LDM state_dict (no {UNET}* weights)")
    return sd


def ldm_schedule(cfg: LDMConfig) -> DiscreteVPSchedule:
    """LDM's ``linear`` schedule: β evenly spaced in √β from √linear_start to √linear_end, T steps."""
    betas = torch.linspace(cfg.linear_start ** 0.5, cfg.linear_end ** 0.5, cfg.timesteps, dtype=torch.float64) ** 2
    return DiscreteVPSchedule(torch.cumprod(1 - betas, 0), name="ldm_linear")


def _split_legacy_attention(sd: dict[str, Tensor], heads_of: Mapping[str, int]) -> dict[str, Tensor]:
    """openaimodel's attention keys (``…attentions.i.{norm,qkv,proj_out}``) as diffusers' ``Attention``:
    ``qkv`` rows [head h][q|k|v][d] → ``to_q`` rows [h][d] (and k, v); 1-D convs → linear weights."""
    out = {}
    for k, v in sd.items():
        prefix, _, leaf = k.rpartition(".")
        block, _, part = prefix.rpartition(".")
        if ".attentions." not in k or part not in ("norm", "qkv", "proj_out"):
            out[k] = v
        elif part == "norm":
            out[f"{block}.group_norm.{leaf}"] = v
        elif part == "proj_out":
            out[f"{block}.to_out.0.{leaf}"] = v.reshape(v.shape[0], -1) if leaf == "weight" else v
        else:
            c = v.shape[0] // 3
            w = v.reshape(heads_of[block], 3, c // heads_of[block], -1)
            for i, name in enumerate(("to_q", "to_k", "to_v")):
                part = w[:, i].reshape(c, -1)
                out[f"{block}.{name}.{leaf}"] = part.squeeze(-1) if leaf == "bias" else part
    return out


def unet_from_compvis(sd: Mapping[str, Tensor], p: Mapping, label: str) -> nn.Module:
    """The openaimodel U-Net of ``sd`` (``model.diffusion_model.*``, config ``p``) as a diffusers
    ``UNet2DModel``: attention at the levels whose downsampling factor is in ``attention_resolutions``,
    ``num_head_channels`` per head, ``[cos, sin]`` timestep features (``flip_sin_to_cos``)."""
    from diffusers import UNet2DModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    if int(p.get("num_head_channels", -1)) <= 0 or p.get("use_scale_shift_norm") or p.get("resblock_updown") \
            or p.get("use_spatial_transformer") or p.get("use_new_attention_order"):
        raise CheckpointError(f"{label}: dode maps the LDM U-Net with num_head_channels set, legacy attention, "
                              f"no scale-shift norm and no resblock up/down (the LSUN/CelebA/FFHQ LDMs); got {dict(p)}")
    mult, ch = list(p["channel_mult"]), int(p["model_channels"])
    attn = [2 ** i in p["attention_resolutions"] for i in range(len(mult))]
    head = int(p["num_head_channels"])
    config = dict(sample_size=int(p["image_size"]), in_channels=int(p["in_channels"]),
                  out_channels=int(p["out_channels"]), block_out_channels=[ch * m for m in mult],
                  layers_per_block=int(p["num_res_blocks"]), attention_head_dim=head, norm_num_groups=32,
                  down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
                  up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
                  flip_sin_to_cos=True, freq_shift=0)
    unet = UNet2DModel(**config)
    heads = {n: m.heads for n, m in unet.named_modules() if n.rpartition(".")[0].endswith("attentions")}
    weights = _split_legacy_attention(convert_ldm_unet_checkpoint(dict(sd), config), heads)
    _load(unet, weights, label, "U-Net (model.diffusion_model.*)")
    return unet


def vq_from_compvis(sd: Mapping[str, Tensor], cfg: LDMConfig, label: str) -> nn.Module:
    """The VQ autoencoder of ``sd`` (``first_stage_model.*``) as a diffusers ``VQModel``."""
    from diffusers import VQModel
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    dd = cfg.ddconfig
    if dd.get("attn_resolutions"):
        raise CheckpointError(f"{label}: a first stage with attn_resolutions {dd['attn_resolutions']} has no "
                              "diffusers VQModel counterpart (VQ-f4 has none)")
    n = len(dd["ch_mult"])
    config = dict(in_channels=int(dd["in_channels"]), out_channels=int(dd["out_ch"]),
                  down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                  block_out_channels=[int(dd["ch"]) * m for m in dd["ch_mult"]],
                  layers_per_block=int(dd["num_res_blocks"]), latent_channels=int(dd["z_channels"]),
                  sample_size=int(dd["resolution"]), num_vq_embeddings=cfg.n_embed, vq_embed_dim=cfg.embed_dim,
                  norm_num_groups=32, scaling_factor=cfg.scale_factor)
    vq = VQModel(**config)
    weights = convert_ldm_vae_checkpoint(dict(sd), config)
    code = FIRST_STAGE + "quantize.embedding.weight"
    if code in sd:
        weights["quantize.embedding.weight"] = sd[code]
    _load(vq, weights, label, "first stage (first_stage_model.*)")
    return vq


def _load(net: nn.Module, weights: dict, label: str, what: str) -> None:
    missing = sorted(set(net.state_dict()) - set(weights))
    extra = sorted(set(weights) - set(net.state_dict()))
    try:
        if missing or extra:
            raise KeyError(f"missing keys {missing[:4]}, unexpected keys {extra[:4]}")
        net.load_state_dict(weights, strict=True)
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{label}: the checkpoint's {what} does not fit its config.yaml: "
                              f"{error_summary(e)}") from e


class UNetEps(nn.Module):
    """A diffusers ``UNet2DModel`` behind ``(z, t) → ε`` (t: one float step per sample, or one for all)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        return self.net(z, torch.as_tensor(t, device=z.device).float().expand(z.shape[0])).sample


class LDMDenoiser(VPDenoiser):
    """An unconditional LDM: the ε U-Net on latents and the VQ decoder (see the module docstring)."""

    def __init__(self, unet: nn.Module, schedule: DiscreteVPSchedule, vq: nn.Module, scale_factor: float,
                 decode_batch: int = 16):
        super().__init__(UNetEps(unet), schedule, "eps")
        self.vq = vq
        self.latent_scale = float(scale_factor)
        self.decode_batch = int(decode_batch)
        self.latent_shape = (int(unet.config.in_channels), int(unet.config.sample_size), int(unet.config.sample_size))
        self.scale_factor = 2 ** (len(vq.config.block_out_channels) - 1)  # pixels per latent along an axis
        # the config's numbers in the state dict, so the weights digest (run.json, fitted corrections) changes
        # with config.yaml's scale_factor or β schedule, not only with the .ckpt
        self.register_buffer("config_numbers", torch.cat([torch.tensor([self.latent_scale], dtype=torch.float64),
                                                          schedule.alphas_cumprod.to(torch.float64).cpu()]))

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images in [-1, 1] of final latents: ``VQ.decode(z / scale_factor)`` (codebook lookup first)."""
        out = [self.vq.decode(z / self.latent_scale).sample.clamp(-1, 1) for z in latents.split(self.decode_batch)]
        return torch.cat(out)


def load_ldm_compvis(cfg: Mapping, device: torch.device | str | None = None) -> nn.Module:
    """An LDM ``.ckpt`` (``file``/``path``) with its ``config.yaml`` (``ldm_config.file``/``path``) as an
    :class:`LDMDenoiser` (``loader: ldm_compvis``)."""
    label = checkpoint_label(cfg)
    ckpt = resolve_file(cfg)
    yaml_file = resolve_file({"name": cfg.get("name"), **dict(cfg.get("ldm_config") or {})}, "checkpoint.ldm_config")
    ldm = read_ldm_config(yaml_file, label)
    sd = read_state_dict(ckpt, label)
    schedule = ldm_schedule(ldm)
    stored = sd.get("alphas_cumprod")
    if stored is not None and not torch.allclose(stored.double(), schedule.alphas_cumprod, rtol=1e-5, atol=1e-7):
        raise CheckpointError(f"{label}: {ckpt}'s alphas_cumprod differ from the schedule of {yaml_file}; "
                              "is it the config of this checkpoint?")
    try:
        unet = unet_from_compvis(sd, ldm.unet, label)
        vq = vq_from_compvis(sd, ldm, label)
    except ImportError as e:
        raise CheckpointError(f"{label}: an LDM checkpoint needs the package 'diffusers' (pip install "
                              f"'dode[latent]'): {error_summary(e)}") from e
    den = LDMDenoiser(unet, schedule, vq, ldm.scale_factor, int(cfg.get("decode_batch") or 16))
    res = ldm.image_size * den.scale_factor
    if cfg.get("resolution") not in (None, res):
        raise CheckpointError(f"{label}: {yaml_file} makes {res}×{res} images but the config says "
                              f"resolution={cfg.get('resolution')}")
    return finish_denoiser(den, cfg, ckpt, 0, res, int(ldm.ddconfig["out_ch"]), device)
