"""table-learned: D-ODE next to the learned solvers of IIA (Zhang et al. 2024) and S4S / S4S-Alt
(Frankel et al. 2025) on one base solver, over NFE, with each method's fit time and each model's
reference solver (the "teacher"); the goal: the best learned solver at the protocol's ``goal_nfe``
within ``goal_ratio``× the reference's metric (conf/paper.yaml)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dode.report import figures
from dode.report.data import Selection, select
from dode.report.labels import method_label, metric_label, reference_label, solver_label
from dode.report.options import Options
from dode.report.protocol import SolverNFE, protocol, s4s_teacher
from dode.report.registry import artifact
from dode.report.tables import (Cell, Table, caption_common, cell, fit_seconds, fit_value, long_form, minimum,
                                present_nfes, rows_of, stem, write_tables)

FIT_CAPTION = ("`fit_seconds` of the run: D-ODE one teacher and one student run; IIA one student run plus the fine "
               "solver from every step; S4S the teacher samples plus Adam through the student; S4S-Alt also the grid "
               "searches. Measured on the machine that ran dode-run (results/README.md).")


def learned_methods() -> tuple[str, ...]:
    """The rows of table-learned, in order: the base solver, then ``conf/paper.yaml``'s learned methods."""
    return ("none", *protocol().learned_methods)


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


@artifact("table-learned", "D-ODE next to the learned solvers IIA, S4S and S4S-Alt on one base solver over NFE, "
          "with fit times, each model's reference solver and the goal of conf/paper.yaml; plus a figure",
          sweep="runs-learned")
def table_learned(runs: pd.DataFrame, opt: Options) -> list[Path]:
    """Base solver, D-ODE, IIA, S4S and S4S-Alt over NFE on each model, with their fit times and the
    model's reference solver; the best learned method at the goal NFE against the goal ratio × it."""
    out = []
    for role, ck in (("noise", opt.checkpoint), ("edm", opt.edm_checkpoint)):
        if ck:
            out += _learned_of(runs, opt, ck, opt.teachers[role])
    return out


def _learned_of(runs: pd.DataFrame, opt: Options, ck: str, teacher: SolverNFE) -> list[Path]:
    """The tables, CSV and figure of one checkpoint."""
    s, with_min = opt.learned_solver, opt.with_min(ck)
    d, info = select(runs, opt, ck, scale=opt.scale, batch=opt.batch)
    ref_rows = rows_of(d, distill="none", solver=teacher[0], nfe=teacher[1])
    ref = Reference(*teacher, ref_rows, cell(ref_rows, with_min))
    d = d[(d["solver"] == s) & d["distill"].isin(learned_methods())]
    if not d["distill"].isin([m for m in learned_methods() if m not in ("none", "dode")]).any():
        opt.say(f"table-learned: no {s} runs of IIA or S4S of {opt.dataset}/{ck} in {opt.results / 'runs.csv'}; "
                "skipped")
        return []
    nfes = present_nfes(d, opt.nfe or protocol().learned_nfe)
    d = d[d["nfe"].isin(nfes)]
    curves = long_form(d, ["distill", "nfe"], with_min)
    name = stem("learned", opt, ck)
    tables = _learned_tables(d, curves, ref, nfes, info, opt, ck, name)
    data = _learned_csv(d, curves, ref, s, with_min)
    metric = metric_label(info.metric)
    return write_tables(opt, name, tables, data) + figures.learned_vs_nfe(
        curves, s, learned_methods(), (ref.cell.mean, ref.cell.std, ref.label) if ref.cell.n else None,
        protocol().goal_ratio, f"{metric} of learned solvers vs NFE — {opt.dataset} · {ck}",
        caption_common(info, d["seed"].unique()), metric, opt.figures / name)


def _caption(d: pd.DataFrame, info: Selection, opt: Options, ck: str, name: str) -> str:
    t_solver, t_nfe = s4s_teacher()
    teacher = "Heun" if t_solver == "heun" else solver_label(t_solver)
    return (caption_common(info, d["seed"].unique(), opt.with_min(ck))
            + f"; every method on {solver_label(opt.learned_solver)}: the "
            f"base solver, D-ODE (K = {opt.scale}), IIA (M = K fine sub-steps per step), S4S and S4S-Alt (teacher "
            f"{teacher}, {t_nfe} NFE; distance L2, or \"features\": the digits classifier's features, the network of "
            f"FD-digits); every fit on the same B = {opt.batch} noises of fit seed {opt.fit_seed}, one fit per cell, "
            "so the spread is that of the evaluation seeds. The reference row is one run of the model's reference "
            f"solver, repeated in each column. Figure: figures/{name}.png")


def _learned_tables(d: pd.DataFrame, curves: pd.DataFrame, ref: Reference, nfes: list[int], info: Selection,
                    opt: Options, ck: str, name: str) -> list[Table]:
    """The methods over NFE (with the goal), their ratio to the reference, their fit times."""
    s, header = opt.learned_solver, ["NFE"] + nfes
    methods = [m for m in learned_methods() if (d["distill"] == m).any()]
    cells = {m: [cell(rows_of(d, distill=m, nfe=n), opt.with_min(ck)) for n in nfes] for m in methods}
    rows = [[method_label(s, m)] + [c.text for c in cells[m]] for m in methods]
    rows += [[f"reference: {ref.label}"] + [ref.cell.text] * len(nfes)] if ref.cell.n else []
    notes = [_goal(curves, s, ref, info)] if protocol().goal_nfe in nfes else []
    caption = _caption(d, info, opt, ck, name)
    tables = [Table(f"Learned solvers — {opt.dataset} · {ck}", header, rows, caption, notes)]
    if ref.cell.n:
        tables.append(_ratio_table(cells, ref, s, header))
    return tables + _fit_table(d, [m for m in methods if m != "none"], s, nfes)


def _fit_table(d: pd.DataFrame, methods: list[str], solver: str, nfes: list[int]) -> list[Table]:
    """The fit time of each learned method per NFE (no table without one)."""
    fits = [[method_label(solver, m)] + [fit_seconds(rows_of(d, distill=m, nfe=n)) for n in nfes] for m in methods]
    return [Table("Fit time [s]", ["NFE"] + nfes, fits, FIT_CAPTION)] if fits else []


def _ratio_table(cells: dict[str, list[Cell]], ref: Reference, solver: str, header: list) -> Table:
    """Each method's mean over seeds divided by the reference's, per NFE."""
    ratios = [[method_label(solver, m)] + [_ratio(c.mean, ref.cell.mean) for c in row] for m, row in cells.items()]
    return Table(f"Ratio to the reference ({ref.label}: {ref.cell.text})", header, ratios,
                 "Mean over seeds divided by the reference's mean.")


def _learned_csv(d: pd.DataFrame, curves: pd.DataFrame, ref: Reference, solver: str,
                 with_min: bool = False) -> pd.DataFrame:
    """``curves`` with each method's label and fit time, then the reference's row."""
    curves.insert(0, "method", [method_label(solver, x) for x in curves["distill"]])
    curves["fit_seconds"] = [fit_value(rows_of(d, distill=r.distill, nfe=r.nfe)) for r in curves.itertuples()]
    low = {"min": minimum(ref.rows["value"].astype(float))} if with_min else {}
    reference = pd.DataFrame([{"method": f"reference: {ref.label}", "distill": "none", "nfe": ref.nfe,
                               "mean": ref.cell.mean, "std": ref.cell.std, **low, "n": ref.cell.n,
                               "seeds": " ".join(str(int(x)) for x in sorted(ref.rows["seed"].unique()))}]) \
        if ref.cell.n else pd.DataFrame()
    return pd.concat([curves, reference], ignore_index=True)


def _ratio(value: float, ref: float) -> str:
    return f"{value / ref:.2f}×" if np.isfinite(value) and np.isfinite(ref) and ref > 0 else "—"


def _goal(curves: pd.DataFrame, solver: str, ref: Reference, info: Selection) -> str:
    """The goal line: the best learned method at the goal NFE (``curves``: mean per distill and NFE)
    against the goal ratio × the reference."""
    p = protocol()
    at = curves[(curves["nfe"] == p.goal_nfe) & (curves["distill"] != "none") & (curves["n"] > 0)]
    means = dict(zip(at["distill"], at["mean"].astype(float)))
    if not means or not ref.cell.n:
        return f"Goal (best learned solver at NFE {p.goal_nfe} within {p.goal_ratio:g}× the reference): not measured."
    best = min(means, key=means.get)
    ratio = means[best] / ref.cell.mean
    verdict = "met" if ratio <= p.goal_ratio else "not met"
    return (f"Goal (best learned solver at NFE {p.goal_nfe} within {p.goal_ratio:g}× the reference's "
            f"{metric_label(info.metric)}): **{verdict}** — {method_label(solver, best)} "
            f"{means[best]:.2f} vs reference {ref.cell.mean:.2f}, ratio {ratio:.2f}.")
