"""The embedded digits diffusion models: a small residual MLP for 8×8×1 images.

Two checkpoints are shipped in ``dode/assets`` (trained by ``scripts/train_digits.py``):

* ``digits-edm`` — EDM preconditioning (Karras et al. 2022): ``D(x; σ) = c_skip x + c_out F(c_in x;
  c_noise)`` with ``c_skip = σd²/(σ² + σd²)``, ``c_out = σ σd / sqrt(σ² + σd²)``, ``c_in = 1/sqrt(σ² + σd²)``,
  ``c_noise = ln(σ)/4``, σd = 0.5, continuous σ ∈ [0.002, 80]; wrapped by :class:`dode.core.denoisers.EDMDenoiser`.
* ``digits-ddpm`` — ε-prediction at discrete VP steps (linear β 1e-4 → 0.02, T = 1000), network input
  ``x_vp`` and ``t`` ∈ [0, 999] (``c_noise = t / 1000``); wrapped by :class:`dode.core.denoisers.VPDenoiser`.

Network (:class:`DigitsMLP`): the 64 pixels → width ``W`` → ``depth`` pre-norm residual blocks
``h += fc2(SiLU(fc1(LN(h)·(1 + s) + b)))`` with (s, b) a per-block affine function of an embedding of
``c_noise`` (fixed sinusoidal features → 2-layer MLP) → LN → 64 pixels. Every operation acts on one
sample at a time (no batch statistics); see :func:`batch_invariant` for bitwise batch independence.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from dode.core.denoisers import EDMDenoiser, VPDenoiser
from dode.core.schedules import DiscreteVPSchedule
from dode.errors import InvalidChoice, UserError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MODELS = ("digits-edm", "digits-ddpm")
SIGMA_DATA = 0.5
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
# MKL's float32 GEMM takes another kernel (another summation order) for fewer than 16 rows, so a
# sample's output would depend on the batch size below that; padding every batch to MIN_ROWS rows
# keeps each sample's output bitwise independent of the batch it is in (see docs/digits.md).
MIN_ROWS = 32


class DigitsMLP(nn.Module):
    """Residual MLP ``F(x, c_noise)`` for ``(N, 1, 8, 8)`` images (see the module docstring)."""

    def __init__(self, width: int = 192, hidden: int = 384, depth: int = 4, emb: int = 64,
                 freqs: int = 32, fmin: float = 0.25, fmax: float = 64.0, pixels: int = 64,
                 skip: bool = False):
        super().__init__()
        self.config = dict(width=width, hidden=hidden, depth=depth, emb=emb, freqs=freqs,
                           fmin=fmin, fmax=fmax, pixels=pixels, skip=skip)
        f = 2 * math.pi * torch.exp(torch.linspace(math.log(fmin), math.log(fmax), freqs))
        self.register_buffer("freqs", f.to(torch.float32), persistent=False)
        self.emb = nn.Sequential(nn.Linear(2 * freqs + 1, emb), nn.SiLU(), nn.Linear(emb, emb), nn.SiLU())
        self.inp = nn.Linear(pixels, width)
        self.norms = nn.ModuleList([nn.LayerNorm(width, elementwise_affine=False) for _ in range(depth)])
        self.mods = nn.ModuleList([nn.Linear(emb, 2 * width) for _ in range(depth)])
        self.fc1 = nn.ModuleList([nn.Linear(width, hidden) for _ in range(depth)])
        self.fc2 = nn.ModuleList([nn.Linear(hidden, width) for _ in range(depth)])
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, pixels)
        # optional input→output skip with a noise-dependent gain g(c): out = F + g·x. An ε-network
        # must reproduce its input almost exactly at high noise (ε ≈ x_vp), which layer norms blur.
        self.skip = nn.Linear(emb, 1) if skip else None
        for m in ([self.skip] if skip else []) + list(self.mods) + list(self.fc2):  # blocks start as the identity
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        n = x.shape[0]
        flat = x.reshape(n, -1).to(torch.float32)
        c = c_noise.reshape(n, 1).to(torch.float32)
        if n < MIN_ROWS:  # zero rows: see MIN_ROWS
            flat = torch.cat([flat, flat.new_zeros(MIN_ROWS - n, flat.shape[1])])
            c = torch.cat([c, c.new_zeros(MIN_ROWS - n, 1)])
        a = c * self.freqs
        e = self.emb(torch.cat([c, torch.sin(a), torch.cos(a)], dim=1))
        h = self.inp(flat)
        for norm, mod, fc1, fc2 in zip(self.norms, self.mods, self.fc1, self.fc2):
            s, b = mod(e).chunk(2, dim=1)
            h = h + fc2(torch.nn.functional.silu(fc1(norm(h) * (1 + s) + b)))
        out = self.out(self.out_norm(h))
        if self.skip is not None:  # g(c) as a product and a row sum: MKL's one-column GEMM (GEMV)
            # sums in an order that depends on the batch size and the row's offset
            gain = (e * self.skip.weight).sum(1, keepdim=True) + self.skip.bias
            out = out + gain * flat
        return out[:n].reshape(x.shape)


class EDMPrecond(nn.Module):
    """EDM preconditioning around ``F``: ``net(x, σ) → D(x; σ)`` (computed in x's dtype, F in float32)."""

    def __init__(self, model: DigitsMLP, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.model = model
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma: Tensor, dtype: torch.dtype):
        s = sigma.to(torch.float64).reshape(-1, 1, 1, 1)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / (s**2 + sd2).sqrt()
        c_in = 1 / (s**2 + sd2).sqrt()
        c_noise = s.log().flatten() / 4
        return c_skip.to(dtype), c_out.to(dtype), c_in.to(dtype), c_noise

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device).expand(x.shape[0]) if torch.as_tensor(sigma).ndim == 0 \
            else torch.as_tensor(sigma, device=x.device)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma, x.dtype)
        f = self.model((c_in * x).to(torch.float32), c_noise.to(torch.float32))
        return c_skip * x + c_out * f.to(x.dtype)


class EpsNet(nn.Module):
    """ε-prediction network for the discrete VP model: ``net(x_vp, t) → ε`` with t ∈ [0, T−1]."""

    def __init__(self, model: DigitsMLP, T: int = 1000):
        super().__init__()
        self.model = model
        self.T = int(T)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        out = self.model(x.to(torch.float32), (t.to(torch.float64) / self.T).to(torch.float32))
        return out.to(x.dtype)


def build(name: str, config: dict | None = None) -> nn.Module:
    """The bare (untrained) network of model ``name``: ``EDMPrecond`` or ``EpsNet``; without
    ``config``, the shipped shape (the ε model has the input→output skip)."""
    mlp = DigitsMLP(**(config if config is not None else {"skip": name == "digits-ddpm"}))
    if name == "digits-edm":
        return EDMPrecond(mlp)
    if name == "digits-ddpm":
        return EpsNet(mlp)
    raise InvalidChoice(f"unknown digits model {name!r}; valid: {', '.join(MODELS)}")


def wrap(name: str, net: nn.Module) -> nn.Module:
    """Wrap a network of model ``name`` as a dode denoiser (EDM or VP) with the digits attributes."""
    if name == "digits-edm":
        den = EDMDenoiser(net, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    else:
        den = VPDenoiser(net, DiscreteVPSchedule.linear(), prediction="eps")
    den.num_classes, den.resolution, den.channels = 0, 8, 1
    den.name = name
    return den.eval().requires_grad_(False)


def asset_path(name: str) -> Path:
    """The embedded asset file ``dode/assets/<name>.pt``."""
    return ASSETS / f"{name}.pt"


def load_net(name: str, path: str | Path | None = None) -> nn.Module:
    """The trained network (EMA weights) of ``name`` from ``path`` or the embedded asset."""
    if name not in MODELS:
        raise InvalidChoice(f"unknown digits model {name!r}; valid: {', '.join(MODELS)}")
    path = Path(path) if path else asset_path(name)
    if not path.is_file():
        raise UserError(f"digits checkpoint {path} not found; make it with "
                        f"`python scripts/train_digits.py --model {name}`")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("name") != name:
        raise UserError(f"{path} holds model {ckpt.get('name')!r}, not {name!r}")
    net = build(name, ckpt["config"])
    state = {k: v.to(torch.float32) for k, v in ckpt["ema"].items()}
    net.model.load_state_dict(state)
    return net.eval().requires_grad_(False)


def load_digits_model(name: str = "digits-ddpm", path: str | Path | None = None) -> nn.Module:
    """The denoiser of an embedded digits model (``digits-edm`` or ``digits-ddpm``)."""
    return wrap(name, load_net(name, path))


def load_digits_checkpoint(cfg) -> nn.Module:
    """Checkpoint-registry loader ``digits``: ``cfg`` holds ``name`` and ``path`` (null: the asset)."""
    get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
    return load_digits_model(get("name"), get("path", None))


def batch_invariant(denoiser, n: int = 1000, ks=(1, 7, 15, 16, 33, 100, 999), seed: int = 0) -> dict:
    """Whether ``D(x)[:k] == D(x[:k])`` and ``D(x)[k:] == D(x[k:])`` bit for bit (float32 input,
    one σ per sample drawn log-normally), for each k: ``{k: bool}``."""
    g = torch.Generator().manual_seed(seed)
    sigma = torch.exp(2 * torch.randn(n, generator=g, dtype=torch.float64))
    x = torch.randn(n, 1, 8, 8, generator=g) * sigma.reshape(-1, 1, 1, 1).float()
    with torch.no_grad():
        full = denoiser(x, sigma)
        return {k: bool(torch.equal(full[:k], denoiser(x[:k], sigma[:k]))
                        and torch.equal(full[k:], denoiser(x[k:], sigma[k:]))) for k in ks}


# ---------------------------------------------------------------------------------------------------
# The digits classifier behind FD-digits (trained by scripts/train_digits_classifier.py)

CLASSIFIER = "digits-classifier"


class DigitsClassifier(nn.Module):
    """Small CNN for 8×8 digits in [−1, 1]: three 3×3 conv layers (32, 64, 64 channels, SiLU, 2×2
    average pooling after the 2nd and 3rd) → 256 → ``features`` (penultimate layer, SiLU) → 10 logits.
    Every operation acts on one sample at a time (no batch norm); batches are padded to MIN_ROWS."""

    def __init__(self, features: int = 64, width: int = 32, classes: int = 10):
        super().__init__()
        self.config = dict(features=features, width=width, classes=classes)
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(2 * w * 4, features), nn.SiLU())
        self.head = nn.Linear(features, classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features ``(N, features)`` of images ``(N, 1, 8, 8)`` in [−1, 1]."""
        n = x.shape[0]
        # a fresh row-major copy: a tensor whose 1-channel dim has an odd stride may count as
        # channels-last, and the convolutions then take another (not bitwise equal) algorithm
        x = torch.empty(x.shape, dtype=torch.float32, device=x.device).copy_(x)
        if n < MIN_ROWS:
            x = torch.cat([x, x.new_zeros(MIN_ROWS - n, *x.shape[1:])])
        return self.body(x)[:n]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def load_classifier(path: str | Path | None = None) -> DigitsClassifier:
    """The trained digits classifier (embedded asset unless ``path``)."""
    path = Path(path) if path else asset_path(CLASSIFIER)
    if not path.is_file():
        raise UserError(f"digits classifier {path} not found; make it with "
                        "`python scripts/train_digits_classifier.py`")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = DigitsClassifier(**ckpt["config"])
    net.load_state_dict({k: v.to(torch.float32) for k, v in ckpt["state"].items()})
    return net.eval().requires_grad_(False)
