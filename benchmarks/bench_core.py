"""Overhead of the solver core, as ratios measured in one run (no timed assertions).

* sampling wall time ÷ (NFE × one forward pass)   — target ≤ 1.05 for every solver;
* λ fitting time ÷ (teacher run + student run)      — target ≤ 1.15.

The network is the embedded digits-ddpm model at batch 1000 when it is available, otherwise a
stand-in convolutional network of similar cost. Each timing is the minimum of ``--repeat`` runs.

    python benchmarks/bench_core.py [--batch 1000] [--nfe 10] [--repeat 3]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import dode
from dode.core.denoisers import VPDenoiser
from dode.learn import student_points, teacher_states
from dode.core.sampling import solver_grid
from dode.core.schedules import DiscreteVPSchedule


def network():
    try:
        from dode.models.digits import load_digits_model

        return load_digits_model("digits-ddpm"), "digits-ddpm (embedded)"
    except Exception as err:  # the embedded model is optional here
        class StandIn(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(nn.Conv2d(2, 64, 3, padding=1), nn.SiLU(), nn.Conv2d(64, 64, 3, padding=1),
                                          nn.SiLU(), nn.Conv2d(64, 1, 3, padding=1))

            def forward(self, x, t):
                return self.body(torch.cat([x, (t / 1000).view(-1, 1, 1, 1).expand_as(x)], 1))

        return VPDenoiser(StandIn().eval(), DiscreteVPSchedule.linear()), f"stand-in conv net ({err.__class__.__name__})"


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    ap.add_argument("--solvers", default=",".join(dode.SOLVERS), help="comma-separated solver names")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    denoiser, label = network()
    noise = torch.randn(args.batch, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((args.batch,), 1.0, dtype=torch.float64)
    denoiser(noise, sigma)  # warm-up
    def forward_pass() -> float:
        return best_of(lambda: [denoiser(noise, sigma) for _ in range(5)], args.repeat) / 5

    print(f"network: {label}; batch {args.batch}; one forward pass {forward_pass() * 1e3:.2f} ms; "
          f"threads {torch.get_num_threads()}")
    print(f"{'solver':9s} {'NFE':>4s} {'sample/(NFE·fwd)':>17s} {'fit/(teacher+student)':>22s}")
    for name in args.solvers.split(","):
        nfe = args.nfe - 1 if name == "heun" else args.nfe
        forward = forward_pass()  # measured next to each solver: the machine's speed drifts
        sample = best_of(lambda: dode.sample(denoiser, noise, name, nfe), args.repeat)
        spec, sigmas, plan = solver_grid(denoiser, name, nfe)
        _, points = student_points(denoiser, spec, sigmas, plan)
        teacher = best_of(lambda: teacher_states(denoiser, noise, spec.teacher, points, args.scale), args.repeat)
        fit = best_of(lambda: dode.fit_lambdas(denoiser, noise, name, nfe, args.scale), args.repeat)
        print(f"{name:9s} {nfe:4d} {sample / (nfe * forward):17.3f} {fit / (teacher + sample):22.3f}")


if __name__ == "__main__":
    main()
