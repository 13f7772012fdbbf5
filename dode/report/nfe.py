"""Metric vs NFE (paper Figs. 3/4) and the time of D-ODE (Table 1), from runs.csv."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dode.report import figures
from dode.report.data import Selection, select, stats
from dode.report.labels import method_label, metric_label, solver_label
from dode.report.options import Options
from dode.report.protocol import checkpoint_config, protocol
from dode.report.registry import artifact
from dode.report.tables import (NOT_GIVEN, Table, caption_common, cell, fit_seconds, fit_value, fmt_pm, long_form,
                                minimum, paired_difference, rows_of, stem, write_tables)

PREDICTION_KIND = {"eps": "noise-prediction model (paper Fig. 3)", "x0": "data-prediction model (paper Fig. 4)"}
# Training-based distillation costs as the paper's text states them (Table 1's numbers are absent).
QUOTED_COSTS = [
    ("D-EDM (paper)", NOT_GIVEN, NOT_GIVEN,
     "Sec. 4.3: \"The distillation process for D-ODE solvers typically requires only a few CPU minutes\""),
    ("Consistency distillation (CD) [48]", NOT_GIVEN, NOT_GIVEN,
     "Sec. 13: \"Song et al. [48] reported that consistency models on CIFAR-10 utilized 8 Nvidia A100 GPUs "
     "for training\""),
    ("Progressive distillation (PD) [42]", NOT_GIVEN, NOT_GIVEN,
     "Sec. 4.3: PD and CD \"need numerous training iterations before executing a few-step sampling\""),
]
QUOTED_SAMPLING = ("Sec. 13: \"simply generating 50K samples for 30 steps takes less than 30 minutes on a single "
                   "A100 GPU\"")


# -------------------------------------------------------------------------------------- Figs. 3/4
@artifact("fig-fid-nfe", "Figs. 3/4: metric vs NFE, each base solver (dashed) and its D-ODE variant (solid), "
          "mean ± std over seeds; plus the numbers as a table", sweep="runs-fid-nfe")
def fig_fid_nfe(runs: pd.DataFrame, opt: Options) -> list[Path]:
    """Metric vs NFE per checkpoint: base solvers dashed, D-ODE solid, mean ± std (Figs. 3/4)."""
    out = []
    for ck in [c for c in (opt.checkpoint, opt.edm_checkpoint) if c]:
        d, info = select(runs, opt, ck, scale=opt.scale, batch=opt.batch)
        d = d[d["distill"].isin(["none", "dode"])]
        # base solver and D-ODE pairs only (a lone base run, e.g. table-learned's reference solver, is no point)
        paired = d[d["distill"] == "dode"][["solver", "nfe"]].drop_duplicates()
        d = d.merge(paired, on=["solver", "nfe"])
        if d.empty:
            opt.say(f"fig-fid-nfe: no runs of {opt.dataset}/{ck} in {opt.results / 'runs.csv'}; skipped")
            continue
        out += _fid_nfe_of(d, info, opt, ck)
    return out


def _fid_nfe_of(d: pd.DataFrame, info: Selection, opt: Options, ck: str) -> list[Path]:
    """The figure and its table of one checkpoint's base / D-ODE pairs ``d``."""
    with_min = opt.with_min(ck)
    long = long_form(d, ["solver", "distill", "nfe"], with_min)
    solvers = list(dict.fromkeys(d["solver"]))
    kind = PREDICTION_KIND.get(checkpoint_config(ck).get("prediction"), "(paper Figs. 3/4)")
    name = stem("fid-nfe", opt, ck)
    caption = caption_common(info, d["seed"].unique(), with_min)
    out = figures.fid_vs_nfe(long, solvers, f"{metric_label(info.metric)} vs NFE — {opt.dataset} · {ck}, {kind}",
                             caption, metric_label(info.metric), opt.figures / name)
    t = Table(f"{metric_label(info.metric)} vs NFE: {opt.dataset} · {ck}",
              ["solver", "NFE", "base", "D-ODE", "D-ODE − base", "λ fit [s]"], _fid_nfe_rows(d, solvers, with_min),
              caption + f"; D-ODE: K = {opt.scale}, B = {opt.batch}, λ fitted once on fit seed {opt.fit_seed}. "
              "D-ODE − base: mean ± std over seeds of the per-seed difference (both use the same noises, so it "
              f"is far less noisy than either column). Figure: figures/{name}.png", [])
    return out + write_tables(opt, name, [t], long)


def _fid_nfe_rows(d: pd.DataFrame, solvers: list[str], with_min: bool = False) -> list[list]:
    """Per solver and NFE: base, D-ODE (``with_min``: with the minimum over seeds), their paired
    difference and the λ fit time."""
    rows = []
    for s in solvers:
        for nfe in sorted(d[d["solver"] == s]["nfe"].unique()):
            base, dode = rows_of(d, solver=s, nfe=nfe, distill="none"), rows_of(d, solver=s, nfe=nfe, distill="dode")
            rows.append([f"{solver_label(s)} / {method_label(s, 'dode')}", int(nfe), cell(base, with_min).text,
                         cell(dode, with_min).text, paired_difference(dode, base), fit_seconds(dode)])
    return rows


# ---------------------------------------------------------------------------------------- Table 1
def _thousands(n: int) -> str:
    """50000 → "50K"."""
    return f"{n // 1000}K" if n % 1000 == 0 else str(n)


@artifact("table-time", "Table 1: λ fit time and sampling time for 50K samples (extrapolated linearly from the "
          "measured time per sample), beside the costs the paper quotes for training-based distillation",
          sweep="runs-time")
def table_time(runs: pd.DataFrame, opt: Options) -> list[Path]:
    """λ fit time and sampling time for the protocol's ``time_samples`` (linear extrapolation), with the
    paper's quotes."""
    rows, data, infos = [], [], []
    for ck in [c for c in (opt.edm_checkpoint, opt.checkpoint) if c]:
        d, info = select(runs, opt, ck, scale=opt.scale, batch=opt.batch)
        d = d[d["distill"].isin(["none", "dode"])]
        if d.empty:
            continue
        infos.append((ck, info))
        for row, record in _time_rows(d, ck, info, opt.with_min(ck)):
            rows.append(row)
            data.append(record)
    if not rows:
        opt.say(f"table-time: no D-ODE runs of {opt.dataset} in {opt.results / 'runs.csv'}; skipped")
        return []
    return write_tables(opt, stem("time", opt), _time_tables(rows, infos, opt), pd.DataFrame(data))


def _time_rows(d: pd.DataFrame, ck: str, info: Selection, with_min: bool = False) -> list[tuple[list, dict]]:
    """(Markdown row, CSV record) per D-ODE solver and NFE (D-EDM first: the paper's Table 1 is D-EDM
    on CIFAR-10); ``with_min``: the metric also as its minimum over seeds."""
    out = []
    for s in sorted(d["solver"].unique(), key=lambda s: (s != "heun", s)):
        for nfe in sorted(d[d["solver"] == s]["nfe"].unique()):
            dode = rows_of(d, solver=s, nfe=nfe, distill="dode")
            if not dode.empty:
                out.append(_time_row(dode, rows_of(d, solver=s, nfe=nfe, distill="none"), ck, s, int(nfe), info,
                                     with_min))
    return out


def _time_row(dode: pd.DataFrame, base: pd.DataFrame, ck: str, s: str, nfe: int,
              info: Selection, with_min: bool = False) -> tuple[list, dict]:
    """Fit time, sampling time of ``time_samples`` (D-ODE and base) and their total, for one cell."""
    k = protocol().time_samples
    per = lambda x: x["sample_seconds"].astype(float) / x["num_samples"].astype(float) * k  # noqa: E731
    fit = fit_value(dode)
    sm, ss, sn = stats(per(dode))
    bm, bs, bn = stats(per(base))
    val, _, vn = stats(dode["value"].astype(float))
    total = fit + sm if np.isfinite(fit) and sn else float("nan")
    row = [ck, method_label(s, "dode"), nfe, f"{fit:.1f}" if np.isfinite(fit) else "—", fmt_pm(sm, ss, sn, 0),
           fmt_pm(bm, bs, bn, 0), f"{total:.0f}" if np.isfinite(total) else "—",
           f"{total / 60:.1f}" if np.isfinite(total) else "—", cell(dode, with_min).text]
    key = f"sample_seconds_{_thousands(k).lower()}"
    return row, {"checkpoint": ck, "method": method_label(s, "dode"), "solver": s, "nfe": nfe, "fit_seconds": fit,
                 key: sm, f"{key}_std": ss, f"base_{key}": bm, "total_seconds": total, "value": val,
                 **({"value_min": minimum(dode["value"].astype(float))} if with_min else {}), "n": vn,
                 "num_samples_measured": info.num_samples, "metric": info.metric}


def _min_note(checkpoints: list[str]) -> str:
    """The caption's note on the metric cells that also show the minimum over seeds (none: "")."""
    return (f" The metric of {', '.join(checkpoints)} also shows (min …), its minimum over the seeds, as EDM "
            "reports FID (conf/paper.yaml: aggregate)." if checkpoints else "")


def _time_tables(rows: list[list], infos: list[tuple[str, Selection]], opt: Options) -> list[Table]:
    """The measured table and the quoted costs."""
    k = protocol().time_samples
    kk = _thousands(k)
    measured = ", ".join(f"{ck}: {i.num_samples} samples per seed" for ck, i in infos)
    t1 = Table(f"Time of D-ODE: λ fit and sampling {kk} samples — {opt.dataset} (paper Table 1 analogue)",
               ["checkpoint", "method", "NFE", "λ fit [s]", f"sampling {kk} [s] (extrapolated)",
                f"base solver {kk} [s]", "total [s]", "total [min]", f"{metric_label(infos[0][1].metric)}"], rows,
               f"λ fit: `fit_seconds` of the run (teacher K = {opt.scale} × NFE steps plus one student run, on B = "
               f"{opt.batch} noises). Sampling: **extrapolated linearly** to {k:,} samples from the measured "
               f"generation time (runs.csv `sample_seconds` / `num_samples`, mean ± std over seeds; measured on "
               f"{measured}). Total = λ fit + sampling {kk}. Times are those of the machine that ran dode-run "
               f"(results/README.md)." + _min_note([ck for ck, _ in infos if opt.with_min(ck)]))
    t2 = Table("Training-based distillation costs as quoted by the paper",
               ["method", "distillation time", f"sampling {kk}", "what the text says"],
               [list(r) for r in QUOTED_COSTS], "Quoted, not measured. The paper's Table 1 compares the time to reach "
               "FID 3 on CIFAR-10 (D-EDM vs CD vs PD), but its numbers are **not given in the text** we have; "
               f"the text's own statements are quoted instead. Also: {QUOTED_SAMPLING}.")
    return [t1, t2]
