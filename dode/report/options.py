"""What one ``python -m dode.report`` call renders: folders, dataset, models and row selection."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from dode.report.protocol import SolverNFE, protocol, runner_default


def samples_nfe_of(ddim: Sequence[int] | None = None, heun: Sequence[int] | None = None) -> dict[str, tuple[int, ...]]:
    """Fig. 6's NFE per solver: the given DDIM and Heun columns, else conf/paper.yaml's; DDIM's columns
    also serve Euler."""
    nfe = protocol().samples_nfe
    columns = tuple(ddim or nfe["ddim"])
    return {"ddim": columns, "euler": columns, "heun": tuple(heun or nfe["heun"])}


@dataclass
class Options:
    """The options of a render; None defaults are resolved from conf/paper.yaml (checkpoints per
    dataset) and dode-run's conf/config.yaml (K, B — a dataset's ``fit_batch`` — and the fit seed)."""

    results: Path = Path("results")
    dataset: str = "digits"
    checkpoint: str | None = None       # noise-prediction model (Fig. 3, Tables 2–4)
    edm_checkpoint: str | None = None   # data-prediction model (Fig. 4, Table 1, Fig. 6)
    tables: Path | None = None
    figures: Path | None = None
    metric: str | None = None
    num_samples: int | None = None
    scale: int | None = None
    batch: int | None = None
    fit_seed: int | None = None
    nfe: Sequence[int] | None = None    # NFE columns (None: the protocol's table_nfe, table-learned its own)
    learned_solver: str = field(default_factory=lambda: protocol().learned_solver)  # table-learned's base
    teachers: dict[str, SolverNFE] = field(default_factory=lambda: dict(protocol().teachers))
    device: str = "auto"
    threads: int = 1                     # CPU threads of the computed figures (0: torch's default)
    steps: int = 1000                    # the long DDIM run of Figs. 2 and 5
    cosine_batch: int = 16
    trajectory_batch: int = 64
    trajectory_nfe: int = 10
    sample_grid: int = 16                # images per cell of Fig. 6
    samples_nfe: dict[str, tuple[int, ...]] = field(default_factory=samples_nfe_of)
    min_over_seeds: bool | None = None   # cells also show the minimum over seeds (None: conf/paper.yaml's aggregate)
    quiet: bool = False

    def __post_init__(self) -> None:
        self.results = Path(self.results)
        self.tables = Path(self.tables) if self.tables else self.results / "tables"
        self.figures = Path(self.figures) if self.figures else self.results / "figures"
        models = protocol().models(self.dataset)
        self.checkpoint = self.checkpoint or models.noise
        self.edm_checkpoint = self.edm_checkpoint or models.edm
        for key in ("scale", "batch", "fit_seed"):
            if getattr(self, key) is None:
                setattr(self, key, int(runner_default(key, self.dataset)))

    def with_min(self, checkpoint: str | None) -> bool:
        """Whether the tables of ``checkpoint`` show the minimum over seeds beside mean ± std: the
        ``min_over_seeds`` option, else conf/paper.yaml's ``aggregate`` of its part (edm for
        ``edm_checkpoint``, noise otherwise)."""
        if self.min_over_seeds is not None:
            return self.min_over_seeds
        part = "edm" if checkpoint is not None and checkpoint == self.edm_checkpoint else "noise"
        return "min" in protocol().statistics(self.dataset, part)

    def say(self, msg: str) -> None:
        """Print a progress line unless ``quiet``."""
        if not self.quiet:
            print(msg, flush=True)
