"""The figure of one ``dode-run`` job: its metric vs NFE, the base solver next to its correction.

Drawn by :func:`dode.report.figures.fid_vs_nfe` (the plot of ``fig-fid-nfe``) from the rows the
job's points wrote in runs.csv (:func:`dode.runner.results.job_rows`: only this job's run folders,
seeds and samples per seed), as ``<results_dir>/figures/run-<dataset>-<checkpoint>-<solver>-<distill>-<hash8>.png``
(and ``.pdf``); ``hash8`` names the job's run folders, seeds and metric, so a rerun of the same
command rewrites its own figure and another job never overwrites it.
"""
from __future__ import annotations

from pathlib import Path

from dode.report import figures
from dode.report.data import Selection, conventions
from dode.report.labels import method_label, metric_label
from dode.report.tables import caption_common, long_form
from dode.runner.points import Point
from dode.runner.results import job_rows
from dode.runner.store import run_dir, safe_name, short_hash


def learned_of(points: list[Point]) -> str:
    """The job's correction (its distill option), ``none`` for a run of the base solver alone."""
    return next((p.choices.distill for p in points if p.choices.distill != "none"), "none")


def figure_stem(points: list[Point]) -> Path:
    """``<results_dir>/figures/run-<dataset>-<checkpoint>-<solver>-<distill>-<hash8>`` of a job's points."""
    first = points[0]
    c = first.choices
    learned = learned_of(points)
    key = short_hash({"runs": sorted(str(run_dir(p)) for p in points), "seeds": sorted(first.seeds),
                      "num_samples": first.num_samples, "eval": sorted({p.choices.eval for p in points})})
    name = "-".join(safe_name(x) for x in ("run", c.dataset, c.checkpoint, first.solver["name"], learned, key))
    return Path(first.results_dir) / "figures" / name


def job_figure(points: list[Point]) -> Path | None:
    """Write the job's figure (metric vs NFE, mean ± std over its seeds); its PNG, or None when the
    job has no finished rows."""
    d = job_rows(points)
    if d.empty:
        return None
    first = points[0]
    c = first.choices
    solver, learned = first.solver["name"], learned_of(points)
    metric = str(d["metric"].iloc[0])
    long = long_form(d, ["solver", "distill", "nfe"])
    caption = caption_common(Selection(metric, first.num_samples, conventions(d)), d["seed"].unique())
    title = f"{metric_label(metric)} vs NFE — {c.dataset} · {c.checkpoint}"
    files = figures.fid_vs_nfe(long, [solver], title, caption, metric_label(metric), figure_stem(points),
                               learned=learned, variant=method_label(solver, learned))
    return files[0]


def figure_line(points: list[Point]) -> str:
    """The line ``dode-run`` prints under its summary: where the job's figure is."""
    png = job_figure(points)
    if png is None:
        return "figure: none (no finished runs)"
    return f"figure: {png} (and {png.with_suffix('.pdf').name}); all tables and figures of runs.csv: dode-report"
