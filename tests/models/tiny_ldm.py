"""A tiny CompVis-format latent diffusion model written from the architecture's description, independent of
diffusers: an openaimodel-style U-Net (``input_blocks``/``middle_block``/``output_blocks``, ResBlocks with
``in_layers``/``emb_layers``/``out_layers``, legacy ``qkv`` attention) and a VQ autoencoder (``encoder``,
``decoder``, ``quantize``, ``quant_conv``, ``post_quant_conv``), with the key names of LDM checkpoints.
Their forward passes are the references the loaded denoiser and decoder must equal."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.nn import functional as F

UNET = dict(image_size=8, in_channels=3, out_channels=3, model_channels=32, attention_resolutions=[2],
            num_res_blocks=2, channel_mult=[1, 2, 2], num_head_channels=16)
DD = dict(double_z=False, z_channels=3, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
          num_res_blocks=1, attn_resolutions=[], dropout=0.0)
SCHEDULE = dict(linear_start=0.0015, linear_end=0.0195, timesteps=1000)


def gn(c: int, eps: float = 1e-5) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=eps)


class ResBlock(nn.Module):
    """h = in_layers(x) + emb_layers(emb); out = skip(x) + out_layers(h)."""

    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.in_layers = nn.Sequential(gn(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, cout))
        self.out_layers = nn.Sequential(gn(cout), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x, emb):
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention, qkv channels ordered [head][q, k, v][dim] (the legacy order)."""

    def __init__(self, c: int, head_channels: int):
        super().__init__()
        self.heads = c // head_channels
        self.norm = gn(c)
        self.qkv = nn.Conv1d(c, 3 * c, 1)
        self.proj_out = nn.Conv1d(c, c, 1)

    def forward(self, x, emb=None):
        b, c, hh, ww = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat)).reshape(b * self.heads, -1, hh * ww)
        q, k, v = qkv.chunk(3, dim=1)
        d = q.shape[1]
        w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(d), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
        return (flat + self.proj_out(a)).reshape(b, c, hh, ww)


class Down(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.op = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x, emb=None):
        return self.op(x)


class Up(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, emb=None):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Seq(nn.Sequential):
    """A Sequential whose ResBlocks also take the time embedding."""

    def forward(self, x, emb):
        for m in self:
            x = m(x, emb) if isinstance(m, (ResBlock, AttentionBlock, Down, Up)) else m(x)
        return x


class OpenaiUNet(nn.Module):
    """The unconditional openaimodel U-Net of ``UNET``-style parameters."""

    def __init__(self, p: dict):
        super().__init__()
        mc, mult, nrb, attn = p["model_channels"], p["channel_mult"], p["num_res_blocks"], p["attention_resolutions"]
        emb, hc = 4 * mc, p["num_head_channels"]
        self.mc = mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([Seq(nn.Conv2d(p["in_channels"], mc, 3, padding=1))])
        chans, ch, ds = [mc], mc, 1
        for level, m in enumerate(mult):
            for _ in range(nrb):
                layers = [ResBlock(ch, m * mc, emb)] + ([AttentionBlock(m * mc, hc)] if ds in attn else [])
                ch = m * mc
                self.input_blocks.append(Seq(*layers))
                chans.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(Seq(Down(ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = Seq(ResBlock(ch, ch, emb), AttentionBlock(ch, hc), ResBlock(ch, ch, emb))
        self.output_blocks = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(nrb + 1):
                layers = [ResBlock(ch + chans.pop(), m * mc, emb)]
                ch = m * mc
                layers += [AttentionBlock(ch, hc)] if ds in attn else []
                if level and i == nrb:
                    layers.append(Up(ch))
                    ds //= 2
                self.output_blocks.append(Seq(*layers))
        self.out = nn.Sequential(gn(ch), nn.SiLU(), nn.Conv2d(ch, p["out_channels"], 3, padding=1))

    def forward(self, x, t):
        half = self.mc // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        emb = self.time_embed(torch.cat([torch.cos(args), torch.sin(args)], dim=1))
        hs, h = [], x
        for m in self.input_blocks:
            h = m(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for m in self.output_blocks:
            h = m(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = gn(cin, 1e-6), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = gn(cout, 1e-6), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention with 1×1 convolutions q, k, v, proj_out."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = gn(c, 1e-6)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q, k, v = (f(h).reshape(b, c, -1) for f in (self.q, self.k, self.v))
        w = torch.softmax(torch.bmm(q.transpose(1, 2), k) / math.sqrt(c), dim=2)
        return x + self.proj_out(torch.bmm(v, w.transpose(1, 2)).reshape(b, c, hh, ww))


class Mid(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    def __init__(self, blocks: list, sample: nn.Module | None, name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        if sample is not None:
            setattr(self, name, sample)


class VQAutoencoder(nn.Module):
    """LDM's VQ first stage (encoder for its keys; decode = nearest codebook entry → post_quant_conv → decoder)."""

    def __init__(self, dd: dict, embed_dim: int, n_embed: int):
        super().__init__()
        ch, mult, nrb, z = dd["ch"], dd["ch_mult"], dd["num_res_blocks"], dd["z_channels"]
        enc = nn.Module()
        enc.conv_in = nn.Conv2d(dd["in_channels"], ch, 3, padding=1)
        enc.down, cin = nn.ModuleList(), ch
        for i, m in enumerate(mult):
            blocks = [ResnetBlock(cin if j == 0 else ch * m, ch * m) for j in range(nrb)]
            cin = ch * m
            down = nn.Module()
            if i != len(mult) - 1:
                down.conv = nn.Conv2d(cin, cin, 3, stride=2)
            enc.down.append(Level(blocks, down if i != len(mult) - 1 else None, "downsample"))
        enc.mid, enc.norm_out, enc.conv_out = Mid(cin), gn(cin, 1e-6), nn.Conv2d(cin, z, 3, padding=1)
        self.encoder = enc
        self.quant_conv, self.post_quant_conv = nn.Conv2d(z, embed_dim, 1), nn.Conv2d(embed_dim, z, 1)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(n_embed, embed_dim)
        dec = nn.Module()
        dec.conv_in = nn.Conv2d(z, cin, 3, padding=1)
        dec.mid, levels = Mid(cin), []
        for i in reversed(range(len(mult))):
            blocks = [ResnetBlock(cin if j == 0 else ch * mult[i], ch * mult[i]) for j in range(nrb + 1)]
            cin = ch * mult[i]
            levels.insert(0, Level(blocks, Up(cin) if i != 0 else None, "upsample"))
        dec.up = nn.ModuleList(levels)
        dec.norm_out, dec.conv_out = gn(cin, 1e-6), nn.Conv2d(cin, dd["out_ch"], 3, padding=1)
        self.decoder = dec

    def decode(self, z):
        b, e, hh, ww = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, e)
        book = self.quantize.embedding.weight
        d = (flat ** 2).sum(1, keepdim=True) + (book ** 2).sum(1) - 2 * flat @ book.T
        zq = book[d.argmin(1)].reshape(b, hh, ww, e).permute(0, 3, 1, 2)
        dec = self.decoder
        h = dec.mid(dec.conv_in(self.post_quant_conv(zq)))
        for i in reversed(range(len(dec.up))):
            for blk in dec.up[i].block:
                h = blk(h)
            if i != 0:
                h = dec.up[i].upsample(h)
        return dec.conv_out(F.silu(dec.norm_out(h)))


def tiny_ldm(seed: int = 0, n_embed: int = 16) -> tuple[OpenaiUNet, VQAutoencoder]:
    """The tiny U-Net and VQ autoencoder: PyTorch's random init, and random group norms and biases (so that a
    norm or bias mapped to the wrong place shows)."""
    torch.manual_seed(seed)
    unet, vq = OpenaiUNet(UNET), VQAutoencoder(DD, DD["z_channels"], n_embed)
    with torch.no_grad():
        for m in [*unet.modules(), *vq.modules()]:
            if isinstance(m, nn.GroupNorm):
                m.weight.copy_(1 + 0.2 * torch.randn_like(m.weight))
            if isinstance(getattr(m, "bias", None), torch.Tensor):
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
    return unet.eval(), vq.eval()


def ldm_betas() -> torch.Tensor:
    """LDM's "linear" β of ``SCHEDULE``, by hand: √β evenly spaced, squared."""
    n = torch.arange(SCHEDULE["timesteps"], dtype=torch.float64)
    s, e = SCHEDULE["linear_start"] ** 0.5, SCHEDULE["linear_end"] ** 0.5
    return (s + n / (SCHEDULE["timesteps"] - 1) * (e - s)) ** 2


def write_ldm(folder: Path, unet: nn.Module, vq: nn.Module, scale_factor: float = 0.5, extras: dict | None = None):
    """``folder/config.yaml`` (LDM's layout) and ``folder/model.ckpt`` (a Lightning-style checkpoint)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": {
        **SCHEDULE, "first_stage_key": "image", "image_size": UNET["image_size"], "channels": 3,
        "scale_factor": scale_factor,
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": UNET},
        "first_stage_config": {"target": "ldm.models.autoencoder.VQModelInterface",
                               "params": {"embed_dim": DD["z_channels"], "n_embed": vq.quantize.embedding.num_embeddings,
                                          "ddconfig": DD, "lossconfig": {"target": "torch.nn.Identity"}}},
        "cond_stage_config": "__is_unconditional__"}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    sd = {**{"model.diffusion_model." + k: v for k, v in unet.state_dict().items()},
          **{"first_stage_model." + k: v for k, v in vq.state_dict().items()},
          "alphas_cumprod": torch.cumprod(1 - ldm_betas(), 0).float()}
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 10, **(extras or {})}, folder / "model.ckpt")
    return folder
