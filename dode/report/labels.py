"""Display names of solvers, methods and metrics in the tables and figures.

A solver's name is the ``label:`` of ``conf/solver/<name>.yaml`` (the paper's: DDIM, EDM for Heun,
DEIS-3, …); a method's is built from it the paper's way (D-DDIM, D-DDIM-Sep, Fixed-D-DDIM, LA-DDIM)
or the learned solvers' (IIA-DDIM, S4S (DDIM), …).
"""
from __future__ import annotations

from functools import lru_cache

FORM_SUFFIX = {"dode_sep": "-Sep", "dode_all": "-All", "dode": "", "dode_2": "-2"}
METRIC_LABELS = {"fd_digits": "FD-digits", "fid50k": "FID", "fid": "FID"}
LEARNED_LABELS = {"iia": "IIA-{s}", "s4s": "S4S ({s})", "s4s_fd": "S4S ({s}, features)", "s4s_alt": "S4S-Alt ({s})",
                  "s4s_alt_fd": "S4S-Alt ({s}, features)"}


def metric_label(metric: str | None) -> str:
    """FD-digits, FID, or the metric's own name."""
    return METRIC_LABELS.get(str(metric), str(metric))


@lru_cache(maxsize=None)
def solver_label(solver: str) -> str:
    """The ``label:`` of ``conf/solver/<solver>.yaml``, else the solver's name."""
    from dode.runner.config import group_option

    return str(group_option("solver", solver).get("label", solver))


def method_label(solver: str, distill: str) -> str:
    """DDIM, D-DDIM, D-DDIM-Sep, …, Fixed-D-DDIM, LA-DDIM, IIA-DDIM, S4S (DDIM), …"""
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


def reference_label(solver: str, nfe: int) -> str:
    """A reference solver run: ``"DDIM, 1000 steps (NFE 1000)"``; Heun spends 2 NFE per step but the
    last: ``"EDM (Heun), 200 steps (NFE 399)"``."""
    heun = solver == "heun"
    steps = (nfe + 1) // 2 if heun else nfe
    return f"{'EDM (Heun)' if heun else solver_label(solver)}, {steps} steps (NFE {nfe})"
