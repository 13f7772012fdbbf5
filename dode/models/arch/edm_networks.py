"""EDM's networks (Karras et al. 2022), written for dode with the names of EDM's network pickles:
the U-Nets ``SongUNet`` (DDPM++ / NCSN++ of Song et al. 2021) and ``DhariwalUNet`` (ADM of
Dhariwal & Nichol 2021), and the preconditionings of the paper's Table 1 that wrap them,
``D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ))``:

============  ==========================  ===================  ==================  ========================
class         c_skip                      c_out                c_in                c_noise
============  ==========================  ===================  ==================  ========================
VPPrecond     1                           −σ                   1/√(σ²+1)           (M−1) t(σ)
VEPrecond     1                           σ                    1                   ln(σ/2)
iDDPMPrecond  1                           −σ                   1/√(σ²+1)           M−1−argmin_j |u_j − σ|
EDMPrecond    σ_d²/(σ²+σ_d²)              σ σ_d/√(σ²+σ_d²)     1/√(σ²+σ_d²)        ln(σ)/4
============  ==========================  ===================  ==================  ========================

with the VP schedule ``σ(t) = √(exp(β_d t²/2 + β_min t) − 1)`` and its inverse ``t(σ)``, and
iDDPM's discrete levels ``u_M = 0``, ``u_{j−1} = √((u_j² + 1) / max(ᾱ_{j−1}/ᾱ_j, C_1) − 1)``,
``ᾱ_j = sin²(π j / (2 M (C_2 + 1)))``. The U-Net runs in float16 on CUDA when ``use_fp16`` (unless
``force_fp32``); ``D`` is float32. Class labels are one-hot vectors.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dode.models.arch.edm_layers import Conv2d, FourierEmbedding, GroupNorm, Linear, PositionalEmbedding, UNetBlock

__all__ = ["SongUNet", "DhariwalUNet", "VPPrecond", "VEPrecond", "iDDPMPrecond", "EDMPrecond", "UNETS", "PRECONDS"]


class SongUNet(nn.Module):
    """DDPM++ (``embedding_type='positional'``, standard encoder) and NCSN++ (``'fourier'``,
    ``encoder_type='residual'``, filter ``[1, 3, 3, 1]``) as EDM parametrises them: per level a
    downsampling block (after the first), ``num_blocks`` blocks (attention at ``attn_resolutions``),
    a mirrored decoder with one more block per level taking the skips, and output heads
    (``aux_norm``/``aux_conv``) at the last level, or at every level with ``decoder_type='skip'``."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2),
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.10, label_dropout: float = 0, embedding_type: str = "positional",
                 channel_mult_noise: int = 1, encoder_type: str = "standard", decoder_type: str = "standard",
                 resample_filter: Sequence[int] = (1, 1)):
        for key, val, valid in (("embedding_type", embedding_type, ("positional", "fourier")),
                                ("encoder_type", encoder_type, ("standard", "skip", "residual")),
                                ("decoder_type", decoder_type, ("standard", "skip"))):
            if val not in valid:
                raise ValueError(f"SongUNet: {key}={val!r}; valid: {', '.join(valid)}")
        super().__init__()
        self.label_dropout = label_dropout
        emb, noise = model_channels * channel_mult_emb, model_channels * channel_mult_noise
        blk = dict(emb_channels=emb, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                   resample_filter=resample_filter, resample_proj=True, adaptive_scale=False)
        self.map_noise = (PositionalEmbedding(noise, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(noise))
        self.map_label = Linear(label_dim, noise) if label_dim else None
        self.map_augment = Linear(augment_dim, noise, bias=False) if augment_dim else None
        self.map_layer0 = Linear(noise, emb)
        self.map_layer1 = Linear(emb, emb)

        self.enc = nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels, 3)
                cout = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **blk)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True, resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, 3, down=True, fused_resample=True,
                                                                   resample_filter=resample_filter)
                    caux = cout
            for i in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{i}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **blk)
        skips = [b.out_channels for name, b in self.enc.items() if "aux" not in name]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **blk)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **blk)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **blk)
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = i == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{i}"] = UNetBlock(cin, cout, attention=attn, **blk)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None,
                augment_labels: Tensor | None = None) -> Tensor:
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # [sin, cos]
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                labels = labels * (torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout).to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips, aux = [], x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        out = head = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                out = block(out)
            elif "aux_norm" in name:
                head = block(x)
            elif "aux_conv" in name:
                head = block(F.silu(head))
                out = head if out is None else head + out
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return out


class DhariwalUNet(nn.Module):
    """ADM as EDM parametrises it: per level a downsampling block (after the first) and ``num_blocks``
    blocks with adaptive scale and 64-channel attention heads at ``attn_resolutions``, the mirrored
    decoder with one more block per level, then ``out_norm → SiLU → out_conv``."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult: Sequence[int] = (1, 2, 3, 4),
                 channel_mult_emb: int = 4, num_blocks: int = 3, attn_resolutions: Sequence[int] = (32, 16, 8),
                 dropout: float = 0.10, label_dropout: float = 0):
        super().__init__()
        self.label_dropout = label_dropout
        emb = model_channels * channel_mult_emb
        blk = dict(emb_channels=emb, channels_per_head=64, dropout=dropout)
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb)
        self.map_layer1 = Linear(emb, emb)
        self.map_label = Linear(label_dim, emb, bias=False) if label_dim else None

        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels * mult, 3)
                cout = model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **blk)
            for i in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{i}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **blk)
        skips = [b.out_channels for b in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **blk)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **blk)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **blk)
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{i}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **blk)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None,
                augment_labels: Tensor | None = None) -> Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                labels = labels * (torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout).to(labels.dtype)
            emb = emb + self.map_label(labels)
        emb = F.silu(emb)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


UNETS = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


def _unet(model_type: str, **kwargs) -> nn.Module:
    if model_type not in UNETS:
        raise ValueError(f"model_type={model_type!r}; valid: {', '.join(UNETS)}")
    return UNETS[model_type](**kwargs)


class _Precond(nn.Module):
    """``D(x; σ) = c_skip x + c_out F(c_in x; c_noise)`` around a U-Net ``model`` (see the module table)."""

    out_scale = 1  # the U-Net's output channels per image channel

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool, model_type: str,
                 model_kwargs: dict):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16 = use_fp16
        self.model = _unet(model_type, img_resolution=img_resolution, in_channels=img_channels,
                           out_channels=img_channels * self.out_scale, label_dim=label_dim, **model_kwargs)

    def coefficients(self, sigma: Tensor) -> tuple:
        """``(c_skip, c_out, c_in, c_noise)`` for float32 ``sigma`` of shape ``(batch, 1, 1, 1)``."""
        raise NotImplementedError

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None, force_fp32: bool = False,
                **model_kwargs) -> Tensor:
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        fp16 = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        dtype = torch.float16 if fp16 else torch.float32
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        out = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return c_skip * x + c_out * out[:, :self.img_channels].to(torch.float32)


class VPPrecond(_Precond):
    """Variance preserving (Song et al. 2021) preconditioning; ``sigma_min = σ(epsilon_t)``, ``sigma_max = σ(1)``."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000, epsilon_t: float = 1e-5,
                 model_type: str = "SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        self.sigma_min, self.sigma_max = float(self.sigma(epsilon_t)), float(self.sigma(1))

    def sigma(self, t: float | Tensor) -> Tensor:
        """``σ(t) = √(exp(β_d t²/2 + β_min t) − 1)``."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        """``t(σ) = (√(β_min² + 2 β_d ln(1 + σ²)) − β_min) / β_d``."""
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma: Tensor) -> tuple:
        return 1, -sigma, 1 / (sigma ** 2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(_Precond):
    """Variance exploding (Song et al. 2021) preconditioning."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.02, sigma_max: float = 100, model_type: str = "SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def coefficients(self, sigma: Tensor) -> tuple:
        return 1, sigma, 1, (0.5 * sigma).log()


class iDDPMPrecond(_Precond):
    """Improved DDPM (Nichol & Dhariwal 2021) preconditioning on the discrete levels ``u`` (a buffer);
    the U-Net predicts 2·channels, of which the first half is used."""

    out_scale = 2

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 C_1: float = 0.001, C_2: float = 0.008, M: int = 1000, model_type: str = "DhariwalUNet",
                 **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.C_1, self.C_2, self.M = C_1, C_2, M
        u = torch.zeros(M + 1)
        for j in range(M, 0, -1):
            ratio = (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=C_1)
            u[j - 1] = ((u[j] ** 2 + 1) / ratio - 1).sqrt()
        self.register_buffer("u", u)
        self.sigma_min, self.sigma_max = float(u[M - 1]), float(u[0])

    def alpha_bar(self, j: int | Tensor) -> Tensor:
        """``ᾱ_j = sin²(π j / (2 M (C_2 + 1)))``."""
        return (0.5 * math.pi * torch.as_tensor(j) / self.M / (self.C_2 + 1)).sin() ** 2

    def level_index(self, sigma: Tensor) -> Tensor:
        """The index of the level ``u_j`` nearest to each σ (shape of ``sigma``)."""
        dist = torch.cdist(sigma.to(self.u.device).to(torch.float32).reshape(1, -1, 1), self.u.reshape(1, -1, 1))
        return dist.argmin(2).reshape(sigma.shape).to(sigma.device)

    def coefficients(self, sigma: Tensor) -> tuple:
        c_noise = self.M - 1 - self.level_index(sigma).to(torch.float32)
        return 1, -sigma, 1 / (sigma ** 2 + 1).sqrt(), c_noise


class EDMPrecond(_Precond):
    """EDM's own preconditioning (the paper's Table 1, "ours") with data standard deviation ``sigma_data``."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0, sigma_max: float = float("inf"), sigma_data: float = 0.5,
                 model_type: str = "DhariwalUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def coefficients(self, sigma: Tensor) -> tuple:
        sd2 = self.sigma_data ** 2
        return (sd2 / (sigma ** 2 + sd2), sigma * self.sigma_data / (sigma ** 2 + sd2).sqrt(),
                1 / (sd2 + sigma ** 2).sqrt(), sigma.log() / 4)


PRECONDS = {c.__name__: c for c in (VPPrecond, VEPrecond, iDDPMPrecond, EDMPrecond)}
