"""The figures computed with the model (not from runs.csv); the model runs themselves are in
:mod:`dode.report.model_runs`, imported when one of these is rendered (so the CLI and make's queries
never import torch).

Fig. 2: the cosine similarity of all denoising outputs of a long DDIM run. Fig. 5: the norm of the
sample and two pixels along the trajectory of base and D-ODE solvers against a fine DDIM run on the
student's grid, with a table of their distances.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dode.report import figures
from dode.report.labels import method_label
from dode.report.options import Options
from dode.report.protocol import protocol
from dode.report.registry import artifact
from dode.report.tables import Table, write_tables


@artifact("fig-cosine", "Fig. 2: cosine similarity of all denoising outputs of a 1000-step DDIM run (computed "
          "with the model, not from runs.csv)", computed=True)
def fig_cosine(runs: pd.DataFrame | None, opt: Options) -> list[Path]:
    """Fig. 2: heatmaps for the noise- and the data-prediction model, and a table of their minima."""
    from dode.core.denoisers import native_prediction
    from dode.report import model_runs
    from dode.runner.loading import load_model

    cks = [c for c in (opt.checkpoint, opt.edm_checkpoint) if c]
    if not cks:
        opt.say("fig-cosine: no checkpoint; skipped")
        return []
    device = model_runs.device_for(opt)
    maps, rows = [], []
    for ck in cks:
        den, point = load_model(opt.dataset, ck, device)
        noise = model_runs.runner_noise(point, den, 0, opt.cosine_batch, device)
        _, sim = model_runs.cosine_data(den, noise, opt.steps)
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
def _curve(label: str, x, states: list, sigmas: list[float], pixels: list[int]) -> figures.Curve:
    from dode.report import model_runs

    vp = [model_runs.vp_scale(v, sg) for v, sg in zip(states, sigmas)]
    return figures.Curve(label, x, [float(v.flatten(1).norm(dim=1).mean()) for v in vp],
                         [[float(v.flatten(1)[0, p]) for v in vp] for p in pixels])


def _panel(runs, opt: Options, ck: str, s: str, den, point, noise, pixels: list[int],
           device: str) -> tuple[figures.TrajectoryPanel, dict] | None:
    """The column of solver ``s`` and its table row; None when ``s`` has no plan at this NFE."""
    from dode.core.solvers import get_solver
    from dode.report import model_runs

    nfe = opt.trajectory_nfe - 1 if s == "heun" and opt.trajectory_nfe % 2 == 0 else opt.trajectory_nfe
    try:
        get_solver(s).plan(nfe, True)
    except ValueError:
        return None
    corr, source = model_runs.lambdas_for(runs, opt, ck, s, nfe, den, point, device)
    t = model_runs.trajectory_data(den, noise, s, nfe, corr, opt.steps)
    u = model_runs.grid_progress(t.sigmas, t.ref_sigmas)
    base, dode = method_label(s, "none"), method_label(s, "dode")
    panel = figures.TrajectoryPanel(
        f"{base} vs {dode}, NFE {nfe}",
        _curve(f"DDIM {t.ref_steps} steps", model_runs.grid_progress(t.ref_sigmas, t.ref_sigmas), t.ref, t.ref_sigmas,
               pixels),
        _curve(f"{base} {nfe}", u, t.base, t.sigmas, pixels), _curve(f"{dode} {nfe}", u, t.dode, t.sigmas, pixels))
    dim = int(np.prod(noise.shape[1:]))
    path_base, final_base = model_runs.distances(t, "base", dim)
    path_dode, final_dode = model_runs.distances(t, "dode", dim)
    row = {"checkpoint": ck, "solver": s, "nfe": nfe, "ref_steps": t.ref_steps, "rmse_path_base": path_base,
           "rmse_path_dode": path_dode, "rmse_final_base": final_base, "rmse_final_dode": final_dode,
           "lambdas": source}
    return panel, row


@artifact("fig-trajectory", "Fig. 5: norm of the sample and two pixels along the trajectory, base and D-ODE "
          "solvers against 1000-step DDIM (computed)", computed=True)
def fig_trajectory(runs: pd.DataFrame | None, opt: Options) -> list[Path]:
    """Fig. 5 per checkpoint: columns = solvers; rows = norm of the sample, pixel A, pixel B (VP scale);
    and the table of distances to the reference."""
    from dode.report import model_runs
    from dode.runner.loading import load_model

    device = model_runs.device_for(opt)
    p = protocol()
    plans = [(ck, solvers) for ck, solvers in ((opt.checkpoint, p.noise_solvers), (opt.edm_checkpoint, p.edm_solvers))
             if ck]
    out, table = [], []
    for ck, solvers in plans:
        den, point = load_model(opt.dataset, ck, device)
        noise = model_runs.runner_noise(point, den, 0, opt.trajectory_batch, device)
        pixels = model_runs.sample_pixels(int(np.prod(noise.shape[1:])))
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
