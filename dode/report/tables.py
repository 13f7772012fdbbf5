"""Tables: the :class:`Table` record, its Markdown, the files written, and the cell formats.

A cell is ``mean ± std`` over the evaluation seeds (sample std, ddof = 1; one seed: its value alone;
none: "—"), followed by ``(min x)``, the minimum over the seeds, where ``conf/paper.yaml``'s
``aggregate`` asks for it (:meth:`Options.with_min`); a paired difference is the mean ± std over seeds
of the per-seed difference (same noises).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd

from dode.report.data import Selection, stats
from dode.report.labels import better_text, metric_label
from dode.report.options import Options
from dode.runner.results import convention_note

NOT_GIVEN = "not given in the text"   # what the paper text we have lacks (some of its tables' numbers)


@dataclass
class Table:
    """A Markdown table with a title, a caption and notes; its long-form numbers go to CSV."""

    title: str
    header: list
    rows: list
    caption: str = ""
    notes: list = field(default_factory=list)

    def markdown(self) -> str:
        """``### title``, the caption, the table (first column left-aligned, the rest right), the notes."""
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
    """``<tables>/<stem>.md`` (the tables, one after the other) and ``<stem>.csv`` (``data``)."""
    opt.tables.mkdir(parents=True, exist_ok=True)
    md = opt.tables / f"{stem}.md"
    md.write_text("\n".join(t.markdown() for t in tables))
    csv = opt.tables / f"{stem}.csv"
    data.to_csv(csv, index=False, float_format="%.6g")
    opt.say(f"wrote {md} and {csv}")
    say_mixed_seeds(data, opt, md)
    return [md, csv]


def say_mixed_seeds(data: pd.DataFrame, opt: Options, table: Path) -> None:
    """A note when the cells of a table (``data``'s ``n``: seeds per cell) rest on different numbers of
    evaluation seeds — e.g. a one-seed run beside three-seed ones: never mixed silently."""
    if "n" not in data.columns:
        return
    counts = sorted({int(v) for v in data["n"].dropna() if int(v) > 0})
    if len(counts) > 1:
        opt.say(f"note: {table.name}: its cells rest on different numbers of evaluation seeds "
                f"({', '.join(map(str, counts))}); a one-seed cell shows its value without ± std, and means over "
                "fewer seeds are noisier")


def stem(kind: str, opt: Options, checkpoint: str | None = None) -> str:
    """The file name of an artifact: ``<kind>-<dataset>[-<checkpoint>]``."""
    return "-".join(x for x in (kind, opt.dataset, checkpoint) if x)


def fmt_pm(mean: float, std: float, n: int, digits: int = 2, minimum: float | None = None) -> str:
    """``"12.34 ± 0.56"``, with ``minimum``: ``"12.34 ± 0.56 (min 11.90)"``; one seed: ``"12.34"``;
    nothing: ``"—"``."""
    if not n or not np.isfinite(mean):
        return "—"
    if n == 1 or not np.isfinite(std):
        return f"{mean:.{digits}f}"
    text = f"{mean:.{digits}f} ± {std:.{digits}f}"
    return text if minimum is None else f"{text} (min {minimum:.{digits}f})"


def caption_common(info: Selection, seeds: Iterable, with_min: bool = False) -> str:
    """The start of every caption: the metric, the samples per seed and the seeds (and, ``with_min``,
    that cells also show the minimum over them), then what the NFE count (the rows' conventions)."""
    seeds = sorted({int(s) for s in seeds})
    text = (f"{metric_label(info.metric)} ({better_text(info.metric)}) of {info.num_samples} samples per evaluation "
            f"seed; mean ± std over {len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})")
    text += " and (min …) the minimum over them (EDM's convention)" if with_min else ""
    return f"{text}. {convention_note(info.nfe_conventions)}" if info.nfe_conventions else text


class Cell(NamedTuple):
    """A table cell of rows' ``value``: its text and the statistics it shows."""

    text: str
    mean: float
    std: float
    n: int


def minimum(values: Iterable[float]) -> float:
    """The minimum of the finite values (NaN for none)."""
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(min(v)) if v else float("nan")


def cell(d: pd.DataFrame, with_min: bool = False) -> Cell:
    """The cell of rows ``d`` (mean ± std of ``value`` over its seeds; ``with_min``: and their minimum)."""
    values = d["value"].astype(float)
    m, s, n = stats(values)
    return Cell(fmt_pm(m, s, n, minimum=minimum(values) if with_min else None), m, s, n)


def long_form(d: pd.DataFrame, keys: list[str], with_min: bool = False) -> pd.DataFrame:
    """Long-form CSV: one row per group of ``keys`` with mean, std (``with_min``: min), n, seeds."""
    rows = []
    for k, g in d.groupby(keys, dropna=False, sort=True):
        k = k if isinstance(k, tuple) else (k,)
        values = g["value"].astype(float)
        m, s, n = stats(values)
        rows.append({**dict(zip(keys, k)), "mean": m, "std": s, **({"min": minimum(values)} if with_min else {}),
                     "n": n, "seeds": " ".join(str(int(x)) for x in sorted(g["seed"].unique()))})
    return pd.DataFrame(rows)


def fit_value(g: pd.DataFrame) -> float:
    """The fit time of a cell's rows (one fit shared by its seeds), NaN for none."""
    v = g["fit_seconds"].astype(float).dropna()
    return float(v.iloc[0]) if len(v) else float("nan")


def fit_seconds(g: pd.DataFrame) -> str:
    """:func:`fit_value` as a cell: ``"2.5"`` or "—"."""
    v = fit_value(g)
    return f"{v:.1f}" if np.isfinite(v) else "—"


def paired_difference(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """``a − b`` per evaluation seed (same noises), as mean ± std over the seeds both have."""
    m = a.groupby("seed")["value"].mean().sub(b.groupby("seed")["value"].mean()).dropna()
    mean, std, n = stats(m.astype(float))
    if not n:
        return "—"
    return f"{mean:+.2f}" if n == 1 else f"{mean:+.2f} ± {std:.2f}"


def present_nfes(d: pd.DataFrame, wanted: Sequence[int]) -> list[int]:
    """The NFE of ``wanted`` that ``d`` has, in that order; all of d's when none is."""
    have = set(int(x) for x in d["nfe"].unique())
    return [n for n in wanted if n in have] or sorted(have)


def rows_of(d: pd.DataFrame, **columns) -> pd.DataFrame:
    """The rows of ``d`` whose columns equal the given values (``rows_of(d, distill="dode", nfe=5)``)."""
    keep = np.ones(len(d), dtype=bool)
    for name, value in columns.items():
        keep &= (d[name] == value).to_numpy()
    return d[keep]
