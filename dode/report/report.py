"""``python -m dode.report``: the D-ODE paper's tables and figures from ``results/runs.csv``.

Reads the rows ``dode-run`` writes (one per configuration and evaluation seed) and the run folders
they name, and writes Markdown + CSV tables to ``results/tables`` and PNG + PDF figures to
``results/figures`` (the paper: Kim, Tang & Yu, "Distilling ODE Solvers of Diffusion Models into
Smaller Steps", CVPR 2024):

==========================  ================================================================
``fig-fid-nfe``             Figs. 3/4: metric vs NFE, every base solver (dashed) and its D-ODE
                            variant (solid), mean ± std over seeds; plus the numbers as a table
``table-time``              Table 1: λ fit time and sampling time for 50K samples (extrapolated
                            linearly from the measured time per sample), beside the costs the
                            paper quotes for training-based distillation
``table-formulations``      Table 2: DDIM, D-DDIM-Sep, D-DDIM-All, D-DDIM, D-DDIM-2
``table-ablation-scale``    Table 3(a): D-DDIM with teacher scale K
``table-ablation-batch``    Table 3(b): D-DDIM with fit batch B
``table-lookahead``         Section 13 (Table 4): DDIM, LA-DDIM and Fixed-D-DDIM (best λ of a grid
                            search, the grid shown), D-DDIM
``table-learned``           D-ODE next to the learned solvers of IIA (Zhang et al. 2024) and S4S /
                            S4S-Alt (Frankel et al. 2025) on one base solver, over NFE, with each
                            method's fit time and each model's reference solver (the "teacher"),
                            and whether the best learned solver at NFE 5 is within 2× of it; plus a
                            figure
``fig-cosine``              Fig. 2: cosine similarity of all denoising outputs of a 1000-step DDIM
                            run (computed with :func:`dode.trajectory`, not from runs.csv)
``fig-trajectory``          Fig. 5: norm of the sample and two pixels along the trajectory, base
                            and D-ODE solvers against 1000-step DDIM (computed)
``fig-samples``             Fig. 6: sample grids at several NFE, base vs D-ODE, same seeds (read
                            from the run folders' sample shards)
``table-runs``              the per-seed rows of runs.csv behind the tables (``runs-<dataset>.csv``,
                            with the fixed λ), so the numbers can be checked without the run folders
==========================  ================================================================

Rows are selected per table: the dataset and checkpoint, one metric and one ``num_samples`` (the
most common, so a quick smoke run never mixes in), the default teacher scale K = 10 and batch B
(100; LSUN 25) and the λ fit of ``fit_seed`` 0 — except the ablations, which pair each evaluation
seed with its own fit (``fit_seed == seed``, see ``mk/paper.mk``), so their spread includes the fit
batch as in the paper's independent runs. ``mean ± std`` is over the selected evaluation seeds
(sample standard deviation, ddof = 1); a single seed shows its value alone.

    python -m dode.report                      # everything that can be rendered
    python -m dode.report table-formulations --dataset cifar10 --checkpoint ddpm-cifar10
    make paper                                 # the sweeps, then this (mk/paper.mk)
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

ARTIFACTS = ("fig-fid-nfe", "table-time", "table-formulations", "table-ablation-scale", "table-ablation-batch",
             "table-lookahead", "table-learned", "fig-cosine", "fig-trajectory", "fig-samples", "table-runs")
COMPUTED = ("fig-cosine", "fig-trajectory")  # need the model, not runs.csv

# Default checkpoints per dataset (as in mk/paper.mk): (noise-prediction model, data-prediction model).
CHECKPOINTS = {
    "digits": ("digits-ddpm", "digits-edm"),
    "cifar10": ("ddpm-cifar10", "edm-cifar10-32x32-uncond-vp"),
    "celeba64": ("ddpm-celeba64", None),
    "imagenet64": ("adm-imagenet64-uncond", "edm-imagenet-64x64-cond-adm"),
    "imagenet128": ("adm-imagenet128-cond", None),
    "lsun_bedroom": ("adm-lsun-bedroom256", None),
    "ffhq64": (None, "edm-ffhq-64x64-uncond-vp"),
    "afhqv2_64": (None, "edm-afhqv2-64x64-uncond-vp"),
}
SOLVER_LABELS = {"ddim": "DDIM", "euler": "Euler", "heun": "EDM", "ipndm": "iPNDM", "dpm1": "DPM-Solver-1",
                 "dpm2": "DPM-Solver-2", "dpm3": "DPM-Solver-3", "dpmpp2m": "DPM-Solver++(2M)",
                 "dpmpp3m": "DPM-Solver++(3M)", "deis1": "DEIS-1", "deis2": "DEIS-2", "deis3": "DEIS-3"}
FORM_SUFFIX = {"dode_sep": "-Sep", "dode_all": "-All", "dode": "", "dode_2": "-2"}
METRIC_LABELS = {"fd_digits": "FD-digits", "fid50k": "FID", "fid": "FID"}
TABLE_NFE = (10, 25, 50)
LEARNED_NFE = (3, 4, 5, 6, 8, 10)
LEARNED_METHODS = ("none", "dode", "iia", "s4s", "s4s_fd", "s4s_alt", "s4s_alt_fd")  # table-learned's rows
LEARNED_LABELS = {"iia": "IIA-{s}", "s4s": "S4S ({s})", "s4s_fd": "S4S ({s}, features)", "s4s_alt": "S4S-Alt ({s})",
                  "s4s_alt_fd": "S4S-Alt ({s}, features)"}
# Each model's reference solver in table-learned (solver, NFE): 1000 DDIM steps for noise-prediction
# models, 200 Heun steps (399 NFE) for data-prediction ones. The goal of the learned solvers on digits:
# at NFE GOAL_NFE, within GOAL_RATIO× of the reference's metric.
TEACHERS = {"noise": ("ddim", 1000), "edm": ("heun", 399)}
GOAL_NFE, GOAL_RATIO = 5, 2.0

# Published numbers (CIFAR-10, noise-prediction DDPM, FID of 50K samples; /work/shared/notes/methods.md
# and the paper's appendix tables). The paper's Table 1 times, its Table 3 values and the λ of its
# Table 4 grid searches did not survive in the paper text we have: they are "not given in the text".
PAPER_TABLE2 = {"none": (18.85, 9.79, 7.17), "dode_sep": (79.21, 26.40, 11.50), "dode_all": (179.67, 36.65, 18.48),
                "dode": (8.67, 8.18, 6.55), "dode_2": (18.75, 9.83, 7.21)}
PAPER_TABLE4 = {"none": (18.85, 9.79, 7.17), "dode": (8.67, 8.18, 6.55), "fixed": (11.45, 7.00, 5.27),
                "lookahead": (15.24, 8.57, 6.29)}
NOT_GIVEN = "not given in the text"
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


# ------------------------------------------------------------------------------------------ options
@dataclass
class Options:
    results: Path = Path("results")
    dataset: str = "digits"
    checkpoint: str | None = None       # noise-prediction model (Fig. 3, Tables 2–4)
    edm_checkpoint: str | None = None   # data-prediction model (Fig. 4, Table 1, Fig. 6)
    tables: Path | None = None
    figures: Path | None = None
    metric: str | None = None
    num_samples: int | None = None
    scale: int = 10
    batch: int | None = None
    fit_seed: int = 0
    nfe: Sequence[int] | None = None    # NFE columns (None: TABLE_NFE, table-learned LEARNED_NFE)
    learned_solver: str = "ddim"        # the base solver of table-learned
    teachers: dict = field(default_factory=lambda: dict(TEACHERS))
    device: str = "auto"
    threads: int = 1                     # CPU threads of the computed figures (0: torch's default)
    steps: int = 1000                    # the long DDIM run of Figs. 2 and 5
    cosine_batch: int = 16
    trajectory_batch: int = 64
    trajectory_nfe: int = 10
    sample_grid: int = 16                # images per cell of Fig. 6
    samples_nfe: dict = field(default_factory=lambda: {"ddim": (3, 5, 10), "euler": (3, 5, 10), "heun": (3, 5, 11)})
    quiet: bool = False

    def __post_init__(self):
        self.results = Path(self.results)
        self.tables = Path(self.tables) if self.tables else self.results / "tables"
        self.figures = Path(self.figures) if self.figures else self.results / "figures"
        noise, data = CHECKPOINTS.get(self.dataset, (None, None))
        self.checkpoint = self.checkpoint or noise
        self.edm_checkpoint = self.edm_checkpoint or data
        if self.batch is None:
            self.batch = 25 if self.dataset == "lsun_bedroom" else 100

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)


# ---------------------------------------------------------------------------------------- the data
def load_runs(results: str | Path) -> pd.DataFrame:
    """``<results>/runs.csv`` with a ``lam`` column (the one λ of ``fixed``/``lookahead`` runs, read
    from their run folders) and a resolved ``run_path``."""
    results = Path(results)
    path = results / "runs.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the sweeps first (`make paper`, docs/runner.md)")
    df = pd.read_csv(path)
    if df.empty:
        return df
    df["run_path"] = [str(_resolve_run_dir(r, results)) for r in df["run_dir"].astype(str)]
    if "lam" not in df.columns:
        df["lam"] = np.nan
    need = df["lam"].isna() & df["distill"].isin(["fixed", "lookahead"])
    cache: dict[str, float] = {}
    for i in df.index[need]:
        p = df.at[i, "run_path"]
        if p not in cache:
            cache[p] = _fixed_lambda(Path(p))
        df.at[i, "lam"] = cache[p]
    return df


def _resolve_run_dir(run_dir: str, results: Path) -> Path:
    """A run folder as written in runs.csv (absolute, or relative to where dode-run ran), else the same
    tail under ``results`` (runs.csv moved with its folders)."""
    p = Path(run_dir)
    if p.is_dir():
        return p
    parts = p.parts
    for k in range(len(parts)):
        cand = results.joinpath(*parts[k:])
        if cand.is_dir():
            return cand
    return p


def _fixed_lambda(folder: Path) -> float:
    for name, get in (("run.json", lambda d: d["point"]["distill"]["lam"]),
                      ("lambdas.json", lambda d: d["provenance"]["fixed_lambda"])):
        try:
            return float(get(json.loads((folder / name).read_text())))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return float("nan")


def checkpoint_config(name: str) -> dict:
    """``conf/checkpoint/<name>.yaml`` as a dict ({} when unknown)."""
    from dode.runner.config import group_option

    return group_option("checkpoint", name)


def timesteps_of(checkpoint: str) -> int | None:
    """T of a discrete-time checkpoint (K·N ≤ T for its teacher), else None."""
    sched = checkpoint_config(checkpoint).get("schedule") or {}
    return int(sched["T"]) if isinstance(sched, dict) and sched.get("T") else None


def _mode(values: pd.Series):
    counts = values.dropna().value_counts()
    if counts.empty:
        return None
    top = counts[counts == counts.max()].index
    return max(top)


def select(df: pd.DataFrame, opt: Options, checkpoint: str | None, paired: bool = False,
           scale: int | None = None, batch: int | None = None) -> tuple[pd.DataFrame, dict]:
    """The rows of one table: dataset, checkpoint, one metric, one num_samples; fitted rows of K =
    ``scale`` and B = ``batch`` (None: any) and of fit seed ``opt.fit_seed`` (``paired``: fit seed ==
    evaluation seed). Returns (rows, info: metric, num_samples)."""
    d = df[df["dataset"].astype(str) == opt.dataset]
    if checkpoint is not None:
        d = d[d["checkpoint"].astype(str) == checkpoint]
    if d.empty:
        return d, {}
    metric = opt.metric or _mode(d["metric"].astype(str))
    d = d[d["metric"].astype(str) == metric]
    n = opt.num_samples or _mode(d["num_samples"])
    d = d[d["num_samples"] == n]
    fitted = d["fit_seed"].notna()
    if paired:
        keep_fit = d["fit_seed"] == d["seed"]
    else:
        keep_fit = d["fit_seed"] == opt.fit_seed
    if scale is not None:
        keep_fit &= d["scale"] == scale
    if batch is not None:
        keep_fit &= d["batch"] == batch
    d = newest_runs(d[~fitted | keep_fit], opt, checkpoint)
    return d.copy(), {"metric": metric, "num_samples": int(n) if n is not None else None}


CELL = ["checkpoint", "solver", "distill", "nfe", "scale", "batch", "fit_seed", "seed", "lam"]


def newest_runs(d: pd.DataFrame, opt: Options, checkpoint: str | None) -> pd.DataFrame:
    """One row per table cell and seed: rows that share every column of ``CELL`` but come from
    different run folders (configs that differ in a key the table does not show, e.g. a changed
    ``distill.iters``) are reduced to the most recently run folder (its run.json), with a note."""
    dup = d.duplicated(CELL, keep=False)
    if not dup.any():
        return d
    when = {p: _run_time(Path(p)) for p in d.loc[dup, "run_path"].unique()}
    d = d.assign(_when=[when.get(p, 0.0) for p in d["run_path"]]).sort_values("_when", kind="stable")
    kept = d.drop_duplicates(CELL, keep="last")
    dropped = sorted(set(d.loc[dup, "run_path"]) - set(kept["run_path"]))
    opt.say(f"note: {opt.dataset}/{checkpoint}: {len(dropped)} older run folder(s) repeat cells of newer ones "
            f"(same names, other config); using the newest, ignoring: {', '.join(Path(x).name for x in dropped)}")
    return kept.drop(columns="_when")


def _run_time(folder: Path) -> float:
    try:
        return (folder / "run.json").stat().st_mtime
    except OSError:
        return 0.0


def stats(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, sample std (NaN for one value), n) of the finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan"), int(v.size)


def fmt_pm(mean: float, std: float, n: int, digits: int = 2) -> str:
    """``"12.34 ± 0.56"``; one seed: ``"12.34"``; nothing: ``"—"``."""
    if not n or not np.isfinite(mean):
        return "—"
    if n == 1 or not np.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def metric_label(metric: str | None) -> str:
    return METRIC_LABELS.get(str(metric), str(metric))


def solver_label(solver: str) -> str:
    if solver in SOLVER_LABELS:
        return SOLVER_LABELS[solver]
    from dode.runner.config import group_option

    return str(group_option("solver", solver).get("label", solver))


def method_label(solver: str, distill: str, lam: float | None = None) -> str:
    """DDIM, D-DDIM, D-DDIM-Sep, …, Fixed-D-DDIM, LA-DDIM."""
    s = solver_label(solver)
    if distill == "none":
        return s
    if distill in FORM_SUFFIX:
        return f"D-{s}{FORM_SUFFIX[distill]}"
    if distill == "fixed":
        return f"Fixed-D-{s}"
    if distill == "lookahead":
        return f"LA-{s}"
    if distill in LEARNED_LABELS:
        return LEARNED_LABELS[distill].format(s=s)
    return f"{s} + {distill}"


def caption_common(info: dict, seeds: Iterable) -> str:
    seeds = sorted({int(s) for s in seeds})
    return (f"{metric_label(info.get('metric'))} (lower is better) of {info.get('num_samples')} samples per evaluation "
            f"seed; mean ± std over {len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})")


# ------------------------------------------------------------------------------------------ writing
@dataclass
class Table:
    """A Markdown table with a title, a caption and notes; its long-form numbers go to CSV."""

    title: str
    header: list
    rows: list
    caption: str = ""
    notes: list = field(default_factory=list)

    def markdown(self) -> str:
        out = [f"### {self.title}", ""]
        if self.caption:
            out += [self.caption, ""]
        out.append("| " + " | ".join(map(str, self.header)) + " |")
        out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.header))) + "|")
        out += ["| " + " | ".join(map(str, r)) + " |" for r in self.rows]
        if self.notes:
            out.append("")
            out += [f"{n}" for n in self.notes]
        return "\n".join(out) + "\n"


def write_tables(opt: Options, stem: str, tables: list[Table], data: pd.DataFrame) -> list[Path]:
    opt.tables.mkdir(parents=True, exist_ok=True)
    md = opt.tables / f"{stem}.md"
    md.write_text("\n".join(t.markdown() for t in tables))
    csv = opt.tables / f"{stem}.csv"
    data.to_csv(csv, index=False, float_format="%.6g")
    opt.say(f"wrote {md} and {csv}")
    return [md, csv]


def _stem(kind: str, opt: Options, checkpoint: str | None = None) -> str:
    return "-".join(x for x in (kind, opt.dataset, checkpoint) if x)


def _long(d: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Long-form CSV: one row per group with mean, std, n, seeds."""
    rows = []
    for k, g in d.groupby(keys, dropna=False, sort=True):
        k = k if isinstance(k, tuple) else (k,)
        m, s, n = stats(g["value"].astype(float))
        rows.append({**dict(zip(keys, k)), "mean": m, "std": s, "n": n,
                     "seeds": " ".join(str(int(x)) for x in sorted(g["seed"].unique()))})
    return pd.DataFrame(rows)


def _cell(d: pd.DataFrame) -> tuple[str, float, float, int]:
    m, s, n = stats(d["value"].astype(float))
    return fmt_pm(m, s, n), m, s, n


def _fit_value(g: pd.DataFrame) -> float:
    """The fit time of a cell's rows (one fit shared by its seeds), NaN for none."""
    v = g["fit_seconds"].astype(float).dropna()
    return float(v.iloc[0]) if len(v) else float("nan")


def _fit_seconds(g: pd.DataFrame) -> str:
    v = _fit_value(g)
    return f"{v:.1f}" if np.isfinite(v) else "—"


def paired_difference(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """``a − b`` per evaluation seed (same noises), as mean ± std over the seeds both have."""
    m = a.groupby("seed")["value"].mean().sub(b.groupby("seed")["value"].mean()).dropna()
    mean, std, n = stats(m.astype(float))
    if not n:
        return "—"
    return f"{mean:+.2f}" if n == 1 else f"{mean:+.2f} ± {std:.2f}"


def _nfes(d: pd.DataFrame, wanted: Sequence[int]) -> list[int]:
    have = set(int(x) for x in d["nfe"].unique())
    return [n for n in wanted if n in have] or sorted(have)


# -------------------------------------------------------------------------------------- Figs. 3/4
def fid_nfe(df: pd.DataFrame, opt: Options) -> list[Path]:
    """Metric vs NFE per checkpoint: base solvers dashed, D-ODE solid, mean ± std (Figs. 3/4)."""
    from dode.report import figures

    out = []
    for ck in [c for c in (opt.checkpoint, opt.edm_checkpoint) if c]:
        d, info = select(df, opt, ck, scale=opt.scale, batch=opt.batch)
        d = d[d["distill"].isin(["none", "dode"])]
        # base solver and D-ODE pairs only (a lone base run, e.g. table-learned's reference solver, is no point)
        paired = d[d["distill"] == "dode"][["solver", "nfe"]].drop_duplicates()
        d = d.merge(paired, on=["solver", "nfe"])
        if d.empty:
            opt.say(f"fig-fid-nfe: no runs of {opt.dataset}/{ck} in {opt.results / 'runs.csv'}; skipped")
            continue
        long = _long(d, ["solver", "distill", "nfe"])
        solvers = list(dict.fromkeys(d["solver"]))
        pred = checkpoint_config(ck).get("prediction")
        kind = {"eps": "noise-prediction model (paper Fig. 3)", "x0": "data-prediction model (paper Fig. 4)"}.get(
            pred, "(paper Figs. 3/4)")
        title = f"{metric_label(info['metric'])} vs NFE — {opt.dataset} · {ck}, {kind}"
        stem = _stem("fid-nfe", opt, ck)
        out += figures.fid_vs_nfe(long, solvers, title, caption_common(info, d["seed"].unique()),
                                  metric_label(info["metric"]), opt.figures / stem)
        # the same numbers as a table: base, D-ODE, difference
        rows = []
        for s in solvers:
            for nfe in sorted(d[d["solver"] == s]["nfe"].unique()):
                g = d[(d["solver"] == s) & (d["nfe"] == nfe)]
                b, bm, _, bn = _cell(g[g["distill"] == "none"])
                o, om, _, on = _cell(g[g["distill"] == "dode"])
                diff = paired_difference(g[g["distill"] == "dode"], g[g["distill"] == "none"])
                rows.append([f"{solver_label(s)} / {method_label(s, 'dode')}", int(nfe), b, o, diff,
                             _fit_seconds(g[g["distill"] == "dode"])])
        t = Table(f"{metric_label(info['metric'])} vs NFE: {opt.dataset} · {ck}", ["solver", "NFE", "base", "D-ODE",
                                                                                     "D-ODE − base", "λ fit [s]"],
                  rows, caption_common(info, d["seed"].unique()) + f"; D-ODE: K = {opt.scale}, B = {opt.batch}, λ fitted "
                  f"once on fit seed {opt.fit_seed}. D-ODE − base: mean ± std over seeds of the per-seed difference "
                  "(both use the same noises, so it is far less noisy than either column). "
                  f"Figure: figures/{stem}.png", [])
        out += write_tables(opt, stem, [t], long)
    return out


# ---------------------------------------------------------------------------------------- Table 1
def table_time(df: pd.DataFrame, opt: Options) -> list[Path]:
    """λ fit time and sampling time for 50K samples (linear extrapolation), with the paper's quotes."""
    rows, data = [], []
    infos = []
    for ck in [c for c in (opt.edm_checkpoint, opt.checkpoint) if c]:
        d, info = select(df, opt, ck, scale=opt.scale, batch=opt.batch)
        d = d[d["distill"].isin(["none", "dode"])]
        if d.empty:
            continue
        infos.append((ck, info))
        # D-EDM (Heun) first: the paper's Table 1 is D-EDM on CIFAR-10
        solvers = sorted(d["solver"].unique(), key=lambda s: (s != "heun", s))
        for s in solvers:
            for nfe in sorted(d[d["solver"] == s]["nfe"].unique()):
                g = d[(d["solver"] == s) & (d["nfe"] == nfe)]
                dode = g[g["distill"] == "dode"]
                base = g[g["distill"] == "none"]
                if dode.empty:
                    continue
                fit = _fit_value(dode)
                per = lambda x: (x["sample_seconds"].astype(float) / x["num_samples"].astype(float) * 50000)  # noqa: E731
                sm, ss, sn = stats(per(dode))
                bm, bs, bn = stats(per(base))
                val, _, vn = stats(dode["value"].astype(float))
                total = fit + sm if np.isfinite(fit) and sn else float("nan")
                rows.append([ck, method_label(s, "dode"), int(nfe), f"{fit:.1f}" if np.isfinite(fit) else "—",
                             fmt_pm(sm, ss, sn, 0), fmt_pm(bm, bs, bn, 0),
                             f"{total:.0f}" if np.isfinite(total) else "—", f"{total / 60:.1f}" if np.isfinite(total) else "—",
                             fmt_pm(*stats(dode["value"].astype(float)), 2)])
                data.append({"checkpoint": ck, "method": method_label(s, "dode"), "solver": s, "nfe": int(nfe),
                             "fit_seconds": fit, "sample_seconds_50k": sm, "sample_seconds_50k_std": ss,
                             "base_sample_seconds_50k": bm, "total_seconds": total, "value": val, "n": vn,
                             "num_samples_measured": info["num_samples"], "metric": info["metric"]})
    if not rows:
        opt.say(f"table-time: no D-ODE runs of {opt.dataset} in {opt.results / 'runs.csv'}; skipped")
        return []
    measured = ", ".join(f"{ck}: {i['num_samples']} samples per seed" for ck, i in infos)
    t1 = Table(f"Time of D-ODE: λ fit and sampling 50K samples — {opt.dataset} (paper Table 1 analogue)",
               ["checkpoint", "method", "NFE", "λ fit [s]", "sampling 50K [s] (extrapolated)", "base solver 50K [s]",
                "total [s]", "total [min]", f"{metric_label(infos[0][1]['metric'])}"], rows,
               f"λ fit: `fit_seconds` of the run (teacher K = {opt.scale} × NFE steps plus one student run, on B = "
               f"{opt.batch} noises). Sampling: **extrapolated linearly** to 50,000 samples from the measured "
               f"generation time (runs.csv `sample_seconds` / `num_samples`, mean ± std over seeds; measured on "
               f"{measured}). Total = λ fit + sampling 50K. Times are those of the machine that ran dode-run "
               f"(results/README.md).")
    t2 = Table("Training-based distillation costs as quoted by the paper",
               ["method", "distillation time", "sampling 50K", "what the text says"],
               [list(r) for r in QUOTED_COSTS], "Quoted, not measured. The paper's Table 1 compares the time to reach "
               "FID 3 on CIFAR-10 (D-EDM vs CD vs PD), but its numbers are **not given in the text** we have; "
               f"the text's own statements are quoted instead. Also: {QUOTED_SAMPLING}.")
    return write_tables(opt, _stem("time", opt), [t1, t2], pd.DataFrame(data))


# ---------------------------------------------------------------------------------------- Table 2
def table_formulations(df: pd.DataFrame, opt: Options) -> list[Path]:
    ck = opt.checkpoint
    d, info = select(df, opt, ck, scale=opt.scale, batch=opt.batch)
    d = d[(d["solver"] == "ddim") & d["distill"].isin(list(PAPER_TABLE2))]
    if d.empty:
        opt.say(f"table-formulations: no DDIM runs of {opt.dataset}/{ck}; skipped")
        return []
    nfes = _nfes(d, opt.nfe or TABLE_NFE)
    rows = []
    for dist in PAPER_TABLE2:
        g = d[d["distill"] == dist]
        if g.empty:
            continue
        rows.append([method_label("ddim", dist)] + [_cell(g[g["nfe"] == n])[0] for n in nfes])
    t = Table(f"Formulations of D-DDIM — {opt.dataset} · {ck} (paper Table 2 analogue)", ["NFE"] + nfes, rows,
              caption_common(info, d["seed"].unique()) + f"; K = {opt.scale}, B = {opt.batch}, λ fitted once (fit seed "
              f"{opt.fit_seed}). Sep: D̃ = a·D_k + b·D_k−1; All: free weights on every previous output; D-DDIM: "
              "D̃ = D_k + λ(D_k − D_k−1); D-DDIM-2: two λ on the last two differences.")
    diff = [[f"{method_label('ddim', dist)} − {ref_label}"] + [
        paired_difference(d[(d["distill"] == dist) & (d["nfe"] == n)], d[(d["distill"] == ref) & (d["nfe"] == n)])
        for n in nfes] for ref, ref_label in (("none", "DDIM"), ("dode", "D-DDIM"))
        for dist in PAPER_TABLE2 if dist not in ("none", ref) and (d["distill"] == dist).any() and (d["distill"] == ref).any()]
    paired = Table("Paired differences", ["NFE"] + nfes, diff,
                   "Per evaluation seed (same noises), mean ± std over seeds; negative = lower (better) than the "
                   "reference.")
    paper = Table("Published (paper Table 2: CIFAR-10, DDPM, FID of 50K samples)", ["NFE", 10, 25, 50],
                  [[method_label("ddim", k)] + [f"{v:.2f}" for v in vals] for k, vals in PAPER_TABLE2.items()],
                  "Quoted from the paper for comparison (one value per cell).")
    long = _long(d[d["nfe"].isin(nfes)], ["distill", "nfe"])
    long.insert(0, "method", [method_label("ddim", x) for x in long["distill"]])
    return write_tables(opt, _stem("formulations", opt, ck), [t, paired, paper] if diff else [t, paper], long)


# ---------------------------------------------------------------------------------------- Table 3
def table_ablation(df: pd.DataFrame, opt: Options, which: str) -> list[Path]:
    """Table 3(a) (``which="scale"``: K) or 3(b) (``"batch"``: B) of D-DDIM, paired fit seeds."""
    ck = opt.checkpoint
    other = "batch" if which == "scale" else "scale"
    fixed = opt.batch if which == "scale" else opt.scale
    d, info = select(df, opt, ck, paired=True, **{other: fixed})
    d = d[(d["solver"] == "ddim")]
    dode = d[d["distill"] == "dode"]
    if dode.empty:
        opt.say(f"table-ablation-{which}: no D-DDIM runs of {opt.dataset}/{ck}; skipped")
        return []
    nfes = _nfes(dode, opt.nfe or TABLE_NFE)
    T = timesteps_of(ck)
    symbol = "K" if which == "scale" else "B"
    rows, notes, capped = [], [], False
    for v in sorted(int(x) for x in dode[which].dropna().unique()):
        row = [f"{symbol} = {v}"]
        for n in nfes:
            g = dode[(dode[which] == v) & (dode["nfe"] == n)]
            if g.empty and which == "scale" and T and v * n > T and T // n >= 1:
                # the runner refuses K·N > T; the paper's capped teacher is the K = T // N one
                g2 = dode[(dode["scale"] == T // n) & (dode["nfe"] == n)]
                row.append(f"({_cell(g2)[0]})†" if not g2.empty else "—†")
                capped = True
            else:
                row.append(_cell(g)[0])
        rows.append(row)
    base = d[d["distill"] == "none"]
    if not base.empty:
        rows.append(["DDIM (no λ)"] + [_cell(base[base["nfe"] == n])[0] for n in nfes])
    if capped:
        notes.append(f"† K·N > T = {T}: the runner refuses a teacher longer than the model's T timesteps. The paper "
                     f"notes that at NFE 50 \"scales 20 and 30 ... generate samples guided by the same teacher\" (the "
                     f"teacher capped at T); the value shown in parentheses is therefore the K = T // NFE run's.")
    label = f"scale K (teacher steps per student step; B = {opt.batch})" if which == "scale" else \
        f"batch B (noises of the λ fit; K = {opt.scale})"
    cap = (caption_common(info, dode["seed"].unique()) + ". Each evaluation seed s uses its own λ fit (fit seed s), "
           "so the spread includes the choice of the fit batch, as in the paper's independent runs. Paper: larger K "
           "and B give lower FID (and, for B, lower variance); the effect shrinks as NFE grows; its numbers are "
           f"{NOT_GIVEN}.")
    t = Table(f"Ablation of D-DDIM: {label} — {opt.dataset} · {ck} (paper Table 3{'a' if which == 'scale' else 'b'} "
              f"analogue)", ["NFE"] + nfes, rows, cap, notes)
    ref = opt.scale if which == "scale" else opt.batch
    diff_rows = []
    for v in sorted(int(x) for x in dode[which].dropna().unique()):
        if v == ref:
            continue
        diff_rows.append([f"{symbol} = {v} − {symbol} = {ref}"] + [
            paired_difference(dode[(dode[which] == v) & (dode["nfe"] == n)], dode[(dode[which] == ref) & (dode["nfe"] == n)])
            for n in nfes])
    tables = [t]
    if diff_rows:
        tables.append(Table(f"Paired difference to {symbol} = {ref}", ["NFE"] + nfes, diff_rows,
                            "Per evaluation seed (same noises, each side with its fit seed = that seed), mean ± std over "
                            "seeds; negative = better than the reference. The seed-to-seed spread of the table above is "
                            "mostly common to every row."))
    long = _long(dode[dode["nfe"].isin(nfes)], [which, "nfe"])
    return write_tables(opt, _stem(f"ablation-{which}", opt, ck), tables, long)


# ------------------------------------------------------------------------------- Section 13 / Table 4
def table_lookahead(df: pd.DataFrame, opt: Options) -> list[Path]:
    from dode.report import figures

    ck = opt.checkpoint
    d, info = select(df, opt, ck, scale=opt.scale, batch=opt.batch)
    d = d[(d["solver"] == "ddim") & d["distill"].isin(["none", "dode", "fixed", "lookahead"])]
    if d.empty:
        opt.say(f"table-lookahead: no DDIM runs of {opt.dataset}/{ck}; skipped")
        return []
    nfes = _nfes(d, opt.nfe or TABLE_NFE)
    rows, best_rows = [], []
    grid_long = _long(d[d["distill"].isin(["fixed", "lookahead"])], ["distill", "lam", "nfe"]) \
        if d["distill"].isin(["fixed", "lookahead"]).any() else pd.DataFrame(columns=["distill", "lam", "nfe", "mean"])
    for dist in ("none", "dode", "fixed", "lookahead"):
        g = d[d["distill"] == dist]
        if g.empty:
            continue
        row = [method_label("ddim", dist)]
        for n in nfes:
            if dist in ("fixed", "lookahead"):
                gl = grid_long[(grid_long["distill"] == dist) & (grid_long["nfe"] == n) & (grid_long["n"] > 0)]
                if gl.empty:
                    row.append("—")
                    continue
                b = gl.loc[gl["mean"].idxmin()]
                row.append(f"{fmt_pm(b['mean'], b['std'], int(b['n']))} (λ = {b['lam']:g})")
                best_rows.append({"distill": dist, "nfe": n, "best_lam": b["lam"], "mean": b["mean"], "std": b["std"]})
            else:
                row.append(_cell(g[g["nfe"] == n])[0])
        rows.append(row)
    lams = sorted(float(x) for x in grid_long["lam"].dropna().unique()) if len(grid_long) else []
    t = Table(f"DDIM, D-DDIM, Fixed-D-DDIM and LA-DDIM — {opt.dataset} · {ck} (paper Section 13, Table 4 analogue)",
              ["NFE"] + nfes, rows,
              caption_common(info, d["seed"].unique()) + f". Fixed-D-DDIM (one λ for every step in D-DDIM's form) and "
              f"LA-DDIM (lookahead: x̂0' = x̂0_k + λ(x̂0_k − x̂0_k−1)) show the best λ of the grid "
              f"{{{', '.join(f'{x:g}' for x in lams)}}} per NFE, chosen on the same seeds it is reported on "
              "(so slightly optimistic); D-DDIM needs no search.")
    grid_rows = []
    for dist in ("fixed", "lookahead"):
        for lam in lams:
            cells = []
            for n in nfes:
                gl = grid_long[(grid_long["distill"] == dist) & (grid_long["lam"] == lam) & (grid_long["nfe"] == n)]
                cells.append(fmt_pm(gl["mean"].iloc[0], gl["std"].iloc[0], int(gl["n"].iloc[0])) if len(gl) else "—")
            if any(c != "—" for c in cells):
                grid_rows.append([f"{method_label('ddim', dist)} λ = {lam:g}"] + cells)
    tables = [t]
    if grid_rows:
        tables.append(Table("The grid search", ["NFE"] + nfes, grid_rows,
                            f"Every λ of the grid; figure: figures/{_stem('lookahead-grid', opt, ck)}.png."))
    tables.append(Table("Published (paper Table 4: CIFAR-10, DDPM, FID of 50K samples)", ["NFE", 10, 25, 50],
                        [[method_label("ddim", k)] + [f"{v:.2f}" for v in vals] for k, vals in PAPER_TABLE4.items()],
                        f"Quoted; the λ the paper's grid searches chose are {NOT_GIVEN}."))
    long = _long(d[d["nfe"].isin(nfes)], ["distill", "lam", "nfe"])
    out = write_tables(opt, _stem("lookahead", opt, ck), tables, long)
    if len(grid_long):
        refs = {dist: {n: stats(d[(d["distill"] == dist) & (d["nfe"] == n)]["value"].astype(float))[0] for n in nfes}
                for dist in ("none", "dode")}
        out += figures.lambda_grid(grid_long, refs, nfes, metric_label(info["metric"]),
                                   f"Grid search of one λ — {opt.dataset} · {ck} (paper Fig. 8b/c analogue)",
                                   opt.figures / _stem("lookahead-grid", opt, ck))
    return out


# ------------------------------------------------------------------------------ learned solvers
def _teacher_label(solver: str, nfe: int) -> str:
    steps = (nfe + 1) // 2 if solver == "heun" else nfe
    return f"{'EDM (Heun)' if solver == 'heun' else solver_label(solver)}, {steps} steps (NFE {nfe})"


def _ratio(value: float, ref: float) -> str:
    return f"{value / ref:.2f}×" if np.isfinite(value) and np.isfinite(ref) and ref > 0 else "—"


def table_learned(df: pd.DataFrame, opt: Options) -> list[Path]:
    """Base solver, D-ODE, IIA, S4S and S4S-Alt over NFE on each model, with their fit times and the
    model's reference solver; the best learned method at ``GOAL_NFE`` against ``GOAL_RATIO``× it."""
    from dode.report import figures

    out = []
    s = opt.learned_solver
    for role, ck in (("noise", opt.checkpoint), ("edm", opt.edm_checkpoint)):
        if not ck:
            continue
        d, info = select(df, opt, ck, scale=opt.scale, batch=opt.batch)
        t_solver, t_nfe = opt.teachers[role]
        teacher = d[(d["distill"] == "none") & (d["solver"] == t_solver) & (d["nfe"] == t_nfe)]
        d = d[(d["solver"] == s) & d["distill"].isin(LEARNED_METHODS)]
        if d.empty:
            opt.say(f"table-learned: no {s} runs of {opt.dataset}/{ck} in {opt.results / 'runs.csv'}; skipped")
            continue
        nfes = _nfes(d, opt.nfe or LEARNED_NFE)
        d = d[d["nfe"].isin(nfes)]
        methods = [m for m in LEARNED_METHODS if (d["distill"] == m).any()]
        t_cell, t_mean, t_std, t_n = _cell(teacher)
        t_label = _teacher_label(t_solver, t_nfe)
        rows, fit_rows, ratio_rows = [], [], []
        for m in methods:
            g = d[d["distill"] == m]
            cells = [_cell(g[g["nfe"] == n]) for n in nfes]
            rows.append([method_label(s, m)] + [c[0] for c in cells])
            ratio_rows.append([method_label(s, m)] + [_ratio(c[1], t_mean) for c in cells])
            if m != "none":
                fit_rows.append([method_label(s, m)] + [_fit_seconds(g[g["nfe"] == n]) for n in nfes])
        if t_n:
            rows.append([f"reference: {t_label}"] + [t_cell] * len(nfes))
        curves = _long(d, ["distill", "nfe"])
        notes = [_goal(curves, s, t_mean, t_n, info)] if GOAL_NFE in nfes else []
        stem = _stem("learned", opt, ck)
        caption = (caption_common(info, d["seed"].unique()) + f"; every method on {solver_label(s)}: the base solver, "
                   f"D-ODE (K = {opt.scale}), IIA (M = K fine sub-steps per step), S4S and S4S-Alt (teacher Heun, "
                   "199 NFE; distance L2, or \"features\": the digits classifier's features, the network of "
                   f"FD-digits); every fit on the same B = {opt.batch} noises of fit seed {opt.fit_seed}, one fit "
                   "per cell, so the spread is that of the evaluation seeds. The reference row is one run of the "
                   "model's reference solver, repeated in each column. Figure: "
                   f"figures/{stem}.png")
        tables = [Table(f"Learned solvers — {opt.dataset} · {ck}", ["NFE"] + nfes, rows, caption, notes)]
        if t_n:
            tables.append(Table(f"Ratio to the reference ({t_label}: {t_cell})",
                                ["NFE"] + nfes, ratio_rows, "Mean over seeds divided by the reference's mean."))
        if fit_rows:
            tables.append(Table("Fit time [s]", ["NFE"] + nfes, fit_rows,
                                "`fit_seconds` of the run: D-ODE one teacher and one student run; IIA one student run "
                                "plus the fine solver from every step; S4S the teacher samples plus Adam through the "
                                "student; S4S-Alt also the grid searches. Measured on the machine that ran dode-run "
                                "(results/README.md)."))
        curves.insert(0, "method", [method_label(s, x) for x in curves["distill"]])
        curves["fit_seconds"] = [_fit_value(d[(d["distill"] == r.distill) & (d["nfe"] == r.nfe)])
                                 for r in curves.itertuples()]
        reference = pd.DataFrame([{"method": f"reference: {t_label}", "distill": "none",
                                   "nfe": t_nfe, "mean": t_mean, "std": t_std, "n": t_n,
                                   "seeds": " ".join(str(int(x)) for x in sorted(teacher["seed"].unique()))}]) \
            if t_n else pd.DataFrame()
        out += write_tables(opt, stem, tables, pd.concat([curves, reference], ignore_index=True))
        out += figures.learned_vs_nfe(curves, s, (t_mean, t_std, t_label) if t_n else None,
                                      f"{metric_label(info['metric'])} of learned solvers vs NFE — {opt.dataset} · {ck}",
                                      caption_common(info, d["seed"].unique()), metric_label(info["metric"]),
                                      opt.figures / stem)
    return out


def _goal(curves: pd.DataFrame, solver: str, t_mean: float, t_n: int, info: dict) -> str:
    """The goal line: the best learned method at GOAL_NFE (``curves``: mean per distill and NFE)
    against GOAL_RATIO × the reference."""
    at = curves[(curves["nfe"] == GOAL_NFE) & (curves["distill"] != "none") & (curves["n"] > 0)]
    means = dict(zip(at["distill"], at["mean"].astype(float)))
    if not means or not t_n:
        return f"Goal (best learned solver at NFE {GOAL_NFE} within {GOAL_RATIO:g}× the reference): not measured."
    best = min(means, key=means.get)
    ratio = means[best] / t_mean
    verdict = "met" if ratio <= GOAL_RATIO else "not met"
    return (f"Goal (best learned solver at NFE {GOAL_NFE} within {GOAL_RATIO:g}× the reference's "
            f"{metric_label(info.get('metric'))}): **{verdict}** — {method_label(solver, best)} "
            f"{means[best]:.2f} vs reference {t_mean:.2f}, ratio {ratio:.2f}.")


# ------------------------------------------------------------------------------------------ Fig. 6
def samples(df: pd.DataFrame, opt: Options) -> list[Path]:
    from dode.report import figures

    out = []
    for ck in [c for c in (opt.edm_checkpoint or opt.checkpoint,) if c]:  # the paper: data-prediction models
        d, info = select(df, opt, ck, scale=opt.scale, batch=opt.batch)
        d = d[d["distill"].isin(["none", "dode"]) & (d["seed"] == 0)]
        cells = {}
        for s, nfes in opt.samples_nfe.items():
            for n in nfes:
                for dist in ("none", "dode"):
                    g = d[(d["solver"] == s) & (d["nfe"] == n) & (d["distill"] == dist)]
                    if g.empty:
                        continue
                    imgs = read_samples(Path(g["run_path"].iloc[0]), 0, opt.sample_grid)
                    if imgs is not None:
                        cells[(s, n, dist)] = imgs
        if not cells:
            opt.say(f"fig-samples: no sample shards of {opt.dataset}/{ck}; skipped")
            continue
        out += figures.sample_grids(cells, f"Samples of {opt.dataset} · {ck}: base vs D-ODE, same noises (seed 0, "
                                    f"samples 0–{opt.sample_grid - 1}) (paper Fig. 6 analogue)",
                                    opt.figures / _stem("samples", opt, ck))
    return out


def read_samples(run_path: Path, seed: int, n: int) -> np.ndarray | None:
    """The first ``n`` images (uint8, N×H×W×C) of ``seed`` in a run folder's shards, or None."""
    folder = run_path / f"seed-{seed}" / "samples"
    shards = sorted(folder.glob("shard-*.npz"))
    imgs = []
    for sh in shards:
        try:
            with np.load(sh) as z:
                imgs.append(z["images"])
        except Exception:
            return None
        if sum(len(i) for i in imgs) >= n:
            break
    if not imgs:
        return None
    return np.concatenate(imgs)[:n]


def table_runs(df: pd.DataFrame, opt: Options) -> list[Path]:
    """The dataset's rows of runs.csv (every seed, with the λ of fixed/lookahead runs)."""
    d = df[df["dataset"].astype(str) == opt.dataset].drop(columns=["run_path"])
    if d.empty:
        opt.say(f"table-runs: no runs of {opt.dataset}; skipped")
        return []
    d = d.sort_values(["checkpoint", "solver", "distill", "nfe", "scale", "batch", "lam", "fit_seed", "seed"],
                      na_position="first")
    opt.tables.mkdir(parents=True, exist_ok=True)
    path = opt.tables / f"runs-{opt.dataset}.csv"
    d.to_csv(path, index=False, float_format="%.6g")
    opt.say(f"wrote {path}")
    return [path]


# ------------------------------------------------------------------------------------------ driver
def render(what: Sequence[str], opt: Options) -> list[Path]:
    """Render the named artifacts (``ARTIFACTS``); returns the files written."""
    from dode.report import figures

    unknown = [w for w in what if w not in ARTIFACTS]
    if unknown:
        raise ValueError(f"unknown artifact(s) {', '.join(unknown)}; valid: {', '.join(ARTIFACTS)}")
    df = load_runs(opt.results) if any(w not in COMPUTED for w in what) else None
    makers = {
        "fig-fid-nfe": lambda: fid_nfe(df, opt),
        "table-time": lambda: table_time(df, opt),
        "table-formulations": lambda: table_formulations(df, opt),
        "table-ablation-scale": lambda: table_ablation(df, opt, "scale"),
        "table-ablation-batch": lambda: table_ablation(df, opt, "batch"),
        "table-lookahead": lambda: table_lookahead(df, opt),
        "table-learned": lambda: table_learned(df, opt),
        "fig-samples": lambda: samples(df, opt),
        "table-runs": lambda: table_runs(df, opt),
        "fig-cosine": lambda: figures.cosine_figure(opt),
        "fig-trajectory": lambda: figures.trajectory_figure(opt, df=_maybe_runs(opt)),
    }
    out: list[Path] = []
    for w in what:
        files = makers[w]()
        for f in files:
            if f.suffix == ".png":
                opt.say(f"wrote {f} and {f.with_suffix('.pdf').name}")
        out += files
    return out


def _maybe_runs(opt: Options) -> pd.DataFrame | None:
    try:
        return load_runs(opt.results)
    except FileNotFoundError:
        return None


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in str(s).replace(",", " ").split())


def _solver_nfe(s: str) -> tuple[str, int]:
    solver, sep, nfe = str(s).partition(":")
    if not sep or not solver or not nfe.isdigit():
        raise argparse.ArgumentTypeError(f"expected SOLVER:NFE (e.g. heun:399), got {s!r}")
    return solver, int(nfe)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dode.report",
        description="Render the D-ODE paper's tables (Markdown + CSV) and figures (PNG + PDF) from "
                    "<results>/runs.csv and the run folders (Figs. 2 and 5 are computed with the model).",
        epilog="Artifacts: " + ", ".join(ARTIFACTS) + ". Without any: all of them. Sweeps: mk/paper.mk (make paper).")
    p.add_argument("what", nargs="*", help="artifacts to render (default: all)")
    p.add_argument("--results", default="results", help="folder with runs.csv (default: results)")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--checkpoint", default=None, help="noise-prediction checkpoint (Fig. 3, Tables 2–4)")
    p.add_argument("--edm-checkpoint", default=None, help="data-prediction checkpoint (Fig. 4, Table 1, Fig. 6)")
    p.add_argument("--tables", default=None, help="output folder of tables (default: <results>/tables)")
    p.add_argument("--figures", default=None, help="output folder of figures (default: <results>/figures)")
    p.add_argument("--metric", default=None, help="metric of runs.csv to use (default: the most common)")
    p.add_argument("--num-samples", type=int, default=None, help="samples per seed to use (default: the most common)")
    p.add_argument("--scale", type=int, default=10, help="K of the main tables (default 10)")
    p.add_argument("--batch", type=int, default=None, help="B of the main tables (default 100; LSUN 25)")
    p.add_argument("--fit-seed", type=int, default=0, help="λ fit seed of the main tables (default 0)")
    p.add_argument("--nfe", type=_ints, default=None, help="NFE columns of Tables 2–4 (default 10,25,50) and of "
                   "table-learned (default 3,4,5,6,8,10)")
    p.add_argument("--learned-solver", default="ddim", help="base solver of table-learned (default ddim)")
    p.add_argument("--teacher-noise", type=_solver_nfe, default=TEACHERS["noise"],
                   help="reference solver of the noise-prediction model in table-learned, SOLVER:NFE (default ddim:1000)")
    p.add_argument("--teacher-edm", type=_solver_nfe, default=TEACHERS["edm"],
                   help="reference solver of the data-prediction model in table-learned, SOLVER:NFE (default heun:399)")
    p.add_argument("--device", default="auto", help="device of the computed figures (auto: cuda if present)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of the computed figures (default 1; "
                   "0: torch's default)")
    p.add_argument("--steps", type=int, default=1000, help="steps of the long DDIM run (Figs. 2, 5)")
    p.add_argument("--trajectory-nfe", type=int, default=10, help="NFE of the solvers in Fig. 5 (Heun: the odd NFE "
                   "below it)")
    p.add_argument("--samples-nfe", type=_ints, default=(3, 5, 10), help="NFE of Fig. 6's DDIM columns (default 3,5,10)")
    p.add_argument("--samples-nfe-heun", type=_ints, default=(3, 5, 11),
                   help="NFE of Fig. 6's EDM (Heun) columns (default 3,5,11)")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    opt = Options(results=a.results, dataset=a.dataset, checkpoint=a.checkpoint, edm_checkpoint=a.edm_checkpoint,
                  tables=a.tables, figures=a.figures, metric=a.metric, num_samples=a.num_samples, scale=a.scale,
                  batch=a.batch, fit_seed=a.fit_seed, nfe=a.nfe, device=a.device, threads=a.threads, steps=a.steps,
                  trajectory_nfe=a.trajectory_nfe, quiet=a.quiet, learned_solver=a.learned_solver,
                  teachers={"noise": a.teacher_noise, "edm": a.teacher_edm},
                  samples_nfe={"ddim": a.samples_nfe, "euler": a.samples_nfe, "heun": a.samples_nfe_heun})
    try:
        files = render(a.what or list(ARTIFACTS), opt)
    except (FileNotFoundError, ValueError) as e:
        print(f"dode.report: error: {e}", file=sys.stderr)
        return 2
    if not files:
        print("dode.report: nothing rendered (no matching runs)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
