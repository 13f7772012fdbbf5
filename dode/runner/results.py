"""``<results_dir>/runs.csv`` — one row per (point, seed, metric) — and the summary table of a job."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from dode.runner.config import display_label
from dode.runner.points import Point
from dode.runner.store import file_lock, run_dir, write_atomic

RUNS_CSV = "runs.csv"
KEY_COLUMNS = ["run_dir", "seed", "num_samples", "metric"]
INT_COLUMNS = ["nfe", "scale", "batch", "seed", "num_samples", "fit_seed"]
COLUMNS = ["dataset", "checkpoint", "solver", "distill", "nfe", "scale", "batch", "seed", "num_samples",
           "metric", "value", "fit_seconds", "sample_seconds", "metric_seconds", "fit_seed", "run_dir"]


def csv_row(point: Point, folder: Path, seed: int, result: dict, correction: Any) -> dict:
    """The runs.csv row of one seed of ``point`` (K, B and the fit seed only for fitted corrections)."""
    c = point.choices
    fits = point.fits
    prov = getattr(correction, "provenance", None) or {}
    return {
        "dataset": c.dataset, "checkpoint": c.checkpoint, "solver": point.solver["name"],
        "distill": c.distill, "nfe": point.nfe, "scale": point.scale if fits else None,
        "batch": point.batch if fits else None, "seed": int(seed), "num_samples": point.num_samples,
        "metric": c.eval, "value": result["value"],
        "fit_seconds": prov.get("fit_seconds") if correction is not None else None,
        "sample_seconds": result.get("sample_seconds"), "metric_seconds": result.get("metric_seconds"),
        "fit_seed": point.fit_seed if fits else None, "run_dir": str(folder),
    }


def record(results_dir: str | Path, rows: list[dict]) -> None:
    """Insert or replace ``rows`` in ``<results_dir>/runs.csv`` (key: run_dir, seed, num_samples,
    metric), under an ``fcntl`` lock with an atomic replace, so concurrent runs never lose a row."""
    import pandas as pd

    if not rows:
        return
    path = Path(results_dir) / RUNS_CSV
    new = pd.DataFrame(rows)
    with file_lock(path.with_name(f".{RUNS_CSV}.lock")):
        if path.exists() and path.stat().st_size > 0:
            old = pd.read_csv(path)
            keys = set(new[KEY_COLUMNS].astype(str).itertuples(index=False, name=None))
            keep = ~pd.Series(list(old[KEY_COLUMNS].astype(str).itertuples(index=False, name=None))).isin(keys).values
            both = [d for d in (old[keep], new) if len(d)]
            table = pd.concat(both, ignore_index=True)
        else:
            table = new
        for col in INT_COLUMNS:  # nullable integers: the base solver has no K, B or fit seed
            if col in table.columns:
                table[col] = pd.to_numeric(table[col]).astype("Int64")
        cols = [c for c in COLUMNS if c in table.columns] + [c for c in table.columns if c not in COLUMNS]
        buf = io.StringIO()
        table[cols].to_csv(buf, index=False)
        write_atomic(path, buf.getvalue().encode())


def read_runs(results_dir: str | Path) -> Any:
    """runs.csv of ``results_dir`` as a DataFrame (empty, with :data:`COLUMNS`, when there is none)."""
    import pandas as pd

    path = Path(results_dir) / RUNS_CSV
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=COLUMNS)


def summary(points: list[Point], table: Any = None) -> str:
    """A readable table of the points' rows in runs.csv: solver, NFE, base vs correction (mean ± std
    over the seeds), λ fit time. ``table``: runs.csv as a DataFrame (default: read from the results dir)."""
    if not points:
        return ""
    first = points[0]
    df = read_runs(first.results_dir) if table is None else table
    dirs = {str(run_dir(p)) for p in points}
    eids = {p.choices.eval for p in points}
    seeds = set(first.seeds)
    df = df[df["run_dir"].astype(str).isin(dirs) & df["metric"].isin(eids) & df["seed"].isin(seeds)
            & (df["num_samples"] == first.num_samples)]
    if df.empty:
        return "(no finished runs)"
    order = list(dict.fromkeys(p.choices.distill for p in points))
    labels = {p.choices.distill: display_label(p.distill.get("label", p.choices.distill),
                                               str(p.solver.get("label", p.solver["name"]))) for p in points}
    spread = ", mean ± std over seeds" if len(seeds) > 1 else ""
    lines = [f"{first.choices.dataset} · {first.choices.checkpoint} · {first.choices.eval} "
             f"({len(seeds)} seed{'s' if len(seeds) > 1 else ''} × {first.num_samples} samples{spread})"]
    header = ["solver", "NFE"] + [f"{labels[d]} ({d})" if labels[d] != d else d for d in order]
    fitted = [d for d in order if df[df["distill"] == d]["fit_seconds"].notna().any()]
    header += ["λ fit [s]"] if fitted else []
    rows = []
    for (solver, nfe), g in df.groupby(["solver", "nfe"], sort=False):
        row = [solver, str(nfe)]
        for d in order:
            v = g[g["distill"] == d]["value"].astype(float)
            if v.empty:
                row.append("—")
            else:
                row.append(f"{v.mean():.3f}" if len(v) == 1 else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}")
        if fitted:
            f = g[g["distill"].isin(fitted)]["fit_seconds"].astype(float)
            row.append(f"{f.max():.1f}" if f.notna().any() else "—")
        rows.append(row)
    order_nfe = {(p.solver["name"], str(p.nfe)): i for i, p in enumerate(points)}
    rows.sort(key=lambda r: order_nfe.get((r[0], r[1]), 0))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def fmt(cells: list[str]) -> str:  # first column left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines += [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    lines.append(f"runs.csv: {Path(first.results_dir) / RUNS_CSV}")
    return "\n".join(lines)
