"""The device check of issue 14: dode-run on EDM's CIFAR-10 network (DDPM++, random weights) on a GPU.

Runs ``dode-run`` (Euler, NFE 10, no correction) on EDM's DDPM++ CIFAR-10 network at
full size (``SongUNet``, 128 channels, mult 2-2-2, EDM preconditioning, 10 classes) with random
weights, in fp32 and bf16 on one process, and once more on two processes sharing the GPU, each
with Inception FID of its samples (``legacy_pytorch``: pytorch-fid's network with random weights,
the same compute as the real one; reference statistics made up — the FID value means nothing, its
time does). Prints images/s of generation (from the manifests), the metric's images/s and time,
the wall time and the ratios. With ``EDM_DIR`` (a checkout of NVlabs/edm, never copied into dode)
it also times EDM's own ``generate.py`` (Euler, 10 steps = NFE 10, wall clock including its start)
on a pickle of the same architecture made by EDM's code (random weights of its own).

    python benchmarks/gpu_check.py                 # on a GPU machine (benchmarks/gpu_check.sh)
    python benchmarks/gpu_check.py --tiny          # a dry run on the CPU: tiny network, few samples
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FULL = dict(model_channels=128, channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16], augment_dim=9)
TINY = dict(model_channels=16, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[16], augment_dim=0)


def build_denoiser(tiny: bool = False, seed: int = 0):
    """EDM's DDPM++ CIFAR-10 network (``EDMPrecond``, class-conditional) with random weights, as a
    dode denoiser (the ``_target_`` of the check's checkpoint config)."""
    import torch

    from dode.core.denoisers import EDMDenoiser
    from dode.models.adapters import EDMNet
    from dode.models.arch.edm_networks import EDMPrecond

    net = EDMPrecond(img_resolution=32, img_channels=3, label_dim=10, model_type="SongUNet", dropout=0.13,
                     embedding_type="positional", encoder_type="standard", decoder_type="standard",
                     channel_mult_noise=1, resample_filter=[1, 1], **(TINY if tiny else FULL))
    # dode's EDM layers leave their parameters uninitialised (torch.empty: checkpoints fill them), so
    # draw them here, by name, from one generator: the same weights in every process
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(net.named_parameters()):
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            else:
                p.fill_(1.0 if name.endswith("weight") else 0.0)  # norm gains 1, biases 0
    return EDMDenoiser(EDMNet(net.eval().requires_grad_(False), num_classes=10, name="edm-random"))


def write_conf(tmp: Path, tiny: bool, weights: Path, stats: Path) -> Path:
    conf = tmp / "conf"
    (conf / "checkpoint").mkdir(parents=True)
    (conf / "eval").mkdir()
    (conf / "checkpoint" / "gpu-check-edm.yaml").write_text(
        f"_target_: gpu_check.build_denoiser\ntiny: {str(tiny).lower()}\nchannels: 3\nresolution: 32\n"
        "num_classes: 10\n")
    (conf / "eval" / "gpu-check-fid.yaml").write_text(
        f"name: gpu-check-fid\nmetric: fid\nmode: legacy_pytorch\ninception_weights: {weights}\n"
        f"ref_stats: {stats}\nbatch_size: {50 if tiny else 500}\n")
    return conf


def fake_fid_inputs(tmp: Path) -> tuple[Path, Path]:
    """pytorch-fid's Inception with random weights, and made-up reference statistics of its mode."""
    import torch

    from dode.eval.inception import build_pytorch_fid_inception

    torch.manual_seed(0)
    weights = tmp / "pt_inception-random.pth"
    torch.save(build_pytorch_fid_inception().state_dict(), weights)
    stats = tmp / "ref-random.npz"
    np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048), mode="legacy_pytorch")
    return weights, stats


def dode_run(conf: Path, results: Path, args: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "benchmarks"),
                                                       os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "dode.runner", f"hydra.searchpath=[file://{conf}]", f"results_dir={results}",
           "dataset=cifar10", "checkpoint=gpu-check-edm", "eval=gpu-check-fid", "solver=euler", "distill=none",
           "compare_base=false", "seeds=[0]", "progress=false", *args]
    start = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if r.returncode:
        raise RuntimeError(f"dode-run {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return wall


def summary(results: Path, n: int, wall: float) -> dict:
    """Generation images/s (slowest rank, from the manifest), metric time and images/s, wall time."""
    per_rank: dict[int, float] = {}
    for m in results.rglob("manifest.json"):
        for e in json.loads(m.read_text())["shards"].values():
            for part in e.get("pieces") or [e]:
                per_rank[part["rank"]] = per_rank.get(part["rank"], 0.0) + float(part["seconds"] or 0.0)
    metric = json.loads(next(results.rglob("metrics/*.json")).read_text())
    gen = max(per_rank.values())
    return {"images": n, "gen_seconds": round(gen, 2), "gen_images_per_s": round(n / gen, 1),
            "fid_seconds": metric["metric_seconds"], "fid_images_per_s": round(n / metric["metric_seconds"], 1),
            "wall_seconds": round(wall, 1), "processes": metric.get("metric_processes", 1)}


def edm_generate(edm: Path, tmp: Path, n: int, tiny: bool) -> dict:
    """EDM's generate.py (Euler, 10 steps = NFE 10) on a pickle of the same network made by EDM's code."""
    script = (
        "import pickle, sys, torch; sys.path.insert(0, sys.argv[1]); from training.networks import EDMPrecond; "
        "torch.manual_seed(0); kw = " + json.dumps(TINY if tiny else FULL) + "; "
        "net = EDMPrecond(img_resolution=32, img_channels=3, label_dim=10, model_type='SongUNet', dropout=0.13, "
        "embedding_type='positional', encoder_type='standard', decoder_type='standard', channel_mult_noise=1, "
        "resample_filter=[1, 1], **kw).eval().requires_grad_(False); "
        "pickle.dump({'ema': net}, open(sys.argv[2], 'wb'))")
    pkl = tmp / "edm-random.pkl"
    subprocess.run([sys.executable, "-c", script, str(edm), str(pkl)], check=True, cwd=tmp)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(edm / "generate.py"), f"--network={pkl}", f"--outdir={tmp / 'edm-out'}",
                    f"--seeds=0-{n - 1}", "--solver=euler", "--steps=10", "--batch=500"], check=True, cwd=edm,
                   capture_output=True)
    wall = time.perf_counter() - start
    return {"images": n, "wall_seconds": round(wall, 1), "images_per_s": round(n / wall, 1), "pickle": str(pkl)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a small network and few samples (a CPU dry run)")
    p.add_argument("--num", type=int, default=None, help="samples of the one-process runs (default 50000)")
    p.add_argument("--num2", type=int, default=None, help="samples of the two-process run (default 10000)")
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    n = a.num or (16 if a.tiny else 50_000)
    n2 = a.num2 or (12 if a.tiny else 10_000)
    edm = os.environ.get("EDM_DIR")
    report: dict = {"device": a.device, "tiny": a.tiny}
    with tempfile.TemporaryDirectory(prefix="dode-gpu-check-") as d:
        tmp = Path(d)
        conf = write_conf(tmp, a.tiny, *fake_fid_inputs(tmp))
        sizes = ["nfe=10", f"device={a.device}", f"batch_size={8 if a.tiny else 500}",
                 f"shard_size={8 if a.tiny else 1000}"]
        runs = [("fp32", n, []), ("bf16", n, ["precision=bf16"]), ("bf16, 2 processes", n2,
                                                                   ["precision=bf16", "world_size=2"])]
        for name, num, extra in runs:
            results = tmp / name.replace(" ", "").replace(",", "-")
            wall = dode_run(conf, results, [*sizes, f"num_samples={num}", *extra])
            report[name] = summary(results, num, wall)
            print(f"[{name}] {json.dumps(report[name])}", flush=True)
        fp32, bf16 = report["fp32"], report["bf16"]
        report["ratios"] = {"bf16_vs_fp32_generation": round(bf16["gen_images_per_s"] / fp32["gen_images_per_s"], 2),
                            "fid_vs_generation_fp32": round(fp32["fid_images_per_s"] / fp32["gen_images_per_s"], 2)}
        if edm:
            report["edm_generate"] = edm_generate(Path(edm), tmp, n2, a.tiny)
            report["ratios"]["dode_fp32_vs_edm_generate"] = round(
                fp32["gen_images_per_s"] / report["edm_generate"]["images_per_s"], 2)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
