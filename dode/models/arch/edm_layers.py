"""The building blocks of EDM's networks (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", App. F), written for dode with the class, parameter, buffer
and attribute names of EDM's network pickles, so that :mod:`dode.models.arch.edm_pickle` can
restore their tensors and check their settings without running the code a pickle carries.

Every layer casts its weights to the input's dtype (EDM runs its torso in float16 on GPUs when
``use_fp16``). Parameters are allocated empty: these classes are for loading trained weights.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Linear", "Conv2d", "GroupNorm", "UNetBlock", "PositionalEmbedding", "FourierEmbedding", "attention",
           "LAYERS"]


def _cast(t: Tensor | None, like: Tensor) -> Tensor | None:
    return None if t is None else t.to(like.dtype)


class Linear(nn.Module):
    """``y = x Wᵀ + b`` with ``W`` of shape ``(out_features, in_features)``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, _cast(self.weight, x), _cast(self.bias, x))


class Conv2d(nn.Module):
    """A ``kernel``×``kernel`` convolution (none when ``kernel == 0``) with optional 2× up- or
    downsampling by the separable FIR filter ``f fᵀ / (Σf)²`` (``resample_filter`` = ``f``).

    Unfused: resample (transposed depthwise convolution with 4·filter, or strided depthwise
    convolution) then convolve. ``fused_resample``: for ``up`` the resampling comes first with the
    padding shared between the two convolutions; for ``down`` the convolution comes first and the
    filter is applied to its output channels."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[float] = (1, 1), fused_resample: bool = False):
        if up and down:
            raise ValueError("Conv2d: up and down are exclusive")
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel)) if kernel else None
        self.bias = nn.Parameter(torch.empty(out_channels)) if kernel and bias else None
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f2d = (torch.outer(f, f) / f.sum() ** 2)[None, None]
        self.register_buffer("resample_filter", f2d if up or down else None)

    def forward(self, x: Tensor) -> Tensor:
        w, b, f = _cast(self.weight, x), _cast(self.bias, x), _cast(self.resample_filter, x)
        wp = w.shape[-1] // 2 if w is not None else 0
        fp = (f.shape[-1] - 1) // 2 if f is not None else 0
        cin, cout = self.in_channels, self.out_channels
        if self.fused_resample and w is not None and (self.up or self.down):
            if self.up:
                x = F.conv_transpose2d(x, (4 * f).tile(cin, 1, 1, 1), groups=cin, stride=2, padding=max(fp - wp, 0))
                x = F.conv2d(x, w, padding=max(wp - fp, 0))
            else:
                x = F.conv2d(x, w, padding=wp + fp)
                x = F.conv2d(x, f.tile(cout, 1, 1, 1), groups=cout, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, (4 * f).tile(cin, 1, 1, 1), groups=cin, stride=2, padding=fp)
            elif self.down:
                x = F.conv2d(x, f.tile(cin, 1, 1, 1), groups=cin, stride=2, padding=fp)
            if w is not None:
                x = F.conv2d(x, w, padding=wp)
        return x if b is None else x + b[None, :, None, None]


class GroupNorm(nn.Module):
    """Group norm with ``min(num_groups, num_channels // min_channels_per_group)`` groups."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, _cast(self.weight, x), _cast(self.bias, x), self.eps)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Single-head attention over positions: ``a[:, :, i] = Σ_j softmax_j(q_i·k_j / √c) v[:, :, j]`` for
    ``q, k, v`` of shape ``(batch·heads, c, positions)``; the weights are computed in float32."""
    logits = torch.einsum("ncq,nck->nqk", q.float(), (k / math.sqrt(k.shape[1])).float())
    weights = logits.softmax(dim=2).to(q.dtype)
    return torch.einsum("nqk,nck->ncq", weights, v)


class UNetBlock(nn.Module):
    """EDM's residual block (DDPM++, NCSN++ and ADM in one): ``norm0 → SiLU → conv0`` (with the
    block's resampling), the embedding added (``affine``; with ``adaptive_scale`` as scale and shift
    of ``norm1``), ``SiLU → dropout → conv1``, plus the (projected) input, times ``skip_scale``; then,
    with attention, ``x + proj(attention(qkv(norm2(x))))`` times ``skip_scale``."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, num_heads: int | None = None, channels_per_head: int = 64,
                 dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5,
                 resample_filter: Sequence[float] = (1, 1), resample_proj: bool = False, adaptive_scale: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        self.num_heads = 0 if not attention else num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        rs = dict(resample_filter=resample_filter)
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, **rs)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down, **rs)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1)
            self.proj = Conv2d(out_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        p = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = p.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h + p))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        h = (h + (self.skip(x) if self.skip is not None else x)) * self.skip_scale
        if self.num_heads:
            n, c = h.shape[:2]
            q, k, v = self.qkv(self.norm2(h)).reshape(n * self.num_heads, c // self.num_heads, 3, -1).unbind(2)
            h = (self.proj(attention(q, k, v).reshape(h.shape)) + h) * self.skip_scale
        return h


class PositionalEmbedding(nn.Module):
    """``[cos(t·f_j), sin(t·f_j)]`` with ``f_j = max_positions^(−j/d)``, ``j < num_channels/2``,
    ``d = num_channels/2`` (``− 1`` with ``endpoint``)."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, t: Tensor) -> Tensor:
        half = self.num_channels // 2
        j = torch.arange(half, dtype=torch.float32, device=t.device) / (half - (1 if self.endpoint else 0))
        angles = torch.outer(t, ((1 / self.max_positions) ** j).to(t.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features ``[cos(2π f t), sin(2π f t)]`` with the trained frequencies ``freqs``
    (a buffer; EDM draws them as 16·N(0, 1))."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.register_buffer("freqs", torch.empty(num_channels // 2))

    def forward(self, t: Tensor) -> Tensor:
        angles = torch.outer(t, (2 * math.pi * self.freqs).to(t.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


LAYERS = {c.__name__: c for c in (Linear, Conv2d, GroupNorm, UNetBlock, PositionalEmbedding, FourierEmbedding)}
