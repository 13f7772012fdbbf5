"""The figures computed with the model (not from runs.csv), through the runner's own code: the model
and its point from :func:`dode.runner.points.load_model`, the noises (and class labels) of the
runner's seed blocks from :mod:`dode.runner.seeds`.

Fig. 2: the cosine similarity of all denoising outputs of a long DDIM run. Fig. 5: the norm of the
sample and two pixels along the trajectory of base and D-ODE solvers against a fine DDIM run on the
student's grid, with a table of their distances.
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
from dode.core.path import Correction
from dode.core.sampling import solver_grid, trajectory
from dode.core.schedules import refine
from dode.core.solvers import get_solver
from dode.learn.dode import fit_correction
from dode.report import figures
from dode.report.labels import method_label
from dode.report.options import Options
from dode.report.protocol import protocol
from dode.report.registry import artifact
from dode.report.tables import Table, rows_of, write_tables
from dode.runner import points, seeds


def _device(opt: Options) -> str:
    """The device of the computed figures; on CPU also torch's thread count (``opt.threads``: one by
    default — the digits models are tiny, and on a shared machine extra threads mostly wait)."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if opt.device == "auto" else opt.device
    if device == "cpu" and opt.threads:
        torch.set_num_threads(int(opt.threads))
    return device


def _noise(point, den, block: int, n: int, device: str) -> torch.Tensor:
    """The runner's noises (and class labels) of samples 0..n−1 of seed block ``block``."""
    noise, sample_seeds = seeds.make_noise(block, range(n), points.image_shape(point, den))
    seeds.set_labels(den, point, sample_seeds, device)
    return noise.to(device)


# ------------------------------------------------------------------------------------------ Fig. 2
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


@artifact("fig-cosine", "Fig. 2: cosine similarity of all denoising outputs of a 1000-step DDIM run (computed "
          "with the model, not from runs.csv)", computed=True)
def fig_cosine(runs: pd.DataFrame | None, opt: Options) -> list[Path]:
    """Fig. 2: heatmaps for the noise- and the data-prediction model, and a table of their minima."""
    cks = [c for c in (opt.checkpoint, opt.edm_checkpoint) if c]
    if not cks:
        opt.say("fig-cosine: no checkpoint; skipped")
        return []
    device = _device(opt)
    maps, rows = [], []
    for ck in cks:
        den, point = points.load_model(opt.dataset, ck, device)
        _, sim = cosine_data(den, _noise(point, den, 0, opt.cosine_batch, device), opt.steps)
        pred = native_prediction(den)
        maps.append((f"{ck}: {'ε (noise)' if pred == 'eps' else 'x0 (data)'} prediction", sim))
        near = min(sim[i, i + 1] for i in range(len(sim) - 1))
        rows.append(f"| {ck} | {'ε' if pred == 'eps' else 'x0'} | {float(near):.4f} | {float(sim.min()):.3f} |")
    out = figures.cosine_maps(maps, f"Cosine similarity between all denoising outputs of a {opt.steps}-step DDIM "
                              f"run ({opt.dataset}, mean over {opt.cosine_batch} noises of seed 0) — paper Fig. 2 "
                              "analogue", opt.figures / f"cosine-{opt.dataset}")
    lines = [f"### Cosine similarity of denoising outputs, {opt.steps}-step DDIM — {opt.dataset} (paper Fig. 2)", "",
             f"Mean over {opt.cosine_batch} noises; figure: figures/cosine-{opt.dataset}.png.", "",
             "| checkpoint | output | min cos(step i, step i+1) over i | min over all pairs |", "|---|---|---:|---:|"]
    opt.tables.mkdir(parents=True, exist_ok=True)
    md = opt.tables / f"cosine-{opt.dataset}.md"
    md.write_text("\n".join(lines + rows) + "\n")
    opt.say(f"wrote {md}")
    return out + [md]


# ------------------------------------------------------------------------------------------ Fig. 5
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


def _states_at_grid(calls: list, final: torch.Tensor, sigmas: list[float]) -> list:
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
            runs[name] = _states_at_grid(calls, final, sig)
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


def _vp(x: torch.Tensor, s: float) -> torch.Tensor:
    """A state at σ on the VP scale: x / √(1 + σ²)."""
    return x.double() / math.sqrt(1.0 + s * s)


def _lambdas_for(runs: pd.DataFrame | None, opt: Options, ck: str, solver: str, nfe: int, den, point,
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
    noise = _noise(point, den, seeds.fit_block(opt.fit_seed), opt.batch, device)
    with torch.no_grad():
        corr = fit_correction(den, noise, solver, nfe, opt.scale, "dode")
    return corr, f"fitted here (K = {opt.scale}, B = {opt.batch}, fit seed {opt.fit_seed}, the runner's fit noises)"


def _curve(label: str, x, states: list, sigmas: list[float], pixels: list[int]) -> figures.Curve:
    vp = [_vp(v, sg) for v, sg in zip(states, sigmas)]
    return figures.Curve(label, x, [float(v.flatten(1).norm(dim=1).mean()) for v in vp],
                         [[float(v.flatten(1)[0, p]) for v in vp] for p in pixels])


def _distances(t: Trajectories, name: str, dim: int) -> tuple[float, float]:
    """(path, final) per-pixel RMSE of run ``name`` to the reference at the student's σ (VP scale)."""
    per = [float((_vp(x, sg) - _vp(rx, sg)).flatten(1).norm(dim=1).mean() / math.sqrt(dim))
           for x, rx, sg in zip(getattr(t, name), t.ref_at_grid, t.sigmas) if rx is not None and x is not None]
    return float(np.mean(per[1:])) if len(per) > 1 else float("nan"), per[-1]


def _panel(runs, opt: Options, ck: str, s: str, den, point, noise, pixels: list[int],
           device: str) -> tuple[figures.TrajectoryPanel, dict] | None:
    """The column of solver ``s`` and its table row; None when ``s`` has no plan at this NFE."""
    nfe = opt.trajectory_nfe - 1 if s == "heun" and opt.trajectory_nfe % 2 == 0 else opt.trajectory_nfe
    try:
        get_solver(s).plan(nfe, True)
    except ValueError:
        return None
    corr, source = _lambdas_for(runs, opt, ck, s, nfe, den, point, device)
    t = trajectory_data(den, noise, s, nfe, corr, opt.steps)
    u = grid_progress(t.sigmas, t.ref_sigmas)
    base, dode = method_label(s, "none"), method_label(s, "dode")
    panel = figures.TrajectoryPanel(
        f"{base} vs {dode}, NFE {nfe}",
        _curve(f"DDIM {t.ref_steps} steps", grid_progress(t.ref_sigmas, t.ref_sigmas), t.ref, t.ref_sigmas, pixels),
        _curve(f"{base} {nfe}", u, t.base, t.sigmas, pixels), _curve(f"{dode} {nfe}", u, t.dode, t.sigmas, pixels))
    dim = int(np.prod(noise.shape[1:]))
    (path_base, final_base), (path_dode, final_dode) = _distances(t, "base", dim), _distances(t, "dode", dim)
    row = {"checkpoint": ck, "solver": s, "nfe": nfe, "ref_steps": t.ref_steps, "rmse_path_base": path_base,
           "rmse_path_dode": path_dode, "rmse_final_base": final_base, "rmse_final_dode": final_dode,
           "lambdas": source}
    return panel, row


@artifact("fig-trajectory", "Fig. 5: norm of the sample and two pixels along the trajectory, base and D-ODE "
          "solvers against 1000-step DDIM (computed)", computed=True)
def fig_trajectory(runs: pd.DataFrame | None, opt: Options) -> list[Path]:
    """Fig. 5 per checkpoint: columns = solvers; rows = norm of the sample, pixel A, pixel B (VP scale);
    and the table of distances to the reference."""
    device = _device(opt)
    p = protocol()
    plans = [(ck, solvers) for ck, solvers in ((opt.checkpoint, p.noise_solvers), (opt.edm_checkpoint, p.edm_solvers))
             if ck]
    out, table = [], []
    for ck, solvers in plans:
        den, point = points.load_model(opt.dataset, ck, device)
        noise = _noise(point, den, 0, opt.trajectory_batch, device)
        pixels = torch.randperm(int(np.prod(noise.shape[1:])), generator=torch.Generator().manual_seed(0))[:2].tolist()
        done = [_panel(runs, opt, ck, s, den, point, noise, pixels, device) for s in solvers]
        table += [r[1] for r in done if r is not None]
        out += figures.trajectories(
            [r[0] if r is not None else None for r in done], pixels,
            f"Sampling trajectories — {opt.dataset} · {ck}: the norm of the sample (mean over {opt.trajectory_batch} "
            f"noises of seed 0) and two pixels of sample 0, base (dashed) and D-ODE (solid) against DDIM with "
            f"{opt.steps} steps — paper Fig. 5 analogue", opt.figures / f"trajectory-{opt.dataset}-{ck}")
    if table:
        out += _trajectory_table(opt, pd.DataFrame(table))
    return out


def _trajectory_table(opt: Options, tdf: pd.DataFrame) -> list[Path]:
    rows = [[r.checkpoint, f"{method_label(r.solver, 'none')} / {method_label(r.solver, 'dode')}", r.nfe,
             f"{r.rmse_path_base:.4f}", f"{r.rmse_path_dode:.4f}", f"{r.rmse_final_base:.4f}",
             f"{r.rmse_final_dode:.4f}"] for r in tdf.itertuples()]
    t = Table(f"Distance to the {opt.steps}-step DDIM trajectory — {opt.dataset} (paper Fig. 5, quantified)",
              ["checkpoint", "solver", "NFE", "path RMSE base", "path RMSE D-ODE", "final RMSE base",
               "final RMSE D-ODE"], rows,
              f"Per-pixel RMSE (VP scale, images in [−1, 1]) between the solver's state and the DDIM reference "
              f"at the same σ, mean over {opt.trajectory_batch} noises of seed 0: 'path' averages the student's "
              f"grid points after the start, 'final' is the sample. Reference: DDIM on the student's grid refined "
              f"{opt.steps}/N times (it passes through every student σ). λ: the run folder's lambdas.json when "
              f"present, else fitted on the runner's fit noises (column `lambdas` of the CSV).")
    return write_tables(opt, f"trajectory-{opt.dataset}", [t], tdf)
