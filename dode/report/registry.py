"""The artifacts (tables and figures) of the report: one decorated function each.

    @artifact("table-foo", "Table 9: what it shows", sweep="runs-foo")
    def table_foo(runs: pd.DataFrame | None, opt: Options) -> list[Path]: ...

registers ``table-foo``: ``python -m dode.report table-foo`` renders it, ``--help`` lists it with
its line, and ``make table-foo`` (mk/paper.mk, through ``python -m dode.report query make``) runs
the make target ``sweep`` first and then renders it. ``ARTIFACTS`` keeps registration order (the
order of the modules :mod:`dode.report.render` imports, then of the functions in each).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from dode.report.options import Options

Maker = Callable[["pd.DataFrame | None", "Options"], "list[Path]"]


@dataclass(frozen=True)
class Artifact:
    """A registered table or figure: ``make(runs, opt)`` writes its files and returns them."""

    name: str
    make: Maker
    summary: str                 # one line for --help
    sweep: str | None = None     # the make target of mk/paper.mk that runs its sweeps
    computed: bool = False       # computed with the model: runs.csv is optional (None when absent)


ARTIFACTS: dict[str, Artifact] = {}


def artifact(name: str, summary: str, sweep: str | None = None, computed: bool = False) -> Callable[[Maker], Maker]:
    """Register the decorated ``make(runs, opt) -> files`` as the artifact ``name``."""
    def register(make: Maker) -> Maker:
        if name in ARTIFACTS:
            raise ValueError(f"artifact {name!r} is registered twice")
        ARTIFACTS[name] = Artifact(name, make, summary, sweep, computed)
        return make
    return register


def lookup(names: Iterable[str]) -> list[Artifact]:
    """The artifacts of ``names``; ValueError naming the unknown ones and the valid ones."""
    names = list(names)
    unknown = [n for n in names if n not in ARTIFACTS]
    if unknown:
        raise ValueError(f"unknown artifact(s) {', '.join(unknown)}; valid: {', '.join(ARTIFACTS)}")
    return [ARTIFACTS[n] for n in names]
