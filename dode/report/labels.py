"""Display names of solvers, methods and metrics in the tables and figures.

A solver's name is the ``label:`` of ``conf/solver/<name>.yaml`` (the paper's: DDIM, EDM for Heun,
DEIS-3, …); a method's is the ``label:`` of ``conf/distill/<name>.yaml`` with ``{solver}`` filled in
(D-DDIM, D-DDIM-Sep, Fixed-D-DDIM, LA-DDIM, IIA-DDIM, S4S (DDIM), …), as in dode-run's summary.
"""
from __future__ import annotations

from functools import lru_cache

from dode.runner.config import display_label, group_option

METRIC_LABELS = {"fd_digits": "FD-digits", "fid50k": "FID", "fid": "FID"}
# solver.grid spacings (dode.core.protocols) as the tables name them; others by their runs.csv text
GRID_LABELS = {"dmn": "DMN", "edm": "EDM", "logsnr": "logSNR", "time_uniform": "time-uniform",
               "time_quadratic": "time-quadratic", "uniform_torch": "uniform (torch)", "explicit": "explicit σ"}


def metric_label(metric: str | None) -> str:
    """FD-digits, FID, or the metric's own name."""
    return METRIC_LABELS.get(str(metric), str(metric))


@lru_cache(maxsize=None)
def higher_is_better(metric: str | None) -> bool:
    """Whether a larger value of eval config ``metric`` is better (its ``better: higher``, e.g. the CLIP
    score); distances (FD-digits, FID) are lower-is-better."""
    return str(group_option("eval", str(metric)).get("better", "lower")) == "higher"


def better_text(metric: str | None) -> str:
    """"higher is better" or "lower is better" for ``metric``."""
    return "higher is better" if higher_is_better(metric) else "lower is better"


@lru_cache(maxsize=None)
def solver_label(solver: str) -> str:
    """The ``label:`` of ``conf/solver/<solver>.yaml``, else the solver's name."""
    return str(group_option("solver", solver).get("label", solver))


@lru_cache(maxsize=None)
def method_label(solver: str, distill: str) -> str:
    """The ``label:`` of ``conf/distill/<distill>.yaml`` on ``solver`` (DDIM, D-DDIM, D-DDIM-Sep, …,
    Fixed-D-DDIM, LA-DDIM, IIA-DDIM, S4S (DDIM), …), or ``"<solver> + <distill>"`` for an unknown one."""
    s = solver_label(solver)
    template = group_option("distill", distill).get("label")
    return display_label(template, s) if template else f"{s} + {distill}"


def base_label(solver: str, grid: str = "") -> str:
    """An un-learned base solver on a grid (runs.csv's ``grid``): ``"DPM-Solver++(2M), DMN grid"``;
    the solver's label alone on the protocol's grid (``grid == ""``)."""
    return f"{solver_label(solver)}, {GRID_LABELS.get(grid, grid)} grid" if grid else solver_label(solver)


def reference_label(solver: str, nfe: int) -> str:
    """A reference solver run: ``"DDIM, 1000 steps (NFE 1000)"``; Heun spends 2 NFE per step but the
    last: ``"EDM (Heun), 200 steps (NFE 399)"``."""
    from dode.core.solvers import get_solver

    steps = len(get_solver(solver).plan(nfe, True))
    return f"{'EDM (Heun)' if solver == 'heun' else solver_label(solver)}, {steps} steps (NFE {nfe})"
