"""Measure the embedded digits models: sample quality and the D-ODE comparisons of docs/digits.md.

    python scripts/digits_quality.py                      # both models, 10,000 samples each
    python scripts/digits_quality.py --num-samples 2000 --models digits-ddpm   # quicker look

For each model it reports, on ``--num-samples`` samples from seeded standard-normal noise:

* the reference-quality sampler (``digits-edm``: 200-step EDM Heun, NFE 399; ``digits-ddpm``:
  1000-step DDIM, NFE 1000): FD-digits against the real set (all 1,797 images), the share of samples
  the classifier labels with confidence ≥ 0.9 and the share of each class;
* the floor: FD-digits between the two halves of the real set (``half0`` vs ``half1``), and the
  classifier's figures on the real set;
* at ``--nfe`` (default 5): base solvers vs their D-ODE versions (λ fitted by ``dode.fit_lambdas`` on
  ``--fit-batch`` noises from a seed of their own, teacher scale ``--scale``): DDIM and DPM-Solver-3
  on digits-ddpm, DDIM on digits-edm (plus any ``--solvers``).

Everything goes through ``dode.sample`` / ``dode.fit_lambdas`` and ``dode.eval.metrics``. Results are
printed as Markdown and written as JSON (``--json``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dode  # noqa: E402
from dode.eval import metrics  # noqa: E402
from dode.eval.data import from_uint8, load_dataset, to_uint8  # noqa: E402
from dode.models.digits import load_classifier, load_digits_model  # noqa: E402

REFERENCE = {"digits-edm": ("heun", 399), "digits-ddpm": ("ddim", 1000)}  # 200 Heun steps; 1000 DDIM steps
DODE_SOLVERS = {"digits-edm": ["ddim"], "digits-ddpm": ["ddim", "dpm3"]}


def noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def generate(den, z: torch.Tensor, solver: str, nfe: int, lambdas=None, chunk: int = 2500) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(z), chunk):
            out.append(to_uint8(dode.sample(den, z[i:i + chunk], solver=solver, nfe=nfe, lambdas=lambdas)))
    return np.concatenate(out)


def nearest_train_rms(images: np.ndarray) -> np.ndarray:
    """Per image: RMS pixel distance (model space, [−1, 1]) to the nearest training image."""
    train = load_dataset("digits", "train").images.reshape(-1, 64).double()
    x = from_uint8(images).reshape(len(images), -1).double()
    d = torch.cat([torch.cdist(x[i:i + 2000], train).min(1).values for i in range(0, len(x), 2000)])
    return (d / 8).numpy()  # sqrt(‖·‖²/64)


def describe(images: np.ndarray, clf) -> dict:
    """FD-digits vs the real set, share with confidence ≥ 0.9, class shares, distance to the
    nearest training image (memorisation check: near-copies have an RMS distance < 0.1)."""
    with torch.no_grad():
        p = torch.softmax(clf(from_uint8(images)), 1)
    conf, label = p.max(1)
    shares = np.bincount(label.numpy(), minlength=10) / len(images)
    nn = nearest_train_rms(images)
    return {"fd_digits": metrics.compute_metric("fd_digits", images),
            "nn_rms_median": float(np.median(nn)), "near_copies": float((nn < 0.1).mean()),
            "confident": float((conf >= 0.9).float().mean()),
            "class_min": float(shares.min()), "class_max": float(shares.max()),
            "class_shares": [round(float(s), 4) for s in shares]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["digits-edm", "digits-ddpm"])
    p.add_argument("--num-samples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=1, help="noise seed of the evaluated samples")
    p.add_argument("--fit-seed", type=int, default=1000, help="noise seed of the λ fit (its own block)")
    p.add_argument("--fit-batch", type=int, default=100)
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--nfe", type=int, nargs="+", default=[5])
    p.add_argument("--solvers", nargs="*", default=None, help="solvers compared with their D-ODE version "
                   "(default: ddim, dpm3 on digits-ddpm; ddim on digits-edm)")
    p.add_argument("--skip-reference", action="store_true", help="only the D-ODE comparisons")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    clf = load_classifier()
    res = {"num_samples": a.num_samples, "seed": a.seed, "fit_seed": a.fit_seed, "fit_batch": a.fit_batch,
           "scale": a.scale, "models": {}}
    halves = [metrics.extract_features("fd_digits", load_dataset("digits", s).uint8()) for s in ("half0", "half1")]
    real = load_dataset("digits", "all").uint8()
    res["real"] = {"fd_halves": metrics.frechet_distance(*metrics.feature_stats(halves[0]),
                                                          *metrics.feature_stats(halves[1])),
                   **{k: v for k, v in describe(real, clf).items() if k not in ("fd_digits", "nn_rms_median",
                                                                                "near_copies")}}
    test_nn = nearest_train_rms(load_dataset("digits", "test").uint8())
    res["real"]["test_nn_rms_median"] = float(np.median(test_nn))
    res["real"]["test_near_copies"] = float((test_nn < 0.1).mean())
    print(f"real set: FD-digits half0 vs half1 {res['real']['fd_halves']:.3f}, confident "
          f"{res['real']['confident']:.3f}", flush=True)
    z = noise(a.num_samples, a.seed)
    zfit = noise(a.fit_batch, a.fit_seed)
    for name in a.models:
        den = load_digits_model(name)
        r = res["models"][name] = {}
        if not a.skip_reference:
            solver, nfe = REFERENCE[name]
            t0 = time.time()
            imgs = generate(den, z, solver, nfe)
            r["reference"] = {"solver": solver, "nfe": nfe, **describe(imgs, clf),
                              "seconds": round(time.time() - t0, 1)}
            print(f"{name} {solver} NFE {nfe}: {r['reference']}", flush=True)
        for nfe in a.nfe:
            for solver in a.solvers or DODE_SOLVERS[name]:
                t0 = time.time()
                lam = dode.fit_lambdas(den, zfit, solver=solver, nfe=nfe, scale=a.scale)
                fit_s = time.time() - t0
                base = metrics.compute_metric("fd_digits", generate(den, z, solver, nfe))
                learned = metrics.compute_metric("fd_digits", generate(den, z, solver, nfe, lam))
                r[f"{solver}@{nfe}"] = {"base": base, "dode": learned, "lambdas": [round(float(v), 4) for v in lam],
                                        "fit_seconds": round(fit_s, 1)}
                print(f"{name} {solver} NFE {nfe}: base {base:.3f}  D-{solver} {learned:.3f}  "
                      f"λ {np.round(lam.numpy(), 3).tolist()}", flush=True)
    print("\n| model | sampler | NFE | FD-digits | conf ≥ 0.9 | class share min–max | NN-RMS median | near copies |"
          "\n|---|---|---|---|---|---|---|---|")
    print(f"| real (half0 vs half1; NN: test split) | – | – | {res['real']['fd_halves']:.3f} | "
          f"{res['real']['confident']:.3f} | {res['real']['class_min']:.3f}–{res['real']['class_max']:.3f} | "
          f"{res['real']['test_nn_rms_median']:.3f} | {res['real']['test_near_copies']:.3f} |")
    for name, r in res["models"].items():
        if "reference" in r:
            q = r["reference"]
            print(f"| {name} | {q['solver']} | {q['nfe']} | {q['fd_digits']:.3f} | {q['confident']:.3f} | "
                  f"{q['class_min']:.3f}–{q['class_max']:.3f} | {q['nn_rms_median']:.3f} | {q['near_copies']:.3f} |")
    print("\n| model | solver | NFE | base FD-digits | D-ODE FD-digits |\n|---|---|---|---|---|")
    for name, r in res["models"].items():
        for key, v in r.items():
            if "@" in key:
                solver, nfe = key.split("@")
                print(f"| {name} | {solver} | {nfe} | {v['base']:.3f} | {v['dode']:.3f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
