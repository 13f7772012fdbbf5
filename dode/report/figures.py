"""Figures of :mod:`dode.report.report` (PNG + PDF, matplotlib's Agg backend).

From runs.csv: metric vs NFE (paper Figs. 3/4), the learned solvers vs NFE (table-learned), the λ
grid search (Fig. 8b/c), sample grids (Fig. 6).
Computed with the model through :func:`dode.trajectory`: the cosine similarity of all denoising
outputs of a 1000-step DDIM run (Fig. 2) and the norm / two pixels of the sample along the
trajectory of base and D-ODE solvers against 1000-step DDIM (Fig. 5, with a table of distances).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dode.runner.points import load_model

if TYPE_CHECKING:  # pragma: no cover
    from dode.report.report import Options

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, stem: Path, dpi: int = 100) -> list[Path]:
    """``<stem>.png`` and ``<stem>.pdf`` without time stamps (so reruns give the same bytes)."""
    plt = _plt()
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    fig.savefig(png, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(pdf, bbox_inches="tight", metadata={"CreationDate": None, "ModDate": None, "Producer": None,
                                                      "Creator": None})
    plt.close(fig)
    return [png, pdf]


def _wrap(text: str, width: int = 110) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def _log_y(ax, vals) -> None:
    """A log y axis with plain tick labels (1, 2, 5, 10, …) when the values span a decade or so."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    vals = np.asarray(vals, dtype=float)
    vals = vals[np.isfinite(vals)]
    if not len(vals) or vals.min() <= 0 or vals.max() / vals.min() <= 8:
        return
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(NullFormatter())


# ---------------------------------------------------------------------------------------- runs.csv
def fid_vs_nfe(long: pd.DataFrame, solvers: list[str], title: str, caption: str, ylabel: str, stem: Path) -> list[Path]:
    """One axis: each solver a colour; base dashed, D-ODE solid; error bars = std over seeds."""
    from dode.report.report import method_label, solver_label

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    vals = long["mean"].astype(float)
    for i, s in enumerate(solvers):
        c = COLORS[i % len(COLORS)]
        for dist, ls, mk, label in (("none", "--", "o", solver_label(s)), ("dode", "-", "s", method_label(s, "dode"))):
            g = long[(long["solver"] == s) & (long["distill"] == dist)].sort_values("nfe")
            if g.empty:
                continue
            ax.errorbar(g["nfe"], g["mean"], yerr=g["std"].fillna(0), color=c, ls=ls, marker=mk, ms=4, lw=1.5,
                        capsize=2, label=label, alpha=0.95 if dist == "dode" else 0.75)
    ax.set_xscale("log")
    _log_y(ax, vals)
    _nfe_axes(fig, ax, long["nfe"], ylabel, title,
              caption + ". Dashed: base solver; solid: its D-ODE variant; bars: ± std.")
    return save(fig, stem)


def _nfe_axes(fig, ax, nfe_values, ylabel: str, title: str, caption: str) -> None:
    """An NFE x axis (a tick per NFE, labels that would overlap left out), grid, legend, title and a
    caption under the figure."""
    nfes = [int(n) for n in sorted(set(nfe_values))]
    ax.set_xticks(nfes)
    shown, labels = None, []
    for n in nfes:  # no overlapping labels (10 and 11, 50 and 51)
        keep = shown is None or n / shown >= 1.18
        labels.append(str(n) if keep else "")
        shown = n if keep else shown
    ax.set_xticklabels(labels)
    ax.minorticks_off()
    ax.set_xlabel("NFE")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(_wrap(title, 70), fontsize=10)
    fig.text(0.01, -0.02, _wrap(caption, 120), fontsize=7, va="top")


def learned_vs_nfe(curves: pd.DataFrame, solver: str, reference: tuple | None, title: str, caption: str,
                   ylabel: str, stem: Path) -> list[Path]:
    """Metric vs NFE of the base solver (dashed), D-ODE, IIA, S4S and S4S-Alt (solid; dash-dotted with
    the feature distance), bars = std over seeds; the model's reference solver as a horizontal line
    with its ± std band, and the line at ``GOAL_RATIO``× it (dotted)."""
    from dode.report.report import GOAL_RATIO, LEARNED_METHODS, method_label

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    vals = list(curves["mean"].astype(float))
    for i, m in enumerate(LEARNED_METHODS):
        g = curves[curves["distill"] == m].sort_values("nfe")
        if g.empty:
            continue
        base = m == "none"
        ax.errorbar(g["nfe"], g["mean"], yerr=g["std"].fillna(0), color="k" if base else COLORS[(i - 1) % len(COLORS)],
                    ls="--" if base else "-." if m.endswith("_fd") else "-", marker="o" if base else "s", ms=4,
                    lw=1.5, capsize=2, label=method_label(solver, m))
    if reference is not None:
        mean, std, label = reference
        ax.axhline(mean, color="0.3", lw=1.2, label=f"reference: {label}")
        if np.isfinite(std):
            ax.axhspan(mean - std, mean + std, color="0.3", alpha=0.15, lw=0)
        ax.axhline(GOAL_RATIO * mean, color="0.3", lw=1.0, ls=":", label=f"{GOAL_RATIO:g}× reference")
        vals += [mean, GOAL_RATIO * mean]
    _log_y(ax, vals)
    _nfe_axes(fig, ax, curves["nfe"], ylabel, title, caption + ". Dashed: base solver; dash-dotted: S4S with the "
              "feature distance; bars: ± std over seeds; grey: reference ± std.")
    return save(fig, stem)


def lambda_grid(grid: pd.DataFrame, refs: dict, nfes: list[int], ylabel: str, title: str, stem: Path) -> list[Path]:
    """Metric vs the one λ of Fixed-D-DDIM and LA-DDIM per NFE, DDIM and D-DDIM dotted."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(nfes), figsize=(3.4 * len(nfes), 3.2), squeeze=False)
    for ax, n in zip(axes[0], nfes):
        for dist, c, label in (("fixed", COLORS[1], "Fixed-D-DDIM"), ("lookahead", COLORS[2], "LA-DDIM")):
            g = grid[(grid["distill"] == dist) & (grid["nfe"] == n)].sort_values("lam")
            if len(g):
                ax.errorbar(g["lam"], g["mean"], yerr=g["std"].fillna(0), color=c, marker="o", ms=3, capsize=2,
                            label=label)
        for dist, c, label in (("none", "k", "DDIM"), ("dode", COLORS[0], "D-DDIM")):
            v = refs.get(dist, {}).get(n)
            if v is not None and np.isfinite(v):
                ax.axhline(v, color=c, ls=":", lw=1.2, label=label)
        _log_y(ax, list(grid[grid["nfe"] == n]["mean"]) + [v.get(n, np.nan) for v in refs.values()])
        ax.set_title(f"NFE {n}", fontsize=9)
        ax.set_xlabel("λ")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(_wrap(title, 90), fontsize=10)
    fig.tight_layout()
    return save(fig, stem)


def _montage(imgs: np.ndarray, cols: int | None = None, pad: int = 1) -> np.ndarray:
    """uint8 (N, H, W, C) → one (rows·H, cols·W, C) image with white padding."""
    n, h, w, c = imgs.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = imgs[i]
    return out


def sample_grids(cells: dict, title: str, stem: Path) -> list[Path]:
    """``cells[(solver, nfe, distill)]`` = uint8 images; rows solver × {base, D-ODE}, columns NFE."""
    from dode.report.report import method_label

    plt = _plt()
    solvers = list(dict.fromkeys(s for s, _, _ in cells))
    rows = [(s, d) for s in solvers for d in ("none", "dode") if any(k[0] == s and k[2] == d for k in cells)]
    cols = {s: sorted({n for s2, n, _ in cells if s2 == s}) for s in solvers}
    ncol = max(len(v) for v in cols.values())
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.0 * ncol, 2.1 * len(rows)), squeeze=False)
    for r, (s, d) in enumerate(rows):
        for k in range(ncol):
            ax = axes[r][k]
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= len(cols[s]):
                ax.axis("off")
                continue
            n = cols[s][k]
            im = cells.get((s, n, d))
            if im is None:
                ax.axis("off")
                continue
            m = _montage(im)
            ax.imshow(m[..., 0] if m.shape[-1] == 1 else m, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(f"{method_label(s, d)}, NFE {n}", fontsize=8)
    fig.suptitle(_wrap(title, 80), fontsize=10)
    fig.tight_layout()
    return save(fig, stem, dpi=120)


# ---------------------------------------------------------------------------------------- computed
def _device(opt: "Options") -> str:
    """The device of the computed figures; on CPU also torch's thread count (``opt.threads``: one by
    default — the digits models are tiny, and on a shared machine extra threads mostly wait)."""
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if opt.device == "auto" else opt.device
    if device == "cpu" and opt.threads:
        torch.set_num_threads(int(opt.threads))
    return device


def _noise(point: dict, den, block: int, n: int, device: str):
    """The runner's noises (and class labels) of samples 0..n−1 of seed block ``block``."""
    from dode.runner import points, seeds as seeding

    shape = points.image_shape(point, den)
    noise, seeds = seeding.make_noise(block, range(n), shape)
    seeding.set_labels(den, point, seeds, device)
    return noise.to(device)


def native_outputs(calls: list, prediction: str):
    """The network's own outputs of every evaluation: ε = (x − D)/σ (noise models) or D (data models)."""
    import torch

    outs = [((x - d) / s if prediction == "eps" else d) for s, x, d in calls]
    return torch.stack([o.reshape(o.shape[0], -1).double() for o in outs])  # (steps, batch, dim)


def cosine_matrix(outputs) -> np.ndarray:
    """Mean over the batch of the cosine similarity between the outputs of every pair of evaluations."""
    import torch

    o = torch.nn.functional.normalize(outputs, dim=-1)  # (S, B, D)
    sim = torch.einsum("ibd,jbd->ij", o, o) / o.shape[1]
    return sim.cpu().numpy()


def cosine_data(den, noise, steps: int = 1000):
    """(σ of each evaluation, cosine matrix) of a ``steps``-step DDIM run from ``noise``."""
    import torch

    from dode.core.denoisers import native_prediction
    from dode.core.sampling import trajectory

    with torch.no_grad():
        _, calls = trajectory(den, noise, "ddim", steps)
    sig = np.array([c[0] for c in calls])
    return sig, cosine_matrix(native_outputs(calls, native_prediction(den)))


def cosine_figure(opt: "Options") -> list[Path]:
    """Fig. 2: heatmaps for the noise- and the data-prediction model."""
    from dode.core.denoisers import native_prediction

    plt = _plt()
    device = _device(opt)
    cks = [c for c in (opt.checkpoint, opt.edm_checkpoint) if c]
    if not cks:
        opt.say("fig-cosine: no checkpoint; skipped")
        return []
    fig, axes = plt.subplots(1, len(cks), figsize=(4.6 * len(cks), 4.3), squeeze=False)
    rows = []
    for ax, ck in zip(axes[0], cks):
        den, point = load_model(opt.dataset, ck, device)
        noise = _noise(point, den, 0, opt.cosine_batch, device)
        sig, sim = cosine_data(den, noise, opt.steps)
        pred = native_prediction(den)
        stride = max(1, len(sim) // 250)  # display resolution (keeps the files small)
        im = ax.imshow(sim[::stride, ::stride], cmap="viridis", vmin=math.floor(float(sim.min()) * 20) / 20, vmax=1.0,
                       extent=(0, len(sim), len(sim), 0), interpolation="nearest")
        ax.set_title(f"{ck}: {'ε (noise)' if pred == 'eps' else 'x0 (data)'} prediction", fontsize=9)
        ax.set_xlabel("DDIM step (0 = pure noise)")
        ax.set_ylabel("DDIM step")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        near = min(sim[i, i + 1] for i in range(len(sim) - 1))
        rows.append((ck, pred, float(near), float(sim.min())))
    fig.suptitle(_wrap(f"Cosine similarity between all denoising outputs of a {opt.steps}-step DDIM run "
                       f"({opt.dataset}, mean over {opt.cosine_batch} noises of seed 0) — paper Fig. 2 analogue", 100),
                 fontsize=10)
    fig.tight_layout()
    out = save(fig, opt.figures / f"cosine-{opt.dataset}")
    lines = [f"### Cosine similarity of denoising outputs, {opt.steps}-step DDIM — {opt.dataset} (paper Fig. 2)", "",
             f"Mean over {opt.cosine_batch} noises; figure: figures/cosine-{opt.dataset}.png.", "",
             "| checkpoint | output | min cos(step i, step i+1) over i | min over all pairs |", "|---|---|---:|---:|"]
    lines += [f"| {ck} | {'ε' if p == 'eps' else 'x0'} | {n:.4f} | {m:.3f} |" for ck, p, n, m in rows]
    opt.tables.mkdir(parents=True, exist_ok=True)
    md = opt.tables / f"cosine-{opt.dataset}.md"
    md.write_text("\n".join(lines) + "\n")
    opt.say(f"wrote {md}")
    return out + [md]


# ---------------------------------------------------------------------------------------- Fig. 5
def _lambdas_for(df, opt: "Options", ck: str, solver: str, nfe: int, den, point: dict, device: str):
    """The D-ODE correction of (checkpoint, solver, NFE): the run folder's lambdas.json when runs.csv has
    it (K, B and fit seed of the main tables), else fitted here on the runner's fit noises."""
    from dode.learn.dode import fit_correction
    from dode.runner.seeds import fit_block
    from dode.core.path import Correction

    if df is not None and len(df):
        d = df[(df["dataset"].astype(str) == opt.dataset) & (df["checkpoint"].astype(str) == ck)
               & (df["solver"] == solver) & (df["nfe"] == nfe) & (df["distill"] == "dode") & (df["scale"] == opt.scale)
               & (df["batch"] == opt.batch) & (df["fit_seed"] == opt.fit_seed)]
        for p in d["run_path"].unique():
            f = Path(p) / "lambdas.json"
            if f.is_file():
                return Correction.load(f), f"{f}"
    noise = _noise(point, den, fit_block(opt.fit_seed), opt.batch, device)
    import torch

    with torch.no_grad():
        corr = fit_correction(den, noise, solver, nfe, opt.scale, "dode")
    return corr, f"fitted here (K = {opt.scale}, B = {opt.batch}, fit seed {opt.fit_seed}, the runner's fit noises)"


def _states_at_grid(calls: list, final, sigmas) -> list:
    """The solver's state at each σ of its grid: the last model input at that σ (Heun: the corrected
    state, not its predictor), and the final sample at the last σ."""
    out = []
    for s in sigmas[:-1]:
        xs = [x for sg, x, _ in calls if sg == s]
        out.append(xs[-1] if xs else None)
    out.append(final)
    return out


def trajectory_data(den, noise, solver: str, nfe: int, correction, steps: int = 1000) -> dict:
    """Base and D-ODE trajectories of ``solver`` at ``nfe`` and a DDIM reference of about ``steps``
    steps on the student's grid refined ``steps // N`` times (it passes through every student σ; for the
    time-uniform grid of a T = 1000 model this is the 1000-step DDIM run)."""
    import torch

    from dode.core.sampling import solver_grid, trajectory
    from dode.core.schedules import refine

    spec, sigmas, plan = solver_grid(den, solver, nfe)
    factor = max(1, steps // (len(sigmas) - 1))
    fine = refine(sigmas, factor, den)
    with torch.no_grad():
        ref_final, ref_calls = trajectory(den, noise, "ddim", len(fine) - 1, grid=fine)
        runs = {}
        for name, lam in (("base", None), ("dode", correction)):
            final, calls = trajectory(den, noise, solver, nfe, lambdas=lam)
            runs[name] = _states_at_grid(calls, final, sigmas.tolist())
    ref_sig = [c[0] for c in ref_calls] + [float(fine[-1])]
    ref_x = [c[1] for c in ref_calls] + [ref_final]
    ref_at = {s: x for s, x in zip(ref_sig, ref_x)}
    sig = sigmas.tolist()
    return {"sigmas": sig, "ref_sigmas": ref_sig, "ref": ref_x, "ref_at_grid": [ref_at.get(s) for s in sig],
            "base": runs["base"], "dode": runs["dode"], "ref_steps": len(fine) - 1}


def _progress(sig, ref_sig) -> np.ndarray:
    """Position of each σ on the reference grid, 0 (σ_max) … 1 (σ = 0), linear in the grid's index."""
    r = np.asarray(ref_sig, dtype=float)
    idx = np.arange(len(r), dtype=float)
    out = []
    for s in sig:
        j = np.where(np.isclose(r, s, rtol=1e-9, atol=0))[0]
        out.append(idx[j[-1]] if len(j) else np.interp(-s, -r, idx))
    return np.asarray(out) / (len(r) - 1)


def _vp(x, s: float):
    return x.double() / math.sqrt(1.0 + s * s)


def trajectory_figure(opt: "Options", df=None) -> list[Path]:
    """Fig. 5 per checkpoint: columns = solvers; rows = norm of the sample, pixel A, pixel B (VP scale)."""
    import torch

    from dode.core.solvers import get_solver

    plt = _plt()
    device = _device(opt)
    plans = []
    if opt.checkpoint:
        plans.append((opt.checkpoint, ["ddim", "ipndm", "dpm3", "deis3"]))
    if opt.edm_checkpoint:
        plans.append((opt.edm_checkpoint, ["ddim", "heun"]))
    out, table = [], []
    for ck, solvers in plans:
        den, point = load_model(opt.dataset, ck, device)
        noise = _noise(point, den, 0, opt.trajectory_batch, device)
        d = int(np.prod(noise.shape[1:]))
        g = torch.Generator().manual_seed(0)
        pixels = torch.randperm(d, generator=g)[:2].tolist()
        fig, axes = plt.subplots(3, len(solvers), figsize=(3.3 * len(solvers), 7.6), squeeze=False)
        for k, s in enumerate(solvers):
            nfe = opt.trajectory_nfe
            if s == "heun" and nfe % 2 == 0:
                nfe -= 1
            try:
                get_solver(s).plan(nfe, True)
            except ValueError:
                continue
            corr, source = _lambdas_for(df, opt, ck, s, nfe, den, point, device)
            t = trajectory_data(den, noise, s, nfe, corr, opt.steps)
            u_ref = _progress(t["ref_sigmas"], t["ref_sigmas"])
            u = _progress(t["sigmas"], t["ref_sigmas"])
            ref_vp = [_vp(x, sg) for x, sg in zip(t["ref"], t["ref_sigmas"])]
            series = {"ref": ref_vp}
            for name in ("base", "dode"):
                series[name] = [_vp(x, sg) for x, sg in zip(t[name], t["sigmas"])]
            from dode.report.report import method_label

            labels = {"ref": f"DDIM {t['ref_steps']} steps", "base": f"{method_label(s, 'none')} {nfe}",
                      "dode": f"{method_label(s, 'dode')} {nfe}"}
            styles = {"ref": dict(color="k", lw=1.0), "base": dict(color=COLORS[1], ls="--", marker="o", ms=3),
                      "dode": dict(color=COLORS[0], ls="-", marker="s", ms=3)}
            for name in ("ref", "base", "dode"):
                xs = u_ref if name == "ref" else u
                norm = [float(v.flatten(1).norm(dim=1).mean()) for v in series[name]]
                axes[0][k].plot(xs, norm, label=labels[name], **styles[name])
                for r, p in enumerate(pixels):
                    axes[r + 1][k].plot(xs, [float(v.flatten(1)[0, p]) for v in series[name]], **styles[name])
            axes[0][k].set_title(f"{method_label(s, 'none')} vs {method_label(s, 'dode')}, NFE {nfe}", fontsize=9)
            axes[0][k].legend(fontsize=7)
            for r in range(3):
                axes[r][k].grid(alpha=0.3)
            axes[2][k].set_xlabel("sampling progress (reference grid)")
            # distances to the reference at the student's grid points
            dist = {}
            for name in ("base", "dode"):
                per = [float((_vp(x, sg) - _vp(rx, sg)).flatten(1).norm(dim=1).mean() / math.sqrt(d))
                       for x, rx, sg in zip(t[name], t["ref_at_grid"], t["sigmas"]) if rx is not None and x is not None]
                dist[name] = (float(np.mean(per[1:])) if len(per) > 1 else float("nan"), per[-1])
            table.append({"checkpoint": ck, "solver": s, "nfe": nfe, "ref_steps": t["ref_steps"],
                          "rmse_path_base": dist["base"][0], "rmse_path_dode": dist["dode"][0],
                          "rmse_final_base": dist["base"][1], "rmse_final_dode": dist["dode"][1],
                          "lambdas": source})
        axes[0][0].set_ylabel("‖x‖ (VP scale), batch mean")
        axes[1][0].set_ylabel(f"pixel {pixels[0]} of sample 0")
        axes[2][0].set_ylabel(f"pixel {pixels[1]} of sample 0")
        fig.suptitle(_wrap(f"Sampling trajectories — {opt.dataset} · {ck}: the norm of the sample (mean over "
                           f"{opt.trajectory_batch} noises of seed 0) and two pixels of sample 0, base (dashed) and "
                           f"D-ODE (solid) against DDIM with {opt.steps} steps — paper Fig. 5 analogue", 110), fontsize=10)
        fig.tight_layout()
        out += save(fig, opt.figures / f"trajectory-{opt.dataset}-{ck}")
    if table:
        from dode.report.report import Table, method_label, write_tables

        tdf = pd.DataFrame(table)
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
        out += write_tables(opt, f"trajectory-{opt.dataset}", [t], tdf)
    return out
