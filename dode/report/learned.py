"""table-learned: the learned few-step solvers of conf/paper.yaml (D-ODE, IIA, S4S / S4S-Alt, LD3,
GITS, AMED-Plugin, PAS, …) on one base solver, over NFE, next to that base solver, the un-learned base
solvers of ``learned.bases`` (e.g. UniPC, DPM-Solver++(2M) on the DMN grid) and each model's reference
solver (the "teacher"), with each method's fit time; the verdicts on ``learned.goals`` (NFE → the
largest ratio of the best learned method to the reference) and on every learned method being at least
as good as its base solver."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dode.report import figures
from dode.report.data import Selection, select
from dode.report.labels import (base_label, higher_is_better, method_label, metric_label, reference_label,
                                 solver_label)
from dode.report.options import Options
from dode.report.protocol import SolverNFE, protocol, s4s_teacher
from dode.report.registry import artifact
from dode.report.tables import (Cell, Table, caption_common, cell, fit_seconds, fit_value, long_form, minimum,
                                present_nfes, rows_of, stem, write_tables)

FIT_CAPTION = ("`fit_seconds` of the run: what the method spends before sampling (teacher samples or trajectories, "
               "the fit, any grid search), measured on the machine that ran dode-run (results/README.md).")


def learned_methods() -> tuple[str, ...]:
    """The rows of table-learned on the learned solver, in order: the base solver, then ``conf/paper.yaml``'s
    learned methods."""
    return ("none", *protocol().learned_methods)


@dataclass(frozen=True)
class Row:
    """A row of table-learned: ``key`` (the frame's ``row`` column), its label, and the runs it shows:
    ``solver`` with ``distill`` on the solver grid ``grid`` (runs.csv's column; "": the protocol's), fitted
    on ``batch`` noises (None: the table's B; conf/paper.yaml ``learned.extra_batches``)."""

    key: str
    label: str
    solver: str
    distill: str
    grid: str = ""
    batch: int | None = None

    @property
    def learned(self) -> bool:
        """A learned method (a base solver is not, whichever grid it runs on)."""
        return self.distill != "none"

    @property
    def compared(self) -> bool:
        """An un-learned base solver of ``learned.bases`` (not the learned methods' own base solver)."""
        return self.key.startswith("base:")


def table_rows(solver: str) -> list[Row]:
    """The learned solver's own row, the un-learned bases of ``learned.bases``, then the learned methods,
    each followed by its rows of ``learned.extra_batches`` (``"…, B = 400"``)."""
    p = protocol()
    own = [Row(m, method_label(solver, m), solver, m) for m in learned_methods()]
    bases = [Row(f"base:{b.text}", base_label(b.solver, b.grid), b.solver, "none", b.grid) for b in p.bases
             if (b.solver, b.grid) != (solver, "")]
    learned = [x for r in own[1:] for x in [r] + [Row(f"{r.key}@B{b}", f"{r.label}, B = {b}", solver, r.distill,
                                                      batch=b) for b in p.extra_batches.get(r.distill, ())]]
    return own[:1] + bases + learned


@dataclass
class Reference:
    """A model's reference solver: its runs and their cell (``cell.n == 0``: not run)."""

    solver: str
    nfe: int
    rows: pd.DataFrame
    cell: Cell

    @property
    def label(self) -> str:
        """How the tables name it (:func:`reference_label`)."""
        return reference_label(self.solver, self.nfe)


@artifact("table-learned", "the learned solvers on one base solver over NFE, next to it, the un-learned base solvers "
          "of conf/paper.yaml and each model's reference solver, with fit times and the goals; plus a figure",
          sweep="runs-learned")
def table_learned(runs: pd.DataFrame, opt: Options) -> list[Path]:
    """The learned methods, their base solver and the un-learned bases over NFE on each model, with their
    fit times and the model's reference solver; the verdicts on the goals."""
    out = []
    for role, ck in (("noise", opt.checkpoint), ("edm", opt.edm_checkpoint)):
        if ck:
            out += _learned_of(runs, opt, ck, opt.teachers[role])
    return out


def _learned_of(runs: pd.DataFrame, opt: Options, ck: str, teacher: SolverNFE) -> list[Path]:
    """The tables, CSV and figure of one checkpoint."""
    s, with_min = opt.learned_solver, opt.with_min(ck)
    d, info = select(runs, opt, ck, scale=opt.scale)  # fits of every B: each row keeps its own
    ref_rows = rows_of(d, distill="none", solver=teacher[0], nfe=teacher[1])
    ref = Reference(*teacher, ref_rows, cell(ref_rows, with_min))
    rows = table_rows(s)
    own = [r for r in rows if not r.compared]
    parts = [_fitted_on(d[(d["solver"] == s) & (d["distill"] == r.distill)], r.batch or opt.batch).assign(row=r.key)
             for r in own]
    if not any(len(p) for p, r in zip(parts, own) if r.distill not in ("none", "dode")):
        opt.say(f"table-learned: no {s} runs of a learned method other than D-ODE (conf/paper.yaml learned.methods) "
                f"of {opt.dataset}/{ck} in {opt.results / 'runs.csv'}; skipped")
        return []
    same = dataclasses.replace(opt, metric=info.metric, num_samples=info.num_samples)  # a base on its own grid
    for r in (r for r in rows if r.compared):
        g = select(runs, same, ck, grid=r.grid)[0] if r.grid else d
        parts.append(rows_of(g, solver=r.solver, distill="none").assign(row=r.key))
    d = pd.concat(parts, ignore_index=True)
    nfes = present_nfes(d, opt.nfe or protocol().learned_nfe)
    d = d[d["nfe"].isin(nfes)]
    rows = [r for r in rows if (d["row"] == r.key).any()]
    order = {r.key: i for i, r in enumerate(rows)}
    curves = long_form(d, ["row", "nfe"], with_min)
    curves = curves.iloc[np.lexsort((curves["nfe"], curves["row"].map(order)))].reset_index(drop=True)
    name = stem("learned", opt, ck)
    tables = _learned_tables(d, curves, ref, rows, nfes, info, opt, ck, name)
    data = _learned_csv(d, curves, ref, rows, with_min)
    metric = metric_label(info.metric)
    lines = [figures.Line(r.key, r.label, "--" if not r.learned else "-." if r.distill.endswith("_fd") else "-",
                          "k" if r.key == "none" else None) for r in rows]
    goals = protocol().goals
    goal = min(goals.items(), key=lambda kv: kv[1]) if goals else None  # the tightest goal's line
    return write_tables(opt, name, tables, data) + figures.learned_vs_nfe(
        curves, lines, (ref.cell.mean, ref.cell.std, ref.label) if ref.cell.n else None,
        goal, f"{metric} of learned solvers vs NFE — {opt.dataset} · {ck}",
        caption_common(info, d["seed"].unique()), metric, opt.figures / name)


def _fitted_on(d: pd.DataFrame, batch: int) -> pd.DataFrame:
    """The runs of ``d`` fitted on ``batch`` noises, and the un-fitted ones (no fit seed)."""
    return d[d["fit_seed"].isna() | (d["batch"] == batch)]


def _caption(d: pd.DataFrame, rows: list[Row], info: Selection, opt: Options, ck: str, name: str) -> str:
    t_solver, t_nfe = s4s_teacher()
    teacher = "Heun" if t_solver == "heun" else solver_label(t_solver)
    learned = ", ".join(r.label for r in rows if r.learned and r.batch is None)
    more = " or ".join(map(str, sorted({r.batch for r in rows if r.batch is not None})))
    bases = [r.label for r in rows if r.compared]
    return (caption_common(info, d["seed"].unique(), opt.with_min(ck))
            + f"; the learned methods on {solver_label(opt.learned_solver)} (its own row first): {learned} "
            f"(K = {opt.scale} where a method refines a teacher; S4S's teacher {teacher}, {t_nfe} NFE; \"features\": "
            "the digits classifier's features, the network of FD-digits)"
            + (f"; un-learned base solvers at the same NFE: {', '.join(bases)}" if bases else "")
            + f"; every fit on the first B = {opt.batch} noises of fit seed {opt.fit_seed}"
            + (f" (rows \"…, B = {more}\": its first {more})" if more else "") + ", one fit per cell, so the "
            "spread is that of the evaluation seeds. The reference row is one run of the model's reference "
            f"solver, repeated in each column. Figure: figures/{name}.png")


def _learned_tables(d: pd.DataFrame, curves: pd.DataFrame, ref: Reference, rows: list[Row], nfes: list[int],
                    info: Selection, opt: Options, ck: str, name: str) -> list[Table]:
    """The rows over NFE (with the verdicts), their ratio to the reference, the fit times."""
    header = ["NFE"] + nfes
    cells = {r: [cell(rows_of(d, row=r.key, nfe=n), opt.with_min(ck)) for n in nfes] for r in rows}
    table = [[r.label] + [c.text for c in cells[r]] for r in rows]
    table += [[f"reference: {ref.label}"] + [ref.cell.text] * len(nfes)] if ref.cell.n else []
    notes = [_goal(curves, rows, n, ratio, ref, info) for n, ratio in protocol().goals.items()]
    notes.append(_not_worse(curves, rows, nfes, higher_is_better(info.metric)))
    caption = _caption(d, rows, info, opt, ck, name)
    tables = [Table(f"Learned solvers — {opt.dataset} · {ck}", header, table, caption, notes)]
    if ref.cell.n:
        tables.append(_ratio_table(cells, ref, header))
    return tables + _fit_table(d, [r for r in rows if r.learned], nfes)


def _fit_table(d: pd.DataFrame, rows: list[Row], nfes: list[int]) -> list[Table]:
    """The fit time of each learned method per NFE (no table without one)."""
    fits = [[r.label] + [fit_seconds(rows_of(d, row=r.key, nfe=n)) for n in nfes] for r in rows]
    return [Table("Fit time [s]", ["NFE"] + nfes, fits, FIT_CAPTION)] if fits else []


def _ratio_table(cells: dict[Row, list[Cell]], ref: Reference, header: list) -> Table:
    """Each row's mean over seeds divided by the reference's, per NFE."""
    ratios = [[r.label] + [_ratio(c.mean, ref.cell.mean) for c in row] for r, row in cells.items()]
    return Table(f"Ratio to the reference ({ref.label}: {ref.cell.text})", header, ratios,
                 "Mean over seeds divided by the reference's mean.")


def _learned_csv(d: pd.DataFrame, curves: pd.DataFrame, ref: Reference, rows: list[Row],
                 with_min: bool = False) -> pd.DataFrame:
    """``curves`` with each row's label, solver, distill, grid and fit time, then the reference's row."""
    by = {r.key: r for r in rows}
    out = curves.drop(columns="row")
    for i, col in enumerate(("method", "solver", "distill", "grid")):
        out.insert(i, col, [getattr(by[k], "label" if col == "method" else col) for k in curves["row"]])
    out["fit_seconds"] = [fit_value(rows_of(d, row=k, nfe=n)) for k, n in zip(curves["row"], curves["nfe"])]
    low = {"min": minimum(ref.rows["value"].astype(float))} if with_min else {}
    reference = pd.DataFrame([{"method": f"reference: {ref.label}", "solver": ref.solver, "distill": "none",
                               "grid": "", "nfe": ref.nfe, "mean": ref.cell.mean, "std": ref.cell.std, **low,
                               "n": ref.cell.n,
                               "seeds": " ".join(str(int(x)) for x in sorted(ref.rows["seed"].unique()))}]) \
        if ref.cell.n else pd.DataFrame()
    return pd.concat([out, reference], ignore_index=True)


def _ratio(value: float, ref: float) -> str:
    return f"{value / ref:.2f}×" if np.isfinite(value) and np.isfinite(ref) and ref > 0 else "—"


def _means(curves: pd.DataFrame) -> dict[tuple[str, int], float]:
    """(row, NFE) → the mean over seeds, for the cells with runs."""
    c = curves[curves["n"] > 0]
    return {(k, int(n)): float(m) for k, n, m in zip(c["row"], c["nfe"], c["mean"])}


def _goal(curves: pd.DataFrame, rows: list[Row], nfe: int, goal: float, ref: Reference, info: Selection) -> str:
    """The verdict on one goal: the best learned method at ``nfe`` (base rows are not learned) within
    ``goal``× the reference's mean, i.e. min_m mean_m(nfe) / mean_ref ≤ goal."""
    means = _means(curves)
    at = {r: means[(r.key, nfe)] for r in rows if r.learned and (r.key, nfe) in means}
    what = f"Goal (best learned solver at NFE {nfe} within {goal:g}× the reference's {metric_label(info.metric)})"
    if higher_is_better(info.metric):
        return f"{what}: not applicable ({metric_label(info.metric)} is higher-is-better; the goals are for distances)."
    if not at or not ref.cell.n:
        return f"{what}: not measured."
    best = min(at, key=at.get)
    ratio = at[best] / ref.cell.mean
    verdict = "met" if ratio <= goal else "not met"
    return (f"{what}: **{verdict}** — {best.label} {at[best]:.2f} vs reference {ref.cell.mean:.2f}, "
            f"ratio {ratio:.2f}.")


def _not_worse(curves: pd.DataFrame, rows: list[Row], nfes: list[int], higher: bool = False) -> str:
    """Whether every learned method's mean over seeds is at most (``higher``: at least) its base solver's
    (the ``none`` row) at every NFE both were run at, with the exceptions (``method@NFE``)."""
    means = _means(curves)
    base = rows[0] if rows and rows[0].key == "none" else None
    pairs = [(r, n) for r in rows if r.learned for n in nfes
             if base and (r.key, n) in means and (base.key, n) in means]
    what = f"Every learned method at least as good as the base solver ({base.label if base else '—'}) at every NFE"
    if not pairs:
        return f"{what}: not measured."
    sign = -1.0 if higher else 1.0
    worse = [f"{r.label}@{n}" for r, n in pairs if sign * means[(r.key, n)] > sign * means[(base.key, n)]]
    return f"{what}: **{'no' if worse else 'yes'}**" + (f" — {', '.join(worse)}." if worse else ".")
