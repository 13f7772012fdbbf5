"""The settings the report shares with the sweeps and the runner, each read from its one place.

``conf/paper.yaml``: the paper's checkpoints per dataset and the protocol of the tables (NFE columns,
reference solvers, the 50K extrapolation, Fig. 6's columns) — mk/paper.mk reads the same file through
``python -m dode.report query make``. From dode-run's own config: the default K, B (a dataset's
``fit_batch``) and fit seed (``conf/config.yaml``), S4S's teacher (``conf/distill/s4s.yaml``) and a
checkpoint's schedule (``conf/checkpoint``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from dode.runner.config import config_dir, group_option

SolverNFE = tuple[str, int]
PARTS = ("noise", "edm")          # the paper's two parts: noise-prediction and data-prediction (EDM) models
STATISTICS = ("mean", "min")      # what a table cell can show over the evaluation seeds


@dataclass(frozen=True)
class Models:
    """A dataset's checkpoints: noise prediction (Fig. 3, Tables 2–4), data prediction (Fig. 4, Table 1)."""

    noise: str | None = None
    edm: str | None = None


@dataclass(frozen=True)
class BaseSolver:
    """An un-learned base solver row of table-learned: ``solver`` on the protocol's grid, or on the
    spacing ``grid`` (``solver.grid``; runs.csv's ``grid`` column); written ``solver`` or ``solver@grid``."""

    solver: str
    grid: str = ""

    @property
    def text(self) -> str:
        """``"dpmpp2m@dmn"``, or the solver alone on the protocol's grid."""
        return f"{self.solver}@{self.grid}" if self.grid else self.solver


def parse_base(text: str) -> BaseSolver:
    """``"unipc3_bh2"`` or ``"dpmpp2m@dmn"`` → :class:`BaseSolver`; ValueError for anything else."""
    solver, _, grid = str(text).partition("@")
    if not solver or "@" in grid or (_ and not grid) or any(c.isspace() or c == "," for c in str(text)):
        raise ValueError(f"conf/paper.yaml: learned.bases: expected SOLVER or SOLVER@GRID (e.g. dpmpp2m@dmn), "
                         f"got {text!r}")
    return BaseSolver(solver, grid)


@dataclass(frozen=True)
class Protocol:
    """``conf/paper.yaml`` (see its comments)."""

    checkpoints: dict[str, Models]
    fid_modes: Models                # the FID mode of each part (eval.mode), as the paper computed FID
    noise_solvers: tuple[str, ...]
    edm_solvers: tuple[str, ...]
    table_nfe: tuple[int, ...]
    time_samples: int
    samples_nfe: dict[str, tuple[int, ...]]
    learned_solver: str
    learned_methods: tuple[str, ...]  # table-learned's rows after the base solver (distill options)
    digits_only: tuple[str, ...]      # of those, the ones swept on the digits models only
    learned_nfe: tuple[int, ...]
    teachers: dict[str, SolverNFE]   # model role ("noise", "edm") → reference solver
    goals: dict[int, float]          # NFE → the largest ratio of the best learned method to the reference
    bases: tuple[BaseSolver, ...] = ()  # un-learned base solvers shown after the learned solver's own row
    extra_batches: dict[str, tuple[int, ...]] = field(default_factory=dict)  # method → more B (a row each)
    aggregate: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)  # dataset → part → statistics

    def statistics(self, dataset: str, part: str) -> tuple[str, ...]:
        """What a table cell of ``dataset``'s ``part`` (noise, edm) shows over the seeds: ``("mean",)``
        (mean ± std) or ``("mean", "min")`` (and the minimum); ``aggregate`` of conf/paper.yaml."""
        return self.aggregate.get(dataset, {}).get(part, ("mean",))

    def learned_for(self, dataset: str) -> tuple[str, ...]:
        """The learned methods table-learned's sweep runs on ``dataset``."""
        return tuple(m for m in self.learned_methods if dataset == "digits" or m not in self.digits_only)

    def extra_batches_for(self, dataset: str) -> tuple[tuple[str, int], ...]:
        """(method, B) of the extra rows table-learned's sweep runs on ``dataset``: the methods of
        ``learned.extra_batches`` that are swept there, each also fitted on B noises."""
        swept = self.learned_for(dataset)
        return tuple((m, b) for m, bs in self.extra_batches.items() if m in swept for b in bs)

    def models(self, dataset: str) -> Models:
        """The paper's checkpoints of ``dataset`` (none for an unknown one)."""
        return self.checkpoints.get(dataset, Models())


def parse_solver_nfe(text: str) -> SolverNFE:
    """``"heun:399"`` → ``("heun", 399)``; ValueError unless SOLVER:NFE."""
    solver, sep, nfe = str(text).partition(":")
    if not sep or not solver or not nfe.isdigit():
        raise ValueError(f"expected SOLVER:NFE (e.g. heun:399), got {text!r}")
    return solver, int(nfe)


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def parse_extra_batches(node: dict | None, methods: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """conf/paper.yaml's ``learned.extra_batches`` (method → a B or a list of B), checked: each method
    is one of ``learned.methods`` and each B a positive integer; ValueError naming the entry."""
    out = {}
    for method, batches in (node or {}).items():
        where = f"conf/paper.yaml: learned.extra_batches.{method}"
        if method not in methods:
            raise ValueError(f"{where}: {method!r} is not in learned.methods ({', '.join(methods)})")
        batches = [batches] if not isinstance(batches, list) else batches
        if not batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches):
            raise ValueError(f"{where} = {batches}: expected a positive integer B or a list of them, e.g. [400]")
        out[str(method)] = tuple(batches)
    return out


def parse_aggregate(node: dict | None) -> dict[str, dict[str, tuple[str, ...]]]:
    """conf/paper.yaml's ``aggregate`` (dataset → part → list of statistics), checked: parts are
    noise and edm, statistics mean and min, and mean is always shown; ValueError naming the entry."""
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for dataset, parts in (node or {}).items():
        out[str(dataset)] = {}
        for part, stats in (parts or {}).items():
            stats = tuple(str(x) for x in ([stats] if isinstance(stats, str) else stats))
            where = f"conf/paper.yaml: aggregate.{dataset}.{part}"
            if part not in PARTS:
                raise ValueError(f"{where}: unknown part {part!r}; valid: {', '.join(PARTS)}")
            bad = [x for x in stats if x not in STATISTICS]
            if bad or "mean" not in stats:
                raise ValueError(f"{where} = {list(stats)}: a list of {', '.join(STATISTICS)} with mean in it "
                                 "(tables always show mean ± std), e.g. [mean] or [mean, min]")
            out[str(dataset)][str(part)] = stats
    return out


@lru_cache(maxsize=None)
def protocol() -> Protocol:
    """``conf/paper.yaml`` as a :class:`Protocol` (read once)."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(OmegaConf.load(config_dir() / "paper.yaml"), resolve=True)
    learned = c["learned"]
    return Protocol(
        checkpoints={d: Models(m.get("noise"), m.get("edm")) for d, m in c["checkpoints"].items()},
        fid_modes=Models(c["fid_modes"]["noise"], c["fid_modes"]["edm"]),
        noise_solvers=tuple(c["noise_solvers"]), edm_solvers=tuple(c["edm_solvers"]),
        table_nfe=_ints(c["table_nfe"]), time_samples=int(c["time_samples"]),
        samples_nfe={s: _ints(v) for s, v in c["samples_nfe"].items()},
        learned_solver=str(learned["solver"]), learned_methods=tuple(learned["methods"]),
        digits_only=tuple(learned["digits_only"]), learned_nfe=_ints(learned["nfe"]),
        teachers={role: parse_solver_nfe(v) for role, v in learned["teachers"].items()},
        goals={int(n): float(r) for n, r in learned["goals"].items()},
        bases=tuple(parse_base(b) for b in learned.get("bases") or ()),
        extra_batches=parse_extra_batches(learned.get("extra_batches"), tuple(learned["methods"])),
        aggregate=parse_aggregate(c.get("aggregate")))


@lru_cache(maxsize=None)
def runner_default(key: str, dataset: str) -> Any:
    """dode-run's default of a top-level key of ``conf/config.yaml`` for ``dataset`` (e.g. ``batch``:
    the dataset's ``fit_batch``, else 100)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(config_dir() / "config.yaml")
    cfg.dataset = group_option("dataset", dataset)
    return cfg[key]


def s4s_teacher() -> SolverNFE:
    """S4S's teacher solver and its NFE (``conf/distill/s4s.yaml``)."""
    s4s = group_option("distill", "s4s")
    return str(s4s["teacher"]), int(s4s["teacher_nfe"])


def checkpoint_config(name: str) -> dict:
    """``conf/checkpoint/<name>.yaml`` as a dict ({} when unknown)."""
    return group_option("checkpoint", name)


def timesteps_of(checkpoint: str) -> int | None:
    """T of a discrete-time checkpoint (K·N ≤ T for its teacher), else None."""
    sched = checkpoint_config(checkpoint).get("schedule") or {}
    return int(sched["T"]) if isinstance(sched, dict) and sched.get("T") else None
