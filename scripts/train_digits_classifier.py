"""Train the digits classifier whose penultimate features define FD-digits.

    python scripts/train_digits_classifier.py            # writes dode/assets/digits-classifier.pt

Data: the ``train`` split of ``digits`` (1,497 images); accuracy is reported on the held-out ``test``
split (300 images). Inputs are the uint8 round trip of the images (what the metric sees), with light
augmentation so the features are smooth around real digits: a random shift of up to one pixel
(background filled with −1) and uniform noise of ±1/16 (half a digits grey level). Reproducible from
``--seed`` on the same machine and thread count.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dode.eval.data import from_uint8, load_dataset, to_uint8  # noqa: E402
from dode.models import digits as nets  # noqa: E402


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    pad = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dx = torch.randint(0, 3, (n,), generator=g)
    dy = torch.randint(0, 3, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(8)[None]).reshape(n, 1, 8, 1).expand(n, 1, 8, 10)
    pad = pad.gather(2, rows)
    cols = (dx[:, None] + torch.arange(8)[None]).reshape(n, 1, 1, 8).expand(n, 1, 8, 8)
    out = pad.gather(3, cols)
    out = out + (torch.rand(out.shape, generator=g) * 2 - 1) / 16
    return out.clamp(-1, 1)


def accuracy(net, x, y) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--out", default=None, help="checkpoint path (default: the embedded asset)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    xtr, ytr = from_uint8(to_uint8(tr.images)), tr.labels
    xte, yte = from_uint8(to_uint8(te.images)), te.labels
    net = nets.DigitsClassifier(features=a.features)
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=1e-4)
    steps = a.epochs * ((len(xtr) + a.batch - 1) // a.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps)
    t0 = time.time()
    for epoch in range(a.epochs):
        net.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), a.batch):
            idx = perm[i:i + a.batch]
            loss = F.cross_entropy(net(augment(xtr[idx], g)), ytr[idx], label_smoothing=a.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0:
            net.eval()
            print(f"epoch {epoch + 1:3d}  loss {float(loss.detach()):.4f}  train acc {accuracy(net, xtr, ytr):.4f}  "
                  f"test acc {accuracy(net, xte, yte):.4f}  {time.time() - t0:.0f}s", flush=True)
    net.eval()
    acc = accuracy(net, xte, yte)
    out = Path(a.out) if a.out else nets.asset_path(nets.CLASSIFIER)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"name": nets.CLASSIFIER, "config": net.config,
                "state": {k: v.detach().clone() for k, v in net.state_dict().items()},
                "train": {**{k: v for k, v in vars(a).items() if k != "out"}, "test_accuracy": acc,
                          "test_images": len(xte), "seconds": round(time.time() - t0, 1),
                          "torch": str(torch.__version__)}}, out)
    print(f"held-out accuracy {acc:.4f} on {len(xte)} test images; saved {out} "
          f"({out.stat().st_size / 1e6:.2f} MB)", flush=True)


if __name__ == "__main__":
    main()
