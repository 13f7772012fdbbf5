"""The ADM U-Net (Dhariwal & Nichol 2021; Nichol & Dhariwal 2021) and its encoder-only classifier,
with the parameter names of openai/guided-diffusion and openai/improved-diffusion.

improved-diffusion's ``UNetModel`` is guided-diffusion's with ``resblock_updown=False`` and
``num_head_channels=-1``, so one implementation loads both families of state dicts:

* ``time_embed.{0,2}`` (two linear layers, width ``4·model_channels``), ``label_emb`` (class-conditional);
* ``input_blocks.{i}.{j}``, ``middle_block.{j}``, ``output_blocks.{i}.{j}``: each entry a short
  sequence of a residual block (``in_layers.{0,2}``, ``emb_layers.1``, ``out_layers.{0,3}``,
  ``skip_connection``), an attention block (``norm``, ``qkv``, ``proj_out``, 1-D convolutions) and
  a resampler (``op`` for a strided convolution, ``conv`` for upsampling);
* ``out.{0,2}`` — the final group norm and convolution. The classifier's ``out.2`` is an attention
  pool (``positional_embedding``, ``qkv_proj``, ``c_proj``).

Group norms use 32 groups, computed in float32 (the checkpoints were trained in fp16). Attention
heads are split before q/k/v (the "legacy" order of both repositories); the classifier's attention
pool splits q/k/v first. The timestep embedding is ``[cos(t·f_j), sin(t·f_j)]``,
``f_j = 10000^(−j/(dim/2))``.

Hyper-parameters follow the repositories' ``create_model``/``create_classifier``:
:func:`adm_channel_mult` gives the default ``channel_mult`` for an image size and attention
resolutions are given in pixels (``attention_resolutions=(32, 16, 8)``) and converted to
downsampling factors.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def adm_channel_mult(image_size: int) -> tuple:
    """The ``channel_mult`` guided-/improved-diffusion pick for an image size."""
    table = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4),
             32: (1, 2, 2, 2)}
    if image_size not in table:
        raise ValueError(f"no default channel_mult for image size {image_size}; give channel_mult explicitly")
    return table[image_size]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """ADM's sinusoidal embedding, cosines first; float32, shape ``(batch, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([angles.cos(), angles.sin()], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """Group norm evaluated in float32, returned in the input's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


class TimestepBlock(nn.Module):
    """A layer that takes the embedding as a second argument."""


class EmbedSequential(nn.Sequential):
    """``nn.Sequential`` that hands the embedding to the layers that take it."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block; with ``use_scale_shift_norm`` the embedding modulates the second norm as
    ``norm(h)·(1 + scale) + shift`` (FiLM), else it is added. ``up``/``down`` resample inside."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(_norm(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


def _attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(qᵀk / sqrt(c)) over (batch·heads, c, length) tensors, softmax in float32."""
    scale = 1.0 / math.sqrt(math.sqrt(q.shape[1]))
    w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    w = torch.softmax(w.float(), dim=-1).type(w.dtype)
    return torch.einsum("bts,bcs->bct", w, v)


class AttentionBlock(nn.Module):
    """Self-attention over all positions; heads split before q/k/v (legacy order)."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1):
        super().__init__()
        if num_head_channels != -1:
            if channels % num_head_channels:
                raise ValueError(f"{channels} channels are not divisible by num_head_channels={num_head_channels}")
            num_heads = channels // num_head_channels
        self.num_heads = num_heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length = qkv.shape[-1]
        q, k, v = qkv.reshape(b * self.num_heads, -1, length).chunk(3, dim=1)
        h = _attend(q, k, v).reshape(b, c, length)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the mean token (plus a learned position embedding) attends to
    all pixels; q/k/v split before heads."""

    def __init__(self, spatial: int, embed_dim: int, num_head_channels: int, output_dim: int | None = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spatial**2 + 1) / embed_dim**0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim or embed_dim, 1)
        self.num_heads = embed_dim // num_head_channels

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1) + self.positional_embedding[None].to(x.dtype)
        q, k, v = self.qkv_proj(x).chunk(3, dim=1)
        length = x.shape[-1]
        heads = [t.reshape(b * self.num_heads, -1, length) for t in (q, k, v)]
        h = _attend(*heads).reshape(b, c, length)
        return self.c_proj(h)[:, :, 0]


def _to_fp16(module: nn.Module) -> None:
    # as the repositories' convert_module_to_f16: convolutions only (the embedding MLPs stay float32)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        module.half()


class _Encoder(nn.Module):
    """Shared encoder half (time embedding, input blocks, middle block) of the U-Net and classifier."""

    def _build_encoder(self, image_size, in_channels, model_channels, num_res_blocks, attention_resolutions,
                       dropout, channel_mult, conv_resample, num_heads, num_head_channels,
                       use_scale_shift_norm, resblock_updown):
        if channel_mult is None:
            channel_mult = adm_channel_mult(image_size)
        self.image_size, self.in_channels, self.model_channels = image_size, in_channels, model_channels
        self.channel_mult = tuple(channel_mult)
        # attention resolutions are pixels; the repositories store downsampling factors
        self.attention_ds = {image_size // int(r) for r in attention_resolutions}
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        res_kw = dict(use_scale_shift_norm=use_scale_shift_norm)
        attn_kw = dict(num_heads=num_heads, num_head_channels=num_head_channels)

        ch = int(self.channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_widths, ds = [ch], 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, emb_dim, dropout, int(mult * model_channels), **res_kw)]
                ch = int(mult * model_channels)
                if ds in self.attention_ds:
                    layers.append(AttentionBlock(ch, **attn_kw))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_widths.append(ch)
            if level != len(self.channel_mult) - 1:
                down = (ResBlock(ch, emb_dim, dropout, ch, down=True, **res_kw) if resblock_updown
                        else Downsample(ch, conv_resample, ch))
                self.input_blocks.append(EmbedSequential(down))
                skip_widths.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential(ResBlock(ch, emb_dim, dropout, **res_kw), AttentionBlock(ch, **attn_kw),
                                            ResBlock(ch, emb_dim, dropout, **res_kw))
        return ch, ds, skip_widths, emb_dim

    def _embed(self, t: Tensor, x: Tensor) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.time_embed(timestep_embedding(t, self.model_channels).to(self.time_embed[0].weight.dtype))

    @property
    def dtype(self) -> torch.dtype:
        return self.input_blocks[0][0].weight.dtype


class ADMUNet(_Encoder):
    """guided-diffusion's ``UNetModel`` (2-D). Called as ``net(x, t, y=None)``; ``y`` are class indices
    for a class-conditional network (``num_classes`` set). With ``learn_sigma`` the repositories set
    ``out_channels = 2·in_channels``; the first half is ε̂."""

    def __init__(self, image_size: int, in_channels: int = 3, model_channels: int = 128, out_channels: int = 3,
                 num_res_blocks: int = 2, attention_resolutions: Sequence[int] = (16, 8), dropout: float = 0.0,
                 channel_mult: Sequence[float] | None = None, conv_resample: bool = True,
                 num_classes: int | None = None, use_fp16: bool = False, num_heads: int = 1,
                 num_head_channels: int = -1, num_heads_upsample: int = -1, use_scale_shift_norm: bool = False,
                 resblock_updown: bool = False):
        super().__init__()
        num_heads_upsample = num_heads if num_heads_upsample == -1 else num_heads_upsample
        self.out_channels = out_channels
        self.num_classes = num_classes or None
        ch, ds, skip_widths, emb_dim = self._build_encoder(
            image_size, in_channels, model_channels, num_res_blocks, attention_resolutions, dropout, channel_mult,
            conv_resample, num_heads, num_head_channels, use_scale_shift_norm, resblock_updown)
        if self.num_classes is not None:
            self.label_emb = nn.Embedding(self.num_classes, emb_dim)
        res_kw = dict(use_scale_shift_norm=use_scale_shift_norm)
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(num_res_blocks + 1):
                layers: list[nn.Module] = [
                    ResBlock(ch + skip_widths.pop(), emb_dim, dropout, int(model_channels * mult), **res_kw)]
                ch = int(model_channels * mult)
                if ds in self.attention_ds:
                    layers.append(AttentionBlock(ch, num_heads_upsample, num_head_channels))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, emb_dim, dropout, ch, up=True, **res_kw) if resblock_updown
                                  else Upsample(ch, conv_resample, ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        input_ch = int(self.channel_mult[0] * model_channels)
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(input_ch, out_channels, 3, padding=1))
        if use_fp16:
            self.convert_to_fp16()

    def convert_to_fp16(self) -> "ADMUNet":
        """Convolutions of the torso in float16, as the repositories' ``use_fp16``."""
        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            part.apply(_to_fp16)
        return self

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("give class labels y if and only if the network is class-conditional")
        emb = self._embed(t, x)
        if y is not None:
            emb = emb + self.label_emb(y.long())
        h = x.type(self.dtype)
        hs = []
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))


class ADMEncoderUNet(_Encoder):
    """guided-diffusion's ``EncoderUNetModel`` (noisy-image classifier), ``pool='attention'`` or
    ``'adaptive'``. Called as ``classifier(x, t)`` → logits."""

    def __init__(self, image_size: int, in_channels: int = 3, model_channels: int = 128, out_channels: int = 1000,
                 num_res_blocks: int = 2, attention_resolutions: Sequence[int] = (32, 16, 8), dropout: float = 0.0,
                 channel_mult: Sequence[float] | None = None, conv_resample: bool = True, use_fp16: bool = False,
                 num_heads: int = 1, num_head_channels: int = 64, use_scale_shift_norm: bool = True,
                 resblock_updown: bool = True, pool: str = "attention"):
        super().__init__()
        ch, ds, _, _ = self._build_encoder(
            image_size, in_channels, model_channels, num_res_blocks, attention_resolutions, dropout, channel_mult,
            conv_resample, num_heads, num_head_channels, use_scale_shift_norm, resblock_updown)
        self.pool = pool
        if pool == "attention":
            if num_head_channels == -1:
                raise ValueError("attention pooling needs num_head_channels")
            self.out = nn.Sequential(_norm(ch), nn.SiLU(),
                                     AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels))
        elif pool == "adaptive":
            self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                                     nn.Conv2d(ch, out_channels, 1), nn.Flatten())
        else:
            raise ValueError(f"unsupported classifier pool {pool!r}; dode implements 'attention' and 'adaptive'")
        if use_fp16:
            self.convert_to_fp16()

    def convert_to_fp16(self) -> "ADMEncoderUNet":
        for part in (self.input_blocks, self.middle_block):
            part.apply(_to_fp16)
        return self

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self._embed(t, x)
        h = x.type(self.dtype)
        for block in self.input_blocks:
            h = block(h, emb)
        h = self.middle_block(h, emb)
        return self.out(h.type(x.dtype))
