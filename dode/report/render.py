"""Render registered artifacts: runs.csv is read once, then each artifact writes its files.

Importing this module registers every artifact: the modules of ``MODULES``, imported in that order
(Figs. 3/4 and Table 1, Tables 2–4, the learned solvers, the computed Figs. 2 and 5, what the run
folders hold), which is the order of ``ARTIFACTS``: the default render order, ``--help`` and
``make paper``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from dode.report import nfe, ablations, learned, studies, folders  # this order: see above
from dode.report.data import load_runs, maybe_runs
from dode.report.options import Options
from dode.report.registry import ARTIFACTS, lookup

MODULES = (nfe, ablations, learned, studies, folders)   # each registers its artifacts when imported
__all__ = ["ARTIFACTS", "MODULES", "render"]


def render(what: Sequence[str], opt: Options) -> list[Path]:
    """Render the named artifacts (ValueError for an unknown name, FileNotFoundError without runs.csv
    unless all of them are computed with the model); returns the files written."""
    artifacts = lookup(what)
    runs = load_runs(opt.results) if any(not a.computed for a in artifacts) else maybe_runs(opt.results)
    out: list[Path] = []
    for a in artifacts:
        files = a.make(runs, opt)
        for f in files:
            if f.suffix == ".png":
                opt.say(f"wrote {f} and {f.with_suffix('.pdf').name}")
        out += files
    return out
