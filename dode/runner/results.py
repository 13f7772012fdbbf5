"""``<results_dir>/runs.csv`` — one row per (point, seed, metric) — and the summary table of a job.

runs.csv is an index: the run folders' metric files are the source of truth. It is read strictly
(:func:`parse_runs`): a line with the wrong number of fields, a number that is not one, or a row
cut off at the end of the file is reported with the file, the line and the fix, and never used;
:func:`rebuild_runs` (``dode-report rebuild-runs RESULTS_DIR``) writes it anew from the run folders.

``nfe_convention`` says what the row's ``nfe`` counts (:data:`NFE_CONVENTIONS`): ``network`` (no
guidance: one NFE = one network evaluation of the batch) or ``guided`` (classifier-free guidance: one
NFE = one evaluation of D_w, i.e. one network call on the doubled batch ``[x; x]``). Files written
before the column existed read with it filled from each row's run folder (``run.json``).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from pathlib import Path
from typing import Any, Mapping

from dode.errors import UserError
from dode.runner.config import display_label
from dode.runner.points import Choices, Point
from dode.runner.precision import precision_spec
from dode.runner.store import file_lock, read_json, run_dir, write_atomic

RUNS_CSV = "runs.csv"
KEY_COLUMNS = ["run_dir", "seed", "num_samples", "metric"]
INT_COLUMNS = ["nfe", "scale", "batch", "seed", "num_samples", "fit_seed"]
COLUMNS = ["dataset", "checkpoint", "solver", "distill", "nfe", "scale", "batch", "seed", "num_samples",
           "metric", "value", "fit_seconds", "sample_seconds", "metric_seconds", "fit_seed", "run_dir", "mode",
           "nfe_convention", "grid", "guidance", "precision"]
# what the `nfe` of a row counts; a paper counting network passes reports 2 × a `guided` row's nfe
NFE_CONVENTIONS = {
    "network": "one NFE = one network evaluation of the batch (no guidance)",
    "guided": "one NFE = one guided evaluation D_w = D(∅) + w·(D(c) − D(∅)), one network call on the doubled "
              "batch [x; x] (two network passes per sample)",
}
# text columns newer than some files: their value when unknown (the defaults: paper grid, no guidance, fp32)
TEXT_DEFAULTS = {"grid": "", "guidance": "", "precision": ""}


class CorruptRunsCsv(UserError, ValueError):
    """runs.csv holds a line that is not a row of it (the message names the file, the line and the fix)."""


def fit_seconds_of(correction: Any) -> float | None:
    """The ``fit_seconds`` of a correction's provenance (None for the base solver)."""
    return (getattr(correction, "provenance", None) or {}).get("fit_seconds") if correction is not None else None


def nfe_convention(checkpoint: Mapping) -> str:
    """The NFE convention of runs of a checkpoint config: ``guided`` when it sets ``guidance.scale``."""
    return "guided" if (checkpoint.get("guidance") or {}).get("scale") is not None else "network"


def grid_text(solver: dict) -> str:
    """The ``grid`` column: how a run's solver grid differs from the paper protocol's — ``""`` for
    the default (``solver.protocol: paper``, no ``grid``/``endpoint``/``inner``), else the spacing of
    ``solver.grid`` (``dmn``, ``edm``, ``logsnr``, …) or ``explicit`` for a list of σ, followed by
    ``protocol=…``, ``endpoint=…``, ``inner=…`` where those are set (``"dmn"``, ``"protocol=dode"``)."""
    g = solver.get("grid")
    parts = ["explicit" if isinstance(g, (list, tuple)) else str(g)] if g is not None else []
    if str(solver.get("protocol") or "paper") != "paper":
        parts.append(f"protocol={solver['protocol']}")
    parts += [f"{k}={solver[k]}" for k in ("endpoint", "inner") if solver.get(k) is not None]
    return " ".join(parts)


def guidance_text(checkpoint: Mapping) -> str:
    """The ``guidance`` column: the classifier-free guidance scale w of a checkpoint config (``"7.5"``),
    ``""`` without guidance."""
    scale = (checkpoint.get("guidance") or {}).get("scale")
    return "" if scale is None else f"{float(scale):g}"


def precision_text(speed: Mapping) -> str:
    """The ``precision`` column: a run's network options that are not their defaults
    (:mod:`dode.runner.precision`; any of them may change images), ``""`` for the defaults (fp32, no
    compile, no channels-last; :func:`~dode.runner.precision.precision_spec`), else e.g. ``"fp16"``,
    ``"bf16 compile"``, ``"channels_last"``."""
    return " ".join(str(v) if k == "precision" else k for k, v in precision_spec(speed).items())


# the text columns a run folder's point determines (filled from run.json for files older than them)
FOLDER_TEXT = {"grid": lambda point: grid_text(point.get("solver") or {}),
               "guidance": lambda point: guidance_text(point.get("checkpoint") or {}),
               "precision": precision_text}


def csv_row(point: Point, folder: Path, seed: int, result: dict, fit_seconds: float | None) -> dict:
    """The runs.csv row of one seed of ``point`` (K, B and the fit seed only for fitted corrections)."""
    c = point.choices
    fits = point.fits
    return {
        "dataset": c.dataset, "checkpoint": c.checkpoint, "solver": point.solver["name"],
        "distill": c.distill, "nfe": point.nfe, "scale": point.scale if fits else None,
        "batch": point.batch if fits else None, "seed": int(seed), "num_samples": point.num_samples,
        "metric": c.eval, "value": result["value"],
        "fit_seconds": fit_seconds,
        "sample_seconds": result.get("sample_seconds"), "metric_seconds": result.get("metric_seconds"),
        "fit_seed": point.fit_seed if fits else None, "run_dir": str(folder),
        "mode": result.get("mode"),  # the FID mode (clean, legacy_tensorflow, legacy_pytorch); none for FD-digits
        "nfe_convention": nfe_convention(point.checkpoint),
        "grid": grid_text(point.solver),
        "guidance": guidance_text(point.checkpoint),
        "precision": precision_text(point.speed()),
    }


def _rebuild_hint(path: Path) -> str:
    return (f"runs.csv only indexes the run folders' metric files: rebuild it with "
            f"`dode-report rebuild-runs {path.parent}` (or delete that line)")


def _number(text: str, integer: bool) -> bool:
    """Whether a field is empty or a number (an integer for ``integer``)."""
    if text == "":
        return True
    try:
        v = float(text)
    except ValueError:
        return False
    return not integer or (math.isfinite(v) and v == int(v))


def parse_runs(path: Path) -> None:
    """Check every line of runs.csv: the header names the key columns, every row has as many fields
    as the header and numbers where numbers belong, and the file ends with a newline (dode-run
    always writes one: a file without it was cut off). A :class:`CorruptRunsCsv` names the first bad line."""
    text = path.read_text(errors="replace")
    lines = list(csv.reader(io.StringIO(text)))
    header = lines[0] if lines else []
    missing = [c for c in [*KEY_COLUMNS, "value"] if c not in header]
    if missing:
        raise CorruptRunsCsv(f"{path}, line 1: the header lacks the column(s) {', '.join(missing)} "
                             f"(got {','.join(header)[:80]!r}); {_rebuild_hint(path)}")
    numeric = {i: name in INT_COLUMNS for i, name in enumerate(header) if name in INT_COLUMNS or name == "value"}
    conv = header.index("nfe_convention") if "nfe_convention" in header else None
    truncated_end = not text.endswith("\n")
    for n, fields in enumerate(lines[1:], start=2):
        last = n == len(lines)
        if not fields and not last:
            continue  # a blank line (pandas skips it too)
        if last and truncated_end:
            bad = "the last row is cut off (the file ends mid-row)"
        elif len(fields) != len(header):
            bad = f"{len(fields)} fields where the header has {len(header)}"
        else:
            wrong = [header[i] for i, integer in numeric.items() if not _number(fields[i], integer)]
            bad = f"not a number in column(s) {', '.join(wrong)}" if wrong else None
            if not bad and conv is not None and fields[conv] not in ("", *NFE_CONVENTIONS):
                bad = f"nfe_convention {fields[conv]!r} is none of {', '.join(NFE_CONVENTIONS)}"
        if bad:
            raise CorruptRunsCsv(f"{path}, line {n}: {bad}: {','.join(fields)[:80]!r}; {_rebuild_hint(path)}")


def check_runs(results_dir: str | Path) -> None:
    """Before any work: ``<results_dir>/runs.csv``, when there is one, is readable (:func:`parse_runs`)."""
    path = Path(results_dir) / RUNS_CSV
    if path.is_file() and path.stat().st_size > 0:
        parse_runs(path)


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
            parse_runs(path)
            old = pd.read_csv(path)
            keys = set(new[KEY_COLUMNS].astype(str).itertuples(index=False, name=None))
            keep = ~pd.Series(list(old[KEY_COLUMNS].astype(str).itertuples(index=False, name=None))).isin(keys).values
            both = [d for d in (old[keep], new) if len(d)]
            table = pd.concat(both, ignore_index=True)
        else:
            table = new
        _write_table(path, table)


def _write_table(path: Path, table: Any) -> None:
    import pandas as pd

    for col in INT_COLUMNS:  # nullable integers: the base solver has no K, B or fit seed
        if col in table.columns:
            table[col] = pd.to_numeric(table[col]).astype("Int64")
    cols = [c for c in COLUMNS if c in table.columns] + [c for c in table.columns if c not in COLUMNS]
    buf = io.StringIO()
    table[cols].to_csv(buf, index=False)
    write_atomic(path, buf.getvalue().encode())


def read_runs(results_dir: str | Path) -> Any:
    """runs.csv of ``results_dir`` as a DataFrame (empty, with :data:`COLUMNS`, when there is none);
    a corrupt file is a :class:`CorruptRunsCsv`. A file older than a text column of
    :data:`TEXT_DEFAULTS` reads it from each row's run.json, else that column's default (``grid``: ``""``,
    the paper protocol; ``guidance``: ``""``, none; ``precision``: ``""``, fp32)."""
    import pandas as pd

    path = Path(results_dir) / RUNS_CSV
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    check_runs(results_dir)
    df = pd.read_csv(path, dtype={k: str for k in TEXT_DEFAULTS})
    return with_folder_columns(df, Path(results_dir))


def _folder_point(run_dir: str, results_dir: Path) -> dict | None:
    """The point of a run folder (as runs.csv names it, or its tail under ``results_dir``) from its
    run.json; None when no run.json says."""
    parts = Path(run_dir).parts
    for folder in [Path(run_dir)] + [results_dir.joinpath(*parts[k:]) for k in range(len(parts))]:
        info = read_json(folder / "run.json") if (folder / "run.json").is_file() else None
        point = info.get("point") if isinstance(info, dict) else None
        if isinstance(point, dict) and isinstance(point.get("checkpoint"), dict):
            return point
    return None


def with_folder_columns(table: Any, results_dir: Path) -> Any:
    """``table`` with the columns newer than its file filled from each row's run folder: an empty
    ``nfe_convention`` (None when the folder is gone: unknown) and the :data:`FOLDER_TEXT` columns the
    file lacks (:data:`TEXT_DEFAULTS` when the folder is gone)."""
    missing = [c for c in FOLDER_TEXT if c not in table.columns]
    if "nfe_convention" not in table.columns:
        table["nfe_convention"] = None
    table["nfe_convention"] = table["nfe_convention"].astype(object)
    empty = table["nfe_convention"].isna()
    wanted = table["run_dir"].astype(str)[empty | bool(missing)].unique()
    points = {d: _folder_point(d, results_dir) for d in wanted}
    table.loc[empty, "nfe_convention"] = [None if points[d] is None else nfe_convention(points[d]["checkpoint"])
                                          for d in table.loc[empty, "run_dir"].astype(str)]
    for col in missing:
        table[col] = [TEXT_DEFAULTS[col] if points[d] is None else FOLDER_TEXT[col](points[d])
                      for d in table["run_dir"].astype(str)]
    for col, default in TEXT_DEFAULTS.items():
        table[col] = table[col].fillna(default)
    return table


def convention_note(conventions: Any) -> str:
    """The line a table carries about what its NFE count: each convention of its rows (``conventions``:
    their ``nfe_convention`` values; empty ones are rows whose run folder is gone)."""
    found = sorted({str(c) for c in conventions if isinstance(c, str) and c})
    unknown = any(not (isinstance(c, str) and c) for c in conventions)
    text = "; ".join(f"{c}: {NFE_CONVENTIONS[c]}" for c in found)
    return "NFE — " + (text or "convention not recorded") + ("; some rows: not recorded" if unknown and found else "")


def folder_rows(results_dir: Path, folder: Path) -> list[dict]:
    """The runs.csv rows of one run folder, from its run.json, lambdas.json and metric files
    (for a key written by several metric files, the newest)."""
    info = read_json(folder / "run.json")
    if not isinstance(info, dict) or not isinstance(info.get("point"), dict):
        return []
    d = info["point"]
    point = Point(**{**d, "choices": Choices(**d["choices"]), "seeds": tuple(d["seeds"])})
    lam = read_json(folder / "lambdas.json") if point.method.fit is not None else None
    fit_seconds = (lam.get("provenance") or {}).get("fit_seconds") if isinstance(lam, dict) else None
    rows: dict[tuple, tuple[int, dict]] = {}
    for path in folder.glob("seed-*/metrics/*.json"):
        result = read_json(path)
        if not isinstance(result, dict) or not {"value", "seed", "num_samples", "metric"} <= set(result):
            continue
        p = dataclasses.replace(point, num_samples=int(result["num_samples"]),
                                choices=dataclasses.replace(point.choices, eval=str(result["metric"])))
        row = csv_row(p, Path(results_dir) / folder.relative_to(results_dir), int(result["seed"]), result, fit_seconds)
        key = tuple(str(row[k]) for k in KEY_COLUMNS)
        mtime = path.stat().st_mtime_ns
        if key not in rows or rows[key][0] < mtime:
            rows[key] = (mtime, row)
    return [row for _, row in rows.values()]


def rebuild_runs(results_dir: str | Path) -> int:
    """Write ``<results_dir>/runs.csv`` anew from the run folders (``<dataset>/<checkpoint>/<run>/``)
    and their metric files, which are the source of truth; returns the number of rows. The rows are
    those dode-run recorded (in run-folder, seed order)."""
    import pandas as pd

    results = Path(results_dir)
    if not results.is_dir():
        raise UserError(f"{results} is not a folder (give the results_dir of dode-run, e.g. results)")
    rows = [r for f in sorted(p.parent for p in results.glob("*/*/*/run.json")) for r in folder_rows(results, f)]
    rows.sort(key=lambda r: (r["run_dir"], r["seed"], r["num_samples"], r["metric"]))
    path = results / RUNS_CSV
    with file_lock(path.with_name(f".{RUNS_CSV}.lock")):
        _write_table(path, pd.DataFrame(rows, columns=COLUMNS))
    return len(rows)


def job_rows(points: list[Point], table: Any = None) -> Any:
    """The rows of runs.csv that ``points`` wrote (their run folders, metric, evaluation seeds and
    samples per seed). ``table``: runs.csv as a DataFrame (default: read from the results dir)."""
    first = points[0]
    df = read_runs(first.results_dir) if table is None else table
    dirs = {str(run_dir(p)) for p in points}
    eids = {p.choices.eval for p in points}
    return df[df["run_dir"].astype(str).isin(dirs) & df["metric"].isin(eids) & df["seed"].isin(set(first.seeds))
              & (df["num_samples"] == first.num_samples)]


def _pm(values: Any, sign: str = "") -> str:
    """``mean ± std`` (sample std) of the values, the value alone for one."""
    v = values.astype(float)
    return f"{v.mean():{sign}.3f}" if len(v) == 1 else f"{v.mean():{sign}.3f} ± {v.std(ddof=1):.3f}"


def summary(points: list[Point], table: Any = None) -> str:
    """A readable table of the points' rows in runs.csv (lower is better; CLIP score: higher): solver, NFE, base vs
    correction (mean ± std over the seeds), their paired difference (correction − base per seed, both
    on the same noises; mean ± std over the seeds), λ fit time. ``table``: as for :func:`job_rows`."""
    if not points:
        return ""
    first = points[0]
    df = job_rows(points, table)
    if df.empty:
        return "(no finished runs)"
    seeds = set(first.seeds)
    order = list(dict.fromkeys(p.choices.distill for p in points))
    labels = {p.choices.distill: display_label(p.distill.get("label", p.choices.distill),
                                               str(p.solver.get("label", p.solver["name"]))) for p in points}
    spread = ", mean ± std over seeds" if len(seeds) > 1 else ""
    lines = [f"{first.choices.dataset} · {first.choices.checkpoint} · {first.choices.eval} "
             f"({len(seeds)} seed{'s' if len(seeds) > 1 else ''} × {first.num_samples} samples{spread}; "
             f"{'higher' if first.metric_name() == 'clip_score' else 'lower'} is better)"]
    header = ["solver", "NFE"] + [f"{labels[d]} ({d})" if labels[d] != d else d for d in order]
    learned = [d for d in order if d != "none"]
    paired = "none" in order and len(learned) == 1
    header += [f"{labels[learned[0]]} − {labels['none']}"] if paired else []
    fitted = [d for d in order if df[df["distill"] == d]["fit_seconds"].notna().any()]
    header += ["λ fit [s]"] if fitted else []
    rows = []
    for (solver, nfe), g in df.groupby(["solver", "nfe"], sort=False):
        row = [solver, str(nfe)]
        for d in order:
            v = g[g["distill"] == d]["value"]
            row.append("—" if v.empty else _pm(v))
        if paired:
            per_seed = [g[g["distill"] == d].groupby("seed")["value"].mean() for d in (learned[0], "none")]
            diff = per_seed[0].sub(per_seed[1]).dropna()
            row.append("—" if diff.empty else _pm(diff, "+"))
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
    if paired:
        lines.append(f"{header[2 + len(order)]}: the difference per seed (both on the same noises), "
                     f"{'mean ± std over seeds' if len(seeds) > 1 else 'one seed'}")
    lines.append(convention_note(df["nfe_convention"]))
    lines.append(f"runs.csv: {Path(first.results_dir) / RUNS_CSV}")
    return "\n".join(lines)
