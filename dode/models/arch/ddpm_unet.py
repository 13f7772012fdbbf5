"""The DDPM U-Net (Ho et al. 2020) with the parameter names of the DDIM repository's ``Model``.

The DDIM repository (ermongroup/ddim, ``models/diffusion.py``) and the pytorch_diffusion port of the
original TensorFlow DDPM code share one layout of the state dict, so :class:`DDPMUNet` loads both
the CIFAR-10 EMA checkpoint ``model-790000.ckpt`` and the CelebA-64 ``ckpt.pth`` unchanged:

* ``temb.dense.{0,1}`` — the two linear layers of the timestep embedding (width ``4·ch``);
* ``conv_in``; ``down.{level}.block.{i}`` / ``down.{level}.attn.{i}`` / ``down.{level}.downsample.conv``;
* ``mid.block_1``, ``mid.attn_1``, ``mid.block_2``;
* ``up.{level}.block.{i}`` / ``up.{level}.attn.{i}`` / ``up.{level}.upsample.conv`` (``up`` indexed by
  level, coarsest last, although it runs coarsest first);
* ``norm_out``, ``conv_out``.

A residual block holds ``norm1, conv1, temb_proj, norm2, conv2`` and, when its width changes,
``nin_shortcut`` (1×1). An attention block holds ``norm, q, k, v, proj_out`` (all 1×1 convolutions,
one head). Group norms use 32 groups and ε = 1e-6.

The network is called as ``model(x, t)`` with ``t`` the training step (a float tensor of shape
``(batch,)`` is accepted, integers are exact), and returns ε̂ (``out_ch`` channels).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """DDPM's timestep embedding: ``[sin(t·f_j), cos(t·f_j)]`` with ``f_j = 10000^(−j/(dim/2 − 1))``."""
    if t.ndim != 1:
        raise ValueError(f"timesteps must have shape (batch,), got {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(10000.0) / (half - 1)))
    angles = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GroupNorm–swish–conv twice, the timestep embedding added in between, plus a skip path."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        # (b, pixels, c): softmax(q kᵀ / sqrt(c)) v
        q, k, v = (conv(h).flatten(2).transpose(1, 2) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, c, height, width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve the resolution: a stride-2 3×3 convolution after padding right/bottom by one (or 2×2
    average pooling when ``with_conv`` is false)."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "conv"):
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """Double the resolution by nearest-neighbour repetition, then an optional 3×3 convolution."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class _Level(nn.Module):
    """One resolution level: residual blocks, their attention blocks, an optional resampler."""

    def __init__(self):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Container(nn.Module):
    pass


class DDPMUNet(nn.Module):
    """DDPM's ε-prediction U-Net; constructor arguments as the DDIM repository's ``config.model``.

    CIFAR-10: ``DDPMUNet()`` (the defaults, 35.7 M parameters); CelebA 64:
    ``DDPMUNet(ch_mult=(1, 2, 2, 2, 4), resolution=64)``.
    """

    def __init__(self, ch: int = 128, out_ch: int = 3, ch_mult: Sequence[int] = (1, 2, 2, 2),
                 num_res_blocks: int = 2, attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1,
                 in_channels: int = 3, resolution: int = 32, resamp_with_conv: bool = True):
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        attn_resolutions = {int(r) for r in attn_resolutions}
        self.ch, self.out_ch, self.in_channels, self.resolution = ch, out_ch, in_channels, resolution
        self.num_res_blocks = num_res_blocks
        self.num_resolutions = len(ch_mult)
        temb_ch = 4 * ch

        self.temb = _Container()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, temb_ch), nn.Linear(temb_ch, temb_ch)])
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        # encoder: record the width of every feature map pushed onto the skip stack
        res, width = resolution, ch
        skip_widths = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(ch_mult):
            lvl = _Level()
            for _ in range(num_res_blocks):
                lvl.block.append(ResnetBlock(width, ch * mult, temb_ch, dropout))
                width = ch * mult
                if res in attn_resolutions:
                    lvl.attn.append(AttnBlock(width))
                skip_widths.append(width)
            if level != self.num_resolutions - 1:
                lvl.downsample = Downsample(width, resamp_with_conv)
                res //= 2
                skip_widths.append(width)
            self.down.append(lvl)

        self.mid = _Container()
        self.mid.block_1 = ResnetBlock(width, width, temb_ch, dropout)
        self.mid.attn_1 = AttnBlock(width)
        self.mid.block_2 = ResnetBlock(width, width, temb_ch, dropout)

        # decoder: built coarsest first, stored by level index
        ups: list[_Level] = []
        for level in reversed(range(self.num_resolutions)):
            lvl = _Level()
            for _ in range(num_res_blocks + 1):
                lvl.block.append(ResnetBlock(width + skip_widths.pop(), ch * ch_mult[level], temb_ch, dropout))
                width = ch * ch_mult[level]
                if res in attn_resolutions:
                    lvl.attn.append(AttnBlock(width))
            if level != 0:
                lvl.upsample = Upsample(width, resamp_with_conv)
                res *= 2
            ups.append(lvl)
        self.up = nn.ModuleList(reversed(ups))

        self.norm_out = _norm(width)
        self.conv_out = nn.Conv2d(width, out_ch, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = sinusoidal_embedding(t, self.ch).to(x.dtype)
        temb = self.temb.dense[1](F.silu(self.temb.dense[0](temb)))

        hs = [self.conv_in(x)]
        for lvl in self.down:
            for i, block in enumerate(lvl.block):
                h = block(hs[-1], temb)
                hs.append(lvl.attn[i](h) if len(lvl.attn) else h)
            if hasattr(lvl, "downsample"):
                hs.append(lvl.downsample(hs[-1]))

        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)

        for lvl in reversed(self.up):
            for i, block in enumerate(lvl.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if len(lvl.attn):
                    h = lvl.attn[i](h)
            if hasattr(lvl, "upsample"):
                h = lvl.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
