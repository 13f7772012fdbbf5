"""Forward-pass time of each pretrained architecture at full size, random weights (no files needed).

A script that prints numbers, not a test. Each time is the best of ``--repeat`` timed calls after one
warm-up call, under ``torch.inference_mode``; the denoiser rows time the whole dode call path
(D(x, σ) through the loader's wrappers), the classifier-guided row includes the classifier's
forward and backward pass.

    python benchmarks/bench_networks.py                  # quick: batch 1 everywhere, batch 64 at 32 px only
    python benchmarks/bench_networks.py --full           # batch 1 and 64 for every model (slow on CPU)
    python benchmarks/bench_networks.py --only ddpm      # rows whose name contains "ddpm"
    python benchmarks/bench_networks.py --edm-pkl checkpoints/edm-cifar10-32x32-cond-vp.pkl

The EDM rows are dode's own EDM networks (:mod:`dode.models.arch.edm_networks`) at the settings of
EDM's CIFAR-10 DDPM++ (55.7 M parameters) and ImageNet 64 ADM (295.9 M) pickles; ``--edm-pkl`` times
the networks of given pickles, read as ``dode-run`` reads them (without running their code).
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
from torch import nn

from dode.models.adapters import ClassifierGuidance, DiscreteNet, EDMNet
from dode.core.denoisers import EDMDenoiser, VPDenoiser
from dode.models.arch import ADMEncoderUNet, ADMUNet, DDPMUNet
from dode.models.arch.edm_networks import EDMPrecond
from dode.core.schedules import DiscreteVPSchedule


def _adm(image_size, **kw):
    return ADMUNet(image_size, **kw)


def models() -> list[tuple[str, int, int, Callable[[], nn.Module]]]:
    """(name, resolution, num_classes, factory of the dode denoiser)."""
    lin, cos = DiscreteVPSchedule.linear(1000), DiscreteVPSchedule.cosine(4000)

    def vp(net, kind, sched, classes=0, scale=1.0):
        return lambda: VPDenoiser(DiscreteNet(net(), kind, 3, scale, classes), sched)

    def diffusers_cifar():
        from diffusers import UNet2DModel  # the layout of google/ddpm-cifar10-32

        return UNet2DModel(sample_size=32, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                           down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                           attention_head_dim=None, norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1,
                           downsample_padding=0, dropout=0.1)

    def edm(res, classes, **kw):
        def make():
            net = EDMPrecond(res, 3, classes, **kw)
            for p in net.parameters():  # dode's EDM layers are allocated empty (for loading weights)
                nn.init.normal_(p, std=0.02)
            return EDMDenoiser(EDMNet(net.eval(), classes))
        return make

    adm128 = dict(model_channels=256, out_channels=6, num_res_blocks=2, attention_resolutions=(32, 16, 8),
                  num_heads=4, use_scale_shift_norm=True, resblock_updown=True, num_classes=1000)

    def guided128():
        eps = DiscreteNet(_adm(128, **adm128), "adm", 3, 1.0, 1000)
        clf = ADMEncoderUNet(128, model_channels=128, num_res_blocks=2, attention_resolutions=(32, 16, 8),
                             num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True, pool="attention")
        return VPDenoiser(ClassifierGuidance(eps, clf.eval(), lin, 1.25), lin)

    return [
        ("ddpm-cifar10", 32, 0, vp(DDPMUNet, "ddpm", lin)),
        ("diffusers-ddpm-cifar10-32", 32, 0, vp(diffusers_cifar, "diffusers", lin)),
        ("ddpm-celeba64", 64, 0, vp(lambda: DDPMUNet(ch_mult=(1, 2, 2, 2, 4), resolution=64), "ddpm", lin)),
        ("adm-imagenet64-uncond", 64, 0, vp(lambda: _adm(64, model_channels=128, out_channels=6, num_res_blocks=3,
                                                         attention_resolutions=(16, 8), num_heads=4,
                                                         use_scale_shift_norm=True), "adm", cos, 0, 0.25)),
        ("edm-cifar10-32x32-cond-vp", 32, 10, edm(32, 10, model_type="SongUNet", embedding_type="positional",
                                                  encoder_type="standard", decoder_type="standard", channel_mult_noise=1,
                                                  resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2],
                                                  augment_dim=9, dropout=0.13)),
        ("edm-imagenet-64x64-cond-adm", 64, 1000, edm(64, 1000, use_fp16=True, model_type="DhariwalUNet",
                                                      model_channels=192, channel_mult=[1, 2, 3, 4])),
        ("adm-imagenet128-cond (unet only)", 128, 1000, vp(lambda: _adm(128, **adm128), "adm", lin, 1000)),
        ("adm-imagenet128-cond (+classifier guidance)", 128, 1000, guided128),
        ("adm-lsun-bedroom256", 256, 0, vp(lambda: _adm(256, model_channels=256, out_channels=6, num_res_blocks=2,
                                                        attention_resolutions=(32, 16, 8), num_head_channels=64,
                                                        use_scale_shift_norm=True, resblock_updown=True, dropout=0.1),
                                           "adm", lin)),
    ]


def edm_models(paths: list[str]):
    from dode.models.arch.edm_pickle import load_edm_pickle

    out = []
    for p in paths:
        net = load_edm_pickle(p)["ema"]
        classes, res = int(getattr(net, "label_dim", 0)), int(net.img_resolution)
        out.append((p.rsplit("/", 1)[-1], res, classes, lambda net=net, c=classes: EDMDenoiser(EDMNet(net, c))))
    return out


def best_of(fn: Callable[[], object], repeat: int, budget: float) -> tuple[float, bool]:
    """(best time, whether it is the warm-up call alone: a call slower than ``budget`` is not repeated)."""
    t0 = time.perf_counter()
    fn()  # warm-up
    first = time.perf_counter() - t0
    if first > budget:
        return first, True
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget:
            break
    return min(times), False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="every batch size for every model (default: batch > 1 only "
                    "up to --quick-max-res pixels)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--quick-max-res", type=int, default=32, help="quick mode: largest resolution timed at batch > 1")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--budget", type=float, default=10.0, help="stop repeating a cell after this many seconds")
    ap.add_argument("--only", default=None, help="time only rows whose name contains this")
    ap.add_argument("--device", action="append", default=None, help="cpu, cuda (default: cpu, and cuda if present)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--edm-pkl", action="append", default=[], help="an EDM network pickle to time")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = models() + edm_models(args.edm_pkl)
    if args.only:
        rows = [r for r in rows if args.only in r[0]]
    print(f"torch {torch.__version__}; CPU threads {torch.get_num_threads()}; devices: {', '.join(devices)}")
    for dev in devices:
        device = torch.device(dev)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"\n== device {dev} ({name}); seconds per forward pass (best of {args.repeat}) ==")
        print(f"{'model':46s} {'params':>9s} " + " ".join(f"{'batch ' + str(b):>12s}" for b in args.batches))
        for label, res, classes, make in rows:
            den = make().to(device).eval().requires_grad_(False)
            params = sum(p.numel() for p in den.parameters())
            cells = []
            for b in args.batches:
                if b > 1 and not args.full and res > args.quick_max_res:
                    cells.append(f"{'(--full)':>12s}")
                    continue
                g = torch.Generator().manual_seed(0)
                x = (torch.randn(b, 3, res, res, generator=g) * 10).to(device)
                sigma = torch.full((b,), 10.0, dtype=torch.float64, device=device)
                if classes:
                    den.model_kwargs["class_labels"] = torch.randint(classes, (b,), generator=g).to(device)

                def call(den=den):  # bound now: `den` is deleted after the row
                    with torch.inference_mode():
                        den(x, sigma)
                    sync(device)

                best, single = best_of(call, args.repeat, args.budget)
                cells.append(f"{best:11.4f}{'*' if single else ' '}")
            print(f"{label:46s} {params / 1e6:8.1f}M " + " ".join(cells), flush=True)
            del den
    print(f"\n* one call only (slower than --budget {args.budget:g} s, not repeated); "
          f"(--full): skipped in quick mode, run with --full")


if __name__ == "__main__":
    main()
