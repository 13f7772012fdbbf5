"""The D-DDIM ablations of the paper: formulations (Table 2), teacher scale K and fit batch B
(Table 3) and the one-λ alternatives Fixed-D-DDIM and LA-DDIM (Section 13, Table 4)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from dode.report import figures
from dode.report.data import ONE_LAMBDA, Selection, select, stats
from dode.report.labels import method_label, metric_label
from dode.report.options import Options
from dode.report.protocol import protocol, timesteps_of
from dode.report.registry import artifact
from dode.report.tables import (NOT_GIVEN, Table, caption_common, cell, fmt_pm, long_form, paired_difference,
                                present_nfes, rows_of, stem, write_tables)

# Published numbers (CIFAR-10, noise-prediction DDPM, FID of 50K samples; /work/shared/notes/methods.md
# and the paper's appendix tables). Its Table 3 values and the λ of its Table 4 grid searches did not
# survive in the paper text we have: they are "not given in the text".
PAPER_TABLE2 = {"none": (18.85, 9.79, 7.17), "dode_sep": (79.21, 26.40, 11.50), "dode_all": (179.67, 36.65, 18.48),
                "dode": (8.67, 8.18, 6.55), "dode_2": (18.75, 9.83, 7.21)}
PAPER_TABLE4 = {"none": (18.85, 9.79, 7.17), "dode": (8.67, 8.18, 6.55), "fixed": (11.45, 7.00, 5.27),
                "lookahead": (15.24, 8.57, 6.29)}
PAPER_NFE = ["NFE", 10, 25, 50]   # the header of the published tables


def _published(values: dict[str, tuple], title: str, caption: str) -> Table:
    rows = [[method_label("ddim", k)] + [f"{v:.2f}" for v in vals] for k, vals in values.items()]
    return Table(title, PAPER_NFE, rows, caption)


# ---------------------------------------------------------------------------------------- Table 2
@artifact("table-formulations", "Table 2: DDIM, D-DDIM-Sep, D-DDIM-All, D-DDIM, D-DDIM-2",
          sweep="runs-formulations")
def table_formulations(runs: pd.DataFrame, opt: Options) -> list[Path]:
    """The formulations of D-DDIM over NFE, their paired differences and the published values."""
    ck = opt.checkpoint
    d, info = select(runs, opt, ck, scale=opt.scale, batch=opt.batch)
    d = d[(d["solver"] == "ddim") & d["distill"].isin(list(PAPER_TABLE2))]
    if not d["distill"].isin([k for k in PAPER_TABLE2 if k not in ("none", "dode")]).any():
        opt.say(f"table-formulations: no runs of D-DDIM's other formulations (Sep, All, 2) of {opt.dataset}/{ck}; "
                "skipped")
        return []
    nfes = present_nfes(d, opt.nfe or protocol().table_nfe)
    with_min = opt.with_min(ck)
    rows = [[method_label("ddim", dist)] + [cell(rows_of(d, distill=dist, nfe=n), with_min).text for n in nfes]
            for dist in PAPER_TABLE2 if (d["distill"] == dist).any()]
    t = Table(f"Formulations of D-DDIM — {opt.dataset} · {ck} (paper Table 2 analogue)", ["NFE"] + nfes, rows,
              caption_common(info, d["seed"].unique(), with_min)
              + f"; K = {opt.scale}, B = {opt.batch}, λ fitted once (fit seed "
              f"{opt.fit_seed}). Sep: D̃ = a·D_k + b·D_k−1; All: free weights on every previous output; D-DDIM: "
              "D̃ = D_k + λ(D_k − D_k−1); D-DDIM-2: two λ on the last two differences.")
    diff = _formulation_differences(d, nfes)
    paired = Table("Paired differences", ["NFE"] + nfes, diff,
                   "Per evaluation seed (same noises), mean ± std over seeds; negative = lower (better) than the "
                   "reference.")
    paper = _published(PAPER_TABLE2, "Published (paper Table 2: CIFAR-10, DDPM, FID of 50K samples)",
                       "Quoted from the paper for comparison (one value per cell).")
    long = long_form(d[d["nfe"].isin(nfes)], ["distill", "nfe"], with_min)
    long.insert(0, "method", [method_label("ddim", x) for x in long["distill"]])
    return write_tables(opt, stem("formulations", opt, ck), [t, paired, paper] if diff else [t, paper], long)


def _formulation_differences(d: pd.DataFrame, nfes: list[int]) -> list[list]:
    """Each formulation minus DDIM, then minus D-DDIM, per NFE (paired by seed)."""
    has = set(d["distill"])
    return [[f"{method_label('ddim', dist)} − {method_label('ddim', ref)}"]
            + [paired_difference(rows_of(d, distill=dist, nfe=n), rows_of(d, distill=ref, nfe=n)) for n in nfes]
            for ref in ("none", "dode") for dist in PAPER_TABLE2 if dist not in ("none", ref) and {dist, ref} <= has]


# ---------------------------------------------------------------------------------------- Table 3
@artifact("table-ablation-scale", "Table 3(a): D-DDIM with teacher scale K", sweep="runs-ablation-scale")
def table_ablation_scale(runs: pd.DataFrame, opt: Options) -> list[Path]:
    """D-DDIM over NFE for each teacher scale K (paired fit seeds)."""
    return _ablation(runs, opt, "scale")


@artifact("table-ablation-batch", "Table 3(b): D-DDIM with fit batch B", sweep="runs-ablation-batch")
def table_ablation_batch(runs: pd.DataFrame, opt: Options) -> list[Path]:
    """D-DDIM over NFE for each fit batch B (paired fit seeds)."""
    return _ablation(runs, opt, "batch")


def _ablation(runs: pd.DataFrame, opt: Options, which: str) -> list[Path]:
    """Table 3(a) (``which="scale"``: K) or 3(b) (``"batch"``: B) of D-DDIM, each evaluation seed with
    its own λ fit (fit seed = seed), the other of K and B at the options' value."""
    ck = opt.checkpoint
    d, info = select(runs, opt, ck, paired=True, **({"batch": opt.batch} if which == "scale" else {"scale": opt.scale}))
    d = d[(d["solver"] == "ddim")]
    dode = d[d["distill"] == "dode"]
    if dode[which].nunique() < 2:
        opt.say(f"table-ablation-{which}: fewer than two values of {'K' if which == 'scale' else 'B'} among the "
                f"D-DDIM runs of {opt.dataset}/{ck} (with fit seed = evaluation seed); skipped")
        return []
    nfes = present_nfes(dode, opt.nfe or protocol().table_nfe)
    tables = [_ablation_table(d, dode, info, opt, which, nfes)]
    ref = opt.scale if which == "scale" else opt.batch
    symbol = "K" if which == "scale" else "B"
    diff_rows = [[f"{symbol} = {v} − {symbol} = {ref}"]
                 + [paired_difference(rows_of(dode, **{which: v}, nfe=n), rows_of(dode, **{which: ref}, nfe=n))
                    for n in nfes] for v in _values(dode, which) if v != ref]
    if diff_rows:
        tables.append(Table(f"Paired difference to {symbol} = {ref}", ["NFE"] + nfes, diff_rows,
                            "Per evaluation seed (same noises, each side with its fit seed = that seed), mean ± std "
                            "over seeds; negative = better than the reference. The seed-to-seed spread of the table "
                            "above is mostly common to every row."))
    long = long_form(dode[dode["nfe"].isin(nfes)], [which, "nfe"], opt.with_min(ck))
    return write_tables(opt, stem(f"ablation-{which}", opt, ck), tables, long)


def _values(dode: pd.DataFrame, which: str) -> list[int]:
    return sorted(int(x) for x in dode[which].dropna().unique())


def _ablation_table(d: pd.DataFrame, dode: pd.DataFrame, info: Selection, opt: Options, which: str,
                    nfes: list[int]) -> Table:
    """A row per K (or B) and the base DDIM row; K·N > T cells show the capped teacher's run (†)."""
    T = timesteps_of(opt.checkpoint)
    symbol = "K" if which == "scale" else "B"
    with_min = opt.with_min(opt.checkpoint)
    rows, capped = [], False
    for v in _values(dode, which):
        cells = [_ablation_cell(dode, which, v, n, T, with_min) for n in nfes]
        capped |= any(c.endswith("†") for c in cells)
        rows.append([f"{symbol} = {v}"] + cells)
    base = d[d["distill"] == "none"]
    if not base.empty:
        rows.append([f"{method_label('ddim', 'none')} (no λ)"] + [cell(base[base["nfe"] == n], with_min).text
                                                                 for n in nfes])
    capped_note = (f"† K·N > T = {T}: the runner refuses a teacher longer than the model's T timesteps. The paper "
                   "notes that at NFE 50 \"scales 20 and 30 ... generate samples guided by the same teacher\" (the "
                   "teacher capped at T); the value shown in parentheses is therefore the K = T // NFE run's.")
    notes = [capped_note] if capped else []
    label = f"scale K (teacher steps per student step; B = {opt.batch})" if which == "scale" else \
        f"batch B (noises of the λ fit; K = {opt.scale})"
    cap = (caption_common(info, dode["seed"].unique(), with_min)
           + ". Each evaluation seed s uses its own λ fit (fit seed s), "
           "so the spread includes the choice of the fit batch, as in the paper's independent runs. Paper: larger K "
           "and B give lower FID (and, for B, lower variance); the effect shrinks as NFE grows; its numbers are "
           f"{NOT_GIVEN}.")
    return Table(f"Ablation of D-DDIM: {label} — {opt.dataset} · {opt.checkpoint} (paper Table "
                 f"3{'a' if which == 'scale' else 'b'} analogue)", ["NFE"] + nfes, rows, cap, notes)


def _ablation_cell(dode: pd.DataFrame, which: str, v: int, n: int, T: int | None, with_min: bool = False) -> str:
    """The cell of K (or B) = ``v`` at NFE ``n``; a K the runner refuses (K·N > T) shows the K = T // N
    run in parentheses with a dagger (the paper's capped teacher)."""
    g = rows_of(dode, **{which: v}, nfe=n)
    if g.empty and which == "scale" and T and v * n > T and T // n >= 1:
        g2 = rows_of(dode, scale=T // n, nfe=n)
        return f"({cell(g2, with_min).text})†" if not g2.empty else "—†"
    return cell(g, with_min).text


# ------------------------------------------------------------------------------- Section 13 / Table 4
@artifact("table-lookahead", "Section 13 (Table 4): DDIM, LA-DDIM and Fixed-D-DDIM (best λ of a grid search, the "
          "grid shown), D-DDIM", sweep="runs-lookahead")
def table_lookahead(runs: pd.DataFrame, opt: Options) -> list[Path]:
    """DDIM, D-DDIM and the best λ of Fixed-D-DDIM and LA-DDIM per NFE, the grid, and its figure."""
    ck = opt.checkpoint
    d, info = select(runs, opt, ck, scale=opt.scale, batch=opt.batch)
    d = d[(d["solver"] == "ddim") & d["distill"].isin(["none", "dode", *ONE_LAMBDA])]
    if not d["distill"].isin(ONE_LAMBDA).any():
        opt.say(f"table-lookahead: no Fixed-D-DDIM or LA-DDIM runs of {opt.dataset}/{ck}; skipped")
        return []
    nfes = present_nfes(d, opt.nfe or protocol().table_nfe)
    with_min = opt.with_min(ck)
    grid = long_form(d[d["distill"].isin(ONE_LAMBDA)], ["distill", "lam", "nfe"], with_min) \
        if d["distill"].isin(ONE_LAMBDA).any() else pd.DataFrame(columns=["distill", "lam", "nfe", "mean"])
    out = write_tables(opt, stem("lookahead", opt, ck), _lookahead_tables(d, grid, info, opt, nfes),
                       long_form(d[d["nfe"].isin(nfes)], ["distill", "lam", "nfe"], with_min))
    if len(grid):
        refs = {dist: {n: stats(rows_of(d, distill=dist, nfe=n)["value"].astype(float))[0] for n in nfes}
                for dist in ("none", "dode")}
        labels = {dist: method_label("ddim", dist) for dist in ("fixed", "lookahead", "none", "dode")}
        out += figures.lambda_grid(grid, refs, nfes, labels, metric_label(info.metric),
                                   f"Grid search of one λ — {opt.dataset} · {ck} (paper Fig. 8b/c analogue)",
                                   opt.figures / stem("lookahead-grid", opt, ck))
    return out


def _lookahead_tables(d: pd.DataFrame, grid: pd.DataFrame, info: Selection, opt: Options,
                      nfes: list[int]) -> list[Table]:
    """The methods with the best λ of the grid, the grid itself (when run), the published values."""
    ck = opt.checkpoint
    with_min = opt.with_min(ck)
    lams = sorted(float(x) for x in grid["lam"].dropna().unique()) if len(grid) else []
    rows = [[method_label("ddim", dist)] + [_lookahead_cell(d, grid, dist, n, with_min) for n in nfes]
            for dist in ("none", "dode", *ONE_LAMBDA) if (d["distill"] == dist).any()]
    tables = [Table(f"DDIM, D-DDIM, Fixed-D-DDIM and LA-DDIM — {opt.dataset} · {ck} (paper Section 13, Table 4 "
                    "analogue)", ["NFE"] + nfes, rows,
                    caption_common(info, d["seed"].unique(), with_min)
                    + ". Fixed-D-DDIM (one λ for every step in D-DDIM's "
                    "form) and LA-DDIM (lookahead: x̂0' = x̂0_k + λ(x̂0_k − x̂0_k−1)) show the best λ of the grid "
                    f"{{{', '.join(f'{x:g}' for x in lams)}}} per NFE, chosen on the same seeds it is reported on "
                    "(so slightly optimistic); D-DDIM needs no search.")]
    grid_rows = _grid_rows(grid, lams, nfes, with_min)
    if grid_rows:
        tables.append(Table("The grid search", ["NFE"] + nfes, grid_rows,
                            f"Every λ of the grid; figure: figures/{stem('lookahead-grid', opt, ck)}.png."))
    return tables + [_published(PAPER_TABLE4, "Published (paper Table 4: CIFAR-10, DDPM, FID of 50K samples)",
                                f"Quoted; the λ the paper's grid searches chose are {NOT_GIVEN}.")]


def _lookahead_cell(d: pd.DataFrame, grid: pd.DataFrame, dist: str, n: int, with_min: bool = False) -> str:
    """DDIM and D-DDIM: the cell; a one-λ method: its best λ of the grid at NFE ``n``."""
    if dist not in ONE_LAMBDA:
        return cell(rows_of(d, distill=dist, nfe=n), with_min).text
    gl = grid[(grid["distill"] == dist) & (grid["nfe"] == n) & (grid["n"] > 0)]
    if gl.empty:
        return "—"
    b = gl.loc[gl["mean"].idxmin()]
    return f"{_grid_cell(b, with_min)} (λ = {b['lam']:g})"


def _grid_cell(row: pd.Series, with_min: bool) -> str:
    """A row of the grid's long form as a cell (``with_min``: with its minimum over seeds)."""
    return fmt_pm(row["mean"], row["std"], int(row["n"]), minimum=row["min"] if with_min else None)


def _grid_rows(grid: pd.DataFrame, lams: list[float], nfes: list[int], with_min: bool = False) -> list[list]:
    """A row per one-λ method and λ of the grid (rows with no run left out)."""
    rows = []
    for dist in ONE_LAMBDA:
        for lam in lams:
            cells = []
            for n in nfes:
                gl = grid[(grid["distill"] == dist) & (grid["lam"] == lam) & (grid["nfe"] == n)]
                cells.append(_grid_cell(gl.iloc[0], with_min) if len(gl) else "—")
            if any(c != "—" for c in cells):
                rows.append([f"{method_label('ddim', dist)} λ = {lam:g}"] + cells)
    return rows
