"""The rows behind the tables: ``runs.csv`` with the run folders it names, row selection, statistics.

Rows are selected per table: the dataset and checkpoint, one solver grid (runs.csv's ``grid``: ""
— the paper protocol — unless a table asks for another), one metric and one ``num_samples`` (the
most common, so a quick smoke run never mixes in), K and B of the table and the λ fit of one fit
seed — or, for the ablations, each evaluation seed paired with its own fit (``fit_seed == seed``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from dode.report.options import Options

# the columns of one table cell and seed; rows equal in all of them come from configs the tables cannot tell apart
CELL = ["checkpoint", "solver", "distill", "nfe", "scale", "batch", "fit_seed", "seed", "lam"]


@dataclass(frozen=True)
class Selection:
    """What a table's rows were measured with (None: no rows)."""

    metric: str | None = None
    num_samples: int | None = None
    nfe_conventions: tuple = ()  # the rows' nfe_convention values (runs.csv; None: not recorded)


ONE_LAMBDA = ("fixed", "lookahead")  # distill options with one λ for every step, chosen by a grid search


def load_runs(results: str | Path) -> pd.DataFrame:
    """``<results>/runs.csv`` with a ``lam`` column (the one λ of ``fixed``/``lookahead`` runs, read
    from their run folders) and a resolved ``run_path``."""
    from dode.runner.results import RUNS_CSV, read_runs  # strict: a corrupt file names its bad line

    results = Path(results)
    path = results / RUNS_CSV
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the sweeps first (`make paper`, docs/runner.md)")
    df = read_runs(results)
    if df.empty:
        return df
    df["run_path"] = [str(_resolve_run_dir(r, results)) for r in df["run_dir"].astype(str)]
    if "lam" not in df.columns:
        df["lam"] = np.nan
    need = df["lam"].isna() & df["distill"].isin(ONE_LAMBDA)
    cache: dict[str, float] = {}
    for i in df.index[need]:
        p = df.at[i, "run_path"]
        if p not in cache:
            cache[p] = _fixed_lambda(Path(p))
        df.at[i, "lam"] = cache[p]
    return df


def maybe_runs(results: str | Path) -> pd.DataFrame | None:
    """:func:`load_runs`, or None when there is no runs.csv."""
    try:
        return load_runs(results)
    except FileNotFoundError:
        return None


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
    """The one λ of a fixed/lookahead run: its run.json, else its lambdas.json; NaN when neither says."""
    for name, get in (("run.json", lambda d: d["point"]["distill"]["lam"]),
                      ("lambdas.json", lambda d: d["provenance"]["fixed_lambda"])):
        try:
            return float(get(json.loads((folder / name).read_text())))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return float("nan")


def _mode(values: pd.Series):
    """The most common value (the largest of a tie), None for none."""
    counts = values.dropna().value_counts()
    if counts.empty:
        return None
    top = counts[counts == counts.max()].index
    return max(top)


def _fit_rows(d: pd.DataFrame, opt: Options, paired: bool, scale: int | None, batch: int | None) -> pd.Series:
    """Fitted rows of fit seed ``opt.fit_seed`` (``paired``: fit seed == evaluation seed), K = ``scale``
    and B = ``batch`` (None: any)."""
    keep = d["fit_seed"] == d["seed"] if paired else d["fit_seed"] == opt.fit_seed
    if scale is not None:
        keep &= d["scale"] == scale
    if batch is not None:
        keep &= d["batch"] == batch
    return keep


# runs.csv's columns of which a table shows one value (the most common): column, its words, its "" value
ONE_PER_TABLE = (("guidance", "guidance scale", "none"), ("precision", "network options", "fp32 (defaults)"))


def select(df: pd.DataFrame, opt: Options, checkpoint: str | None, paired: bool = False,
           scale: int | None = None, batch: int | None = None, grid: str = "") -> tuple[pd.DataFrame, Selection]:
    """The rows of one table: dataset, checkpoint, solver grid ``grid`` (runs.csv's column; "": the
    paper protocol), one value of each :data:`ONE_PER_TABLE` column (guidance scale, network options:
    the most common, with a note), one metric (``opt.metric`` or the most common), one num_samples
    (likewise); base rows, and fitted rows as :func:`_fit_rows` keeps them; one per cell and seed
    (:func:`newest_runs`)."""
    d = df[(df["dataset"].astype(str) == opt.dataset) & (df["grid"] == grid)]
    if checkpoint is not None:
        d = d[d["checkpoint"].astype(str) == checkpoint]
    if d.empty:
        return d, Selection()
    for col, what, default in ONE_PER_TABLE:
        if col in d.columns and d[col].nunique() > 1:
            w = _mode(d[col].astype(str))
            others = sorted(set(d[col].astype(str)) - {w})
            opt.say(f"note: {opt.dataset}/{checkpoint}: runs with {what} {w or default} shown; others in "
                    f"runs.csv not mixed in: {', '.join(o or default for o in others)}")
            d = d[d[col].astype(str) == w]
    metric = opt.metric or _mode(d["metric"].astype(str))
    d = d[d["metric"].astype(str) == metric]
    n = opt.num_samples or _mode(d["num_samples"])
    d = d[d["num_samples"] == n]
    d = d[d["fit_seed"].isna() | _fit_rows(d, opt, paired, scale, batch)]
    d = newest_runs(d, opt, checkpoint)
    return d.copy(), Selection(metric, int(n) if n is not None else None, conventions(d))


def conventions(d: pd.DataFrame) -> tuple:
    """The distinct ``nfe_convention`` values of rows (None for a row that has none)."""
    if "nfe_convention" not in d.columns:
        return (None,) if len(d) else ()
    return tuple(sorted({c if isinstance(c, str) and c else None for c in d["nfe_convention"]}, key=str))



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
    """(mean, sample std (ddof = 1; NaN for one value), n) of the finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan"), int(v.size)


def read_samples(run_path: Path, seed: int, n: int) -> np.ndarray | None:
    """The first ``n`` images (uint8, N×H×W×C) of ``seed`` in a run folder's shards, or None."""
    folder = run_path / f"seed-{seed}" / "samples"
    imgs = []
    for sh in sorted(folder.glob("shard-*.npz")):
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
