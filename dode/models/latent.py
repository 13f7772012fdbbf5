"""Latent text-to-image models: a local diffusers Stable Diffusion folder as a dode denoiser.

The folder is what ``StableDiffusionPipeline.save_pretrained`` writes (and what the Hub's SD
v1.x repositories hold): ``unet/`` (``UNet2DConditionModel``), ``vae/`` (``AutoencoderKL``),
``text_encoder/`` (``CLIPTextModel``), ``tokenizer/`` (``CLIPTokenizer``) and
``scheduler/scheduler_config.json`` (β schedule and prediction type: ε or v). Nothing is downloaded.

Sampling runs in latent space: the denoiser's state is the VAE latent ``z`` (shape
:attr:`LatentDenoiser.latent_shape`), its condition the CLIP embedding of each sample's prompt
(:meth:`LatentDenoiser.set_prompts`), and :meth:`LatentDenoiser.decode` maps the final latents to
images in [-1, 1] (``vae.decode(z / scaling_factor)``, in batches). Classifier-free guidance
(``guidance.scale``) uses the empty prompt's embedding as ∅ (:attr:`LatentDenoiser.null_condition`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from dode.core.denoisers import VPDenoiser
from dode.core.schedules import DiscreteVPSchedule
from dode.models.adapters import finish_denoiser
from dode.models.files import CheckpointError, checkpoint_label, error_summary, resolve_file
from dode.models.loaders import diffusers_schedule

__all__ = ["TextUNet", "LatentDenoiser", "load_diffusers_sd"]

PARTS = ("unet", "vae", "text_encoder", "tokenizer")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TextUNet(nn.Module):
    """A diffusers ``UNet2DConditionModel`` behind ``(z, t, encoder_hidden_states) → output`` (ε or v),
    run in the network's own dtype, returned in the caller's."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, z: Tensor, t: Tensor, encoder_hidden_states: Tensor | None = None) -> Tensor:
        if encoder_hidden_states is None:
            raise ValueError("a text-conditioned model needs prompts: call denoiser.set_prompts(list of str) "
                             "(dode-run: a dataset with captions, e.g. dataset=coco)")
        dt = self.net.dtype
        t = torch.as_tensor(t, device=z.device).float().expand(z.shape[0])
        out = self.net(z.to(dt), t, encoder_hidden_states=encoder_hidden_states.to(z.device, dt)).sample
        return out.to(z.dtype)


class LatentDenoiser(VPDenoiser):
    """A VP denoiser on VAE latents with text conditioning and a VAE decoder (see the module docstring)."""

    def __init__(self, unet: nn.Module, schedule: DiscreteVPSchedule, prediction: str, vae: nn.Module,
                 text_encoder: nn.Module, tokenizer, decode_batch: int = 16):
        super().__init__(TextUNet(unet), schedule, prediction)
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 0.18215))
        self.decode_batch = int(decode_batch)
        size = unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        self.latent_shape = (int(unet.config.in_channels), int(size), int(size))
        self.scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)  # pixels per latent along an axis
        self.null_condition = {"encoder_hidden_states": self.encode_prompts([""])}

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """The CLIP text embeddings ``(n, L, d)`` of ``prompts`` (padded/truncated to the tokenizer's
        ``model_max_length``, the text encoder's last hidden state, as the SD pipeline)."""
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        dev = next(self.text_encoder.parameters()).device
        return self.text_encoder(tok.input_ids.to(dev))[0].float()

    def set_prompts(self, prompts: Sequence[str]) -> None:
        """Condition the next calls on ``prompts`` (one per sample of the batch)."""
        self.model_kwargs["encoder_hidden_states"] = self.encode_prompts(prompts)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images in [-1, 1] ``(n, 3, H, W)`` of final latents ``z`` (``vae.decode(z / scaling_factor)``),
        decoded ``decode_batch`` at a time."""
        dt = self.vae.dtype
        out = [self.vae.decode(z.to(dt) / self.scaling_factor).sample.float().clamp(-1, 1)
               for z in latents.split(self.decode_batch)]
        return torch.cat(out).to(latents.dtype)


def _sd_folder(cfg: Mapping) -> Path:
    """The pipeline folder of ``cfg``, checked to hold every part (each missing one named)."""
    label = checkpoint_label(cfg)
    folder = resolve_file({**cfg, "is_dir": True})
    missing = [p for p in PARTS if not (folder / p).is_dir()]
    if not (folder / "scheduler" / "scheduler_config.json").is_file():
        missing.append("scheduler/scheduler_config.json")
    if missing:
        raise CheckpointError(f"{label}: {folder} is not a complete diffusers Stable Diffusion folder: missing "
                              f"{', '.join(missing)}. It must hold unet/, vae/, text_encoder/, tokenizer/ and "
                              f"scheduler/ (as `huggingface-cli download <repo> --local-dir {folder}` writes them)")
    return folder


def load_diffusers_sd(cfg: Mapping, device: torch.device | str | None = None) -> nn.Module:
    """A diffusers Stable Diffusion folder as a :class:`LatentDenoiser` (``loader: diffusers_sd``).
    Config keys: ``dtype`` of the networks (float32 default; float16 on GPUs), ``decode_batch``."""
    label = checkpoint_label(cfg)
    folder = _sd_folder(cfg)
    dtype = DTYPES.get(str(cfg.get("dtype") or "float32"))
    if dtype is None:
        raise CheckpointError(f"{label}: dtype must be one of {', '.join(DTYPES)}, got {cfg.get('dtype')!r}")
    try:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as e:
        raise CheckpointError(f"{label}: a Stable Diffusion folder needs the packages 'diffusers' and "
                              f"'transformers' (pip install 'dode[latent]'): {error_summary(e)}") from e
    parts = {}
    for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL), ("text_encoder", CLIPTextModel),
                      ("tokenizer", CLIPTokenizer)):
        try:
            kw = {} if name == "tokenizer" else {"torch_dtype": dtype}
            parts[name] = cls.from_pretrained(str(folder / name), local_files_only=True, **kw)
        except Exception as e:  # noqa: BLE001 - any failure is this part's file
            raise CheckpointError(f"{label}: cannot load {folder / name} as a {cls.__name__} ({error_summary(e)}); "
                                  f"is the download complete?") from e
    schedule, prediction = diffusers_schedule(folder, cfg)
    den = LatentDenoiser(parts["unet"], schedule, prediction, parts["vae"], parts["text_encoder"],
                         parts["tokenizer"], int(cfg.get("decode_batch") or 16))
    index = folder / "model_index.json"
    den.pipeline = json.loads(index.read_text()).get("_class_name") if index.is_file() else None
    res = den.latent_shape[1] * den.scale_factor
    if cfg.get("resolution") not in (None, res):
        raise CheckpointError(f"{label}: {folder} makes {res}×{res} images but the config says "
                              f"resolution={cfg.get('resolution')}; is it the right folder?")
    return finish_denoiser(den, cfg, folder, 0, res, int(parts["vae"].config.out_channels), device)
