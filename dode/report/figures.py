"""The report's figures (PNG + PDF, matplotlib's Agg backend): plotting only.

Metric vs NFE (paper Figs. 3/4), the learned solvers vs NFE (table-learned), the λ grid search
(Fig. 8b/c), sample grids (Fig. 6), cosine-similarity maps (Fig. 2) and sampling trajectories
(Fig. 5). The numbers come from the callers: :mod:`dode.report.data` (runs.csv) and
:mod:`dode.report.studies` (the model runs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from dode.report.labels import method_label, solver_label

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p", "d", "8"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: "Figure", stem: Path, dpi: int = 100) -> list[Path]:
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
def fid_vs_nfe(long: pd.DataFrame, solvers: list[str], title: str, caption: str, ylabel: str, stem: Path,
               learned: str = "dode", variant: str = "D-ODE") -> list[Path]:
    """One axis: each solver a colour; base (distill ``none``) dashed, its ``learned`` variant (a distill
    option, named ``variant`` in the caption) solid; error bars = std over seeds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    vals = long["mean"].astype(float)
    for i, s in enumerate(solvers):
        c = COLORS[i % len(COLORS)]
        lines = [("none", "--", "o", solver_label(s))]
        lines += [(learned, "-", "s", method_label(s, learned))] if learned != "none" else []
        for dist, ls, mk, label in lines:
            g = long[(long["solver"] == s) & (long["distill"] == dist)].sort_values("nfe")
            if g.empty:
                continue
            ax.errorbar(g["nfe"], g["mean"], yerr=g["std"].fillna(0), color=c, ls=ls, marker=mk, ms=4, lw=1.5,
                        capsize=2, label=label, alpha=0.95 if dist == learned else 0.75)
    ax.set_xscale("log")
    _log_y(ax, vals)
    _nfe_axes(fig, ax, long["nfe"], ylabel, title,
              caption + f". Dashed: base solver; solid: its {variant} variant; bars: ± std.")
    return save(fig, stem)


def _nfe_axes(fig, ax, nfe_values, ylabel: str, title: str, caption: str, legend_outside: bool = False) -> None:
    """An NFE x axis (a tick per NFE, labels that would overlap left out), grid, legend (right of the
    axes with ``legend_outside``), title and a caption under the figure."""
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
    if legend_outside:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8, ncol=2)
    ax.set_title(_wrap(title, 70), fontsize=10)
    fig.text(0.01, -0.02, _wrap(caption, 120), fontsize=7, va="top")


@dataclass(frozen=True)
class Line:
    """One curve of :func:`learned_vs_nfe`: its rows (``curves["row"] == key``), legend label, line
    style and colour (None: by position)."""

    key: str
    label: str
    ls: str = "-"
    color: str | None = None


def learned_vs_nfe(curves: pd.DataFrame, lines: Sequence[Line], reference: tuple | None,
                   goal: tuple[int, float] | None, title: str, caption: str, ylabel: str, stem: Path) -> list[Path]:
    """Metric vs NFE of each of ``lines`` (``curves``: mean and std per row and NFE), bars = std over
    seeds; the model's reference solver ``(mean, std, label)`` as a horizontal line with its ± std band,
    and ``goal = (nfe, ratio)``: the line at ratio × it (dotted)."""
    plt = _plt()
    many = len(lines) > len(COLORS)  # more curves than COLORS: tab20's colours and a marker each, legend outside
    palette = [plt.cm.tab20(k) for k in range(20)] if many else COLORS
    fig, ax = plt.subplots(figsize=(9.6 if many else 7.2, 4.8))
    vals = list(curves["mean"].astype(float))
    for i, line in enumerate(lines):
        g = curves[curves["row"] == line.key].sort_values("nfe")
        if g.empty:
            continue
        marker = MARKERS[i % len(MARKERS)] if many else "o" if line.ls == "--" else "s"
        ax.errorbar(g["nfe"], g["mean"], yerr=g["std"].fillna(0), color=line.color or palette[i % len(palette)],
                    ls=line.ls, marker=marker, ms=4, lw=1.5, capsize=2, label=line.label)
    if reference is not None:
        mean, std, label = reference
        ax.axhline(mean, color="0.3", lw=1.2, label=f"reference: {label}")
        if np.isfinite(std):
            ax.axhspan(mean - std, mean + std, color="0.3", alpha=0.15, lw=0)
        if goal is not None:
            ax.axhline(goal[1] * mean, color="0.3", lw=1.0, ls=":",
                       label=f"{goal[1]:g}× reference (goal at NFE {goal[0]})")
            vals.append(goal[1] * mean)
        vals.append(mean)
    _log_y(ax, vals)
    _nfe_axes(fig, ax, curves["nfe"], ylabel, title, caption + ". Dashed: un-learned base solvers (black: the learned "
              "methods' own); dash-dotted: the feature distance; bars: ± std over seeds; grey: reference ± std.",
              legend_outside=many)
    return save(fig, stem)


def lambda_grid(grid: pd.DataFrame, refs: dict, nfes: list[int], labels: dict[str, str], ylabel: str, title: str,
                stem: Path) -> list[Path]:
    """Metric vs the one λ of Fixed-D-DDIM and LA-DDIM per NFE, DDIM and D-DDIM dotted (``labels``:
    the display name of each of ``fixed``, ``lookahead``, ``none``, ``dode``)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(nfes), figsize=(3.4 * len(nfes), 3.2), squeeze=False)
    for ax, n in zip(axes[0], nfes):
        for dist, c in (("fixed", COLORS[1]), ("lookahead", COLORS[2])):
            g = grid[(grid["distill"] == dist) & (grid["nfe"] == n)].sort_values("lam")
            if len(g):
                ax.errorbar(g["lam"], g["mean"], yerr=g["std"].fillna(0), color=c, marker="o", ms=3, capsize=2,
                            label=labels[dist])
        for dist, c in (("none", "k"), ("dode", COLORS[0])):
            v = refs.get(dist, {}).get(n)
            if v is not None and np.isfinite(v):
                ax.axhline(v, color=c, ls=":", lw=1.2, label=labels[dist])
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


def _sample_cell(ax, images: np.ndarray | None, title: str) -> None:
    """One cell of the sample grid: the images as a montage, or an empty axis."""
    ax.set_xticks([])
    ax.set_yticks([])
    if images is None:
        ax.axis("off")
        return
    m = _montage(images)
    ax.imshow(m[..., 0] if m.shape[-1] == 1 else m, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(title, fontsize=8)


def _sample_layout(cells: dict) -> tuple[list[tuple[str, str]], dict[str, list[int]]]:
    """The rows (solver, distill) that have images, in the solvers' first order, and each solver's NFE."""
    solvers = list(dict.fromkeys(s for s, _, _ in cells))
    rows = [(s, d) for s in solvers for d in ("none", "dode") if any(k[0] == s and k[2] == d for k in cells)]
    return rows, {s: sorted({n for s2, n, _ in cells if s2 == s}) for s in solvers}


def sample_grids(cells: dict, title: str, stem: Path) -> list[Path]:
    """``cells[(solver, nfe, distill)]`` = uint8 images; rows solver × {base, D-ODE}, columns NFE."""
    plt = _plt()
    rows, cols = _sample_layout(cells)
    ncol = max(len(v) for v in cols.values())
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.0 * ncol, 2.1 * len(rows)), squeeze=False)
    for r, (s, d) in enumerate(rows):
        for k in range(ncol):
            n = cols[s][k] if k < len(cols[s]) else None
            _sample_cell(axes[r][k], cells.get((s, n, d)), f"{method_label(s, d)}, NFE {n}")
    fig.suptitle(_wrap(title, 80), fontsize=10)
    fig.tight_layout()
    return save(fig, stem, dpi=120)


# ---------------------------------------------------------------------------------- model runs
def cosine_maps(maps: list[tuple[str, np.ndarray]], title: str, stem: Path) -> list[Path]:
    """Fig. 2: one heatmap per ``(panel title, cosine matrix)``, x and y the step of the run (shown at
    most 250 steps per side); colour scale from the matrix's minimum (rounded down to 0.05) to 1."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(maps), figsize=(4.6 * len(maps), 4.3), squeeze=False)
    for ax, (panel, sim) in zip(axes[0], maps):
        stride = max(1, len(sim) // 250)  # display resolution (keeps the files small)
        im = ax.imshow(sim[::stride, ::stride], cmap="viridis", vmin=math.floor(float(sim.min()) * 20) / 20, vmax=1.0,
                       extent=(0, len(sim), len(sim), 0), interpolation="nearest")
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("DDIM step (0 = pure noise)")
        ax.set_ylabel("DDIM step")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(_wrap(title, 100), fontsize=10)
    fig.tight_layout()
    return save(fig, stem)


@dataclass
class Curve:
    """One run along a trajectory: progress (x), the batch-mean norm and two pixels of sample 0."""

    label: str
    x: Sequence[float]
    norm: list[float]
    pixels: list[list[float]]


@dataclass
class TrajectoryPanel:
    """A column of Fig. 5: the reference run, the base solver and its D-ODE variant."""

    title: str
    ref: Curve
    base: Curve
    dode: Curve


TRAJECTORY_STYLES = {"ref": dict(color="k", lw=1.0), "base": dict(color=COLORS[1], ls="--", marker="o", ms=3),
                     "dode": dict(color=COLORS[0], ls="-", marker="s", ms=3)}


def _trajectory_column(axes, k: int, panel: TrajectoryPanel) -> None:
    for name in ("ref", "base", "dode"):
        curve, style = getattr(panel, name), TRAJECTORY_STYLES[name]
        axes[0][k].plot(curve.x, curve.norm, label=curve.label, **style)
        for r, values in enumerate(curve.pixels):
            axes[r + 1][k].plot(curve.x, values, **style)
    axes[0][k].set_title(panel.title, fontsize=9)
    axes[0][k].legend(fontsize=7)
    for r in range(3):
        axes[r][k].grid(alpha=0.3)
    axes[2][k].set_xlabel("sampling progress (reference grid)")


def trajectories(panels: list[TrajectoryPanel | None], pixels: list[int], title: str, stem: Path) -> list[Path]:
    """Fig. 5: a column per panel (None: left empty); rows the norm of the sample and ``pixels``."""
    plt = _plt()
    fig, axes = plt.subplots(3, len(panels), figsize=(3.3 * len(panels), 7.6), squeeze=False)
    for k, panel in enumerate(panels):
        if panel is not None:
            _trajectory_column(axes, k, panel)
    axes[0][0].set_ylabel("‖x‖ (VP scale), batch mean")
    axes[1][0].set_ylabel(f"pixel {pixels[0]} of sample 0")
    axes[2][0].set_ylabel(f"pixel {pixels[1]} of sample 0")
    fig.suptitle(_wrap(title, 110), fontsize=10)
    fig.tight_layout()
    return save(fig, stem)
