"""The model runs behind the computed figures (Figs. 2 and 5), through the runner's own code: the model
and its point from :func:`dode.runner.loading.load_model`, the noises (and class labels) of the runner's
seed blocks from :mod:`dode.runner.seeds`. Kept apart from :mod:`dode.report.studies` so that listing
or rendering the other artifacts never imports torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from dode.core.denoisers import native_prediction
from dode.core.forms import Correction
from dode.core.sampling import solver_grid, trajectory
from dode.core.schedules import refine
from dode.learn.dode import fit_correction
from dode.report.options import Options
from dode.report.tables import rows_of
from dode.runner import loading, seeds


def device_for(opt: Options) -> str:
    """The device of the computed figures; on CPU also torch's thread count (``opt.threads``: one by
    default — the digits models are tiny, and on a shared machine extra threads mostly wait)."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if opt.device == "auto" else opt.device
    if device == "cpu" and opt.threads:
        torch.set_num_threads(int(opt.threads))
    return device


def runner_noise(point, den, block: int, n: int, device: str) -> torch.Tensor:
    """The runner's noises (and class labels) of samples 0..n−1 of seed block ``block``."""
    noise, sample_seeds = seeds.make_noise(block, range(n), loading.image_shape(point, den))
    seeds.set_labels(den, point, sample_seeds, device)
    return noise.to(device)


def native_outputs(calls: list, prediction: str) -> torch.Tensor:
    """The network's own outputs of every evaluation: ε = (x − D)/σ (noise models) or D (data models),
    as (steps, batch, dim) float64."""
    outs = [((x - d) / s if prediction == "eps" else d) for s, x, d in calls]
    return torch.stack([o.reshape(o.shape[0], -1).double() for o in outs])


def cosine_matrix(outputs: torch.Tensor) -> np.ndarray:
    """Mean over the batch of the cosine similarity between the outputs of every pair of evaluations."""
    o = torch.nn.functional.normalize(outputs, dim=-1)  # (S, B, D)
    sim = torch.einsum("ibd,jbd->ij", o, o) / o.shape[1]
    return sim.cpu().numpy()


def cosine_data(den: Callable, noise: torch.Tensor, steps: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(σ of each evaluation, cosine matrix) of a ``steps``-step DDIM run from ``noise``."""
    with torch.no_grad():
        _, calls = trajectory(den, noise, "ddim", steps)
    sig = np.array([c[0] for c in calls])
    return sig, cosine_matrix(native_outputs(calls, native_prediction(den)))




@dataclass
class Trajectories:
    """Base and D-ODE states on the student's grid ``sigmas`` and the fine reference run (its σ, states,
    and its state at each student σ)."""

    sigmas: list[float]
    ref_sigmas: list[float]
    ref: list[torch.Tensor]
    ref_at_grid: list[torch.Tensor | None]
    base: list[torch.Tensor | None]
    dode: list[torch.Tensor | None]
    ref_steps: int


def states_at_grid(calls: list, final: torch.Tensor, sigmas: list[float]) -> list:
    """The solver's state at each σ of its grid: the last model input at that σ (Heun: the corrected
    state, not its predictor), and the final sample at the last σ."""
    out = []
    for s in sigmas[:-1]:
        xs = [x for sg, x, _ in calls if sg == s]
        out.append(xs[-1] if xs else None)
    out.append(final)
    return out


def trajectory_data(den: Callable, noise: torch.Tensor, solver: str, nfe: int, correction: Correction | None,
                    steps: int = 1000) -> Trajectories:
    """Base and D-ODE trajectories of ``solver`` at ``nfe`` and a DDIM reference of about ``steps``
    steps on the student's grid refined ``steps // N`` times (it passes through every student σ; for the
    time-uniform grid of a T = 1000 model this is the 1000-step DDIM run)."""
    _, sigmas, _ = solver_grid(den, solver, nfe)
    fine = refine(sigmas, max(1, steps // (len(sigmas) - 1)), den)
    sig = sigmas.tolist()
    with torch.no_grad():
        ref_final, ref_calls = trajectory(den, noise, "ddim", len(fine) - 1, grid=fine)
        runs = {}
        for name, lam in (("base", None), ("dode", correction)):
            final, calls = trajectory(den, noise, solver, nfe, lambdas=lam)
            runs[name] = states_at_grid(calls, final, sig)
    ref_sig = [c[0] for c in ref_calls] + [float(fine[-1])]
    ref_x = [c[1] for c in ref_calls] + [ref_final]
    ref_at = dict(zip(ref_sig, ref_x))
    return Trajectories(sig, ref_sig, ref_x, [ref_at.get(s) for s in sig], runs["base"], runs["dode"], len(fine) - 1)


def grid_progress(sig: Sequence[float], ref_sig: Sequence[float]) -> np.ndarray:
    """Position of each σ on the reference grid, 0 (σ_max) … 1 (σ = 0), linear in the grid's index."""
    r = np.asarray(ref_sig, dtype=float)
    idx = np.arange(len(r), dtype=float)
    out = []
    for s in sig:
        j = np.where(np.isclose(r, s, rtol=1e-9, atol=0))[0]
        out.append(idx[j[-1]] if len(j) else np.interp(-s, -r, idx))
    return np.asarray(out) / (len(r) - 1)


def vp_scale(x: torch.Tensor, s: float) -> torch.Tensor:
    """A state at σ on the VP scale: x / √(1 + σ²)."""
    return x.double() / math.sqrt(1.0 + s * s)


def lambdas_for(runs: pd.DataFrame | None, opt: Options, ck: str, solver: str, nfe: int, den, point,
                 device: str) -> tuple[Correction, str]:
    """The D-ODE correction of (checkpoint, solver, NFE) and where it came from: the run folder's
    lambdas.json when runs.csv has it (K, B and fit seed of the main tables), else fitted here on the
    runner's fit noises."""
    if runs is not None and len(runs):
        d = rows_of(runs[(runs["dataset"].astype(str) == opt.dataset) & (runs["checkpoint"].astype(str) == ck)],
                    solver=solver, nfe=nfe, distill="dode", scale=opt.scale, batch=opt.batch, fit_seed=opt.fit_seed)
        for p in d["run_path"].unique():
            f = Path(p) / "lambdas.json"
            if f.is_file():
                return Correction.load(f), f"{f}"
    noise = runner_noise(point, den, seeds.fit_block(opt.fit_seed), opt.batch, device)
    with torch.no_grad():
        corr = fit_correction(den, noise, solver, nfe, opt.scale, "dode")
    return corr, f"fitted here (K = {opt.scale}, B = {opt.batch}, fit seed {opt.fit_seed}, the runner's fit noises)"


def distances(t: Trajectories, name: str, dim: int) -> tuple[float, float]:
    """(path, final) per-pixel RMSE of run ``name`` to the reference at the student's σ (VP scale)."""
    per = [float((vp_scale(x, sg) - vp_scale(rx, sg)).flatten(1).norm(dim=1).mean() / math.sqrt(dim))
           for x, rx, sg in zip(getattr(t, name), t.ref_at_grid, t.sigmas) if rx is not None and x is not None]
    return float(np.mean(per[1:])) if len(per) > 1 else float("nan"), per[-1]


def sample_pixels(dim: int, n: int = 2) -> list[int]:
    """``n`` pixel indices of Fig. 5, the same on every run (generator seeded 0)."""
    return torch.randperm(dim, generator=torch.Generator().manual_seed(0))[:n].tolist()
