"""Train the embedded digits diffusion models (``digits-edm``, ``digits-ddpm``) on the CPU.

    python scripts/train_digits.py --model digits-edm          # writes dode/assets/digits-edm.pt
    python scripts/train_digits.py --model digits-ddpm         # writes dode/assets/digits-ddpm.pt

Reproducible from ``--seed`` on the same machine and thread count (one thread by default: the
shipped assets were made with ``--threads 1``). Data: the ``train`` split of ``digits`` (1,497 images).

* digits-edm: EDM loss (Karras et al. 2022): ln σ ~ N(P_mean, P_std²) with (−1.2, 1.2), weight
  λ(σ) = (σ² + σd²)/(σ σd)², loss λ(σ)·‖D(x0 + σn; σ) − x0‖².
* digits-ddpm: DDPM ε loss (Ho et al. 2020): t ~ U{0 … 999}, ‖ε̂(sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε, t) − ε‖².

Adam with linear warm-up and cosine decay; the checkpoint holds the EMA weights (float16 to keep the
asset small, loaded back as float32) and the training settings.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dode.eval.data import load_dataset  # noqa: E402
from dode.models import digits as nets  # noqa: E402
from dode.core.schedules import DiscreteVPSchedule  # noqa: E402

DEFAULTS = dict(steps=12000, batch=256, lr=2e-3, warmup=500, ema=0.9995, width=192, hidden=384, depth=4,
                emb=64, p_mean=-1.2, p_std=1.2)


def loss_fn(name: str, net, x0: torch.Tensor, g: torch.Generator, abar: torch.Tensor, a) -> torch.Tensor:
    n = torch.randn(x0.shape, generator=g)
    if name == "digits-edm":
        sigma = torch.exp(a.p_mean + a.p_std * torch.randn(x0.shape[0], generator=g))
        sd = nets.SIGMA_DATA
        w = (sigma**2 + sd**2) / (sigma * sd) ** 2
        d = net(x0 + sigma.reshape(-1, 1, 1, 1) * n, sigma)
        return (w.reshape(-1, 1, 1, 1) * (d - x0) ** 2).mean()
    t = torch.randint(0, len(abar), (x0.shape[0],), generator=g)
    ab = abar[t].reshape(-1, 1, 1, 1)
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * n
    return ((net(xt, t.to(torch.float32)) - n) ** 2).mean()


def train(a) -> Path:
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    data = load_dataset("digits", "train").images
    config = dict(width=a.width, hidden=a.hidden, depth=a.depth, emb=a.emb, skip=a.skip)
    net = nets.build(a.model, config)
    ema = nets.build(a.model, config)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=a.lr, betas=(0.9, 0.99))
    abar = DiscreteVPSchedule.linear().alphas_cumprod.to(torch.float32)
    nparams = sum(p.numel() for p in net.parameters())
    print(f"{a.model}: {nparams} parameters, {len(data)} training images, {a.steps} steps", flush=True)
    t0, run = time.time(), 0.0
    for step in range(a.steps):
        lr = a.lr * min(1.0, (step + 1) / a.warmup) * 0.5 * (1 + math.cos(math.pi * step / a.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(data), (a.batch,), generator=g)
        loss = loss_fn(a.model, net, data[idx], g, abar, a)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        beta = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - beta)
        run = 0.99 * run + 0.01 * float(loss.detach())
        if (step + 1) % a.log_every == 0:
            print(f"step {step + 1:6d}  loss {run / (1 - 0.99 ** (step + 1)):.4f}  lr {lr:.2e}  "
                  f"{time.time() - t0:6.0f}s", flush=True)
    seconds = time.time() - t0
    out = Path(a.out) if a.out else nets.asset_path(a.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(torch.float16) for k, v in ema.model.state_dict().items()}
    settings = {k: v for k, v in vars(a).items() if k != "out"}
    torch.save({"name": a.model, "config": ema.model.config, "ema": state,
                "train": {**settings, "seconds": round(seconds, 1), "parameters": nparams,
                          "torch": str(torch.__version__)}}, out)
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB) after {seconds:.0f}s", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=nets.MODELS, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="checkpoint path (default: the embedded asset)")
    p.add_argument("--log-every", type=int, default=500)
    p.add_argument("--skip", action=argparse.BooleanOptionalAction, default=None,
                   help="input→output skip with a learned gain (default: on for digits-ddpm)")
    for k, v in DEFAULTS.items():
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    a = p.parse_args(argv)
    if a.skip is None:
        a.skip = a.model == "digits-ddpm"
    train(a)


if __name__ == "__main__":
    main()
