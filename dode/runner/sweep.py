"""The status of a sweep (``dode-run -m …``): one combined summary of all its jobs and its exit status.

Every job of a sweep ends with a :class:`JobOutcome` — finished (its summary table), a user error
or a crash (a one-line reason) — written as ``<status>/job-<num>.json``, where ``<status>`` is a
folder the sweep's process made in the sweep folder (``$DODE_SWEEP_STATUS``, inherited by the jobs of any launcher that
keeps the environment: Hydra's basic launcher, submitit's local and SLURM executors). The Hydra
callback :class:`SweepStatus` (``hydra.callbacks`` in ``conf/config.yaml``) makes that folder when
the sweep starts and, when it ends, prints every outcome in job order and removes it (and the empty
folder named like a pattern, ``.submitit/%j``, that submitit's local executor leaves);
:data:`LAST` then holds the exit status of the sweep: 0 when every job finished, 2 when only user
errors failed, 1 when a job crashed.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STATUS_ENV = "DODE_SWEEP_STATUS"
FINISHED, USER_ERROR, CRASHED = "finished", "user error", "crashed"


@dataclass(frozen=True)
class JobOutcome:
    """How one job of a sweep ended: ``status`` (finished, user error, crashed), its overrides, its
    summary table (finished) or one-line reason (failed)."""

    num: int
    overrides: tuple[str, ...]
    status: str
    text: str


@dataclass
class SweepResult:
    """The outcomes of the last sweep of this process and its exit status."""

    outcomes: list[JobOutcome]

    @property
    def exit_status(self) -> int:
        failed = {o.status for o in self.outcomes if o.status != FINISHED}
        return 0 if not failed else (1 if CRASHED in failed else 2)


LAST: SweepResult | None = None


def save_outcome(outcome: JobOutcome) -> None:
    """Write ``outcome`` into the sweep's status folder (nothing outside a sweep)."""
    folder = os.environ.get(STATUS_ENV)
    if not folder or not Path(folder).is_dir():
        return
    path = Path(folder) / f"job-{outcome.num:05d}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(outcome)))
    os.replace(tmp, path)


def read_outcomes(folder: Path) -> list[JobOutcome]:
    """The outcomes in ``folder``, in job order."""
    out = []
    for p in sorted(folder.glob("job-*.json")):
        d = json.loads(p.read_text())
        out.append(JobOutcome(int(d["num"]), tuple(d["overrides"]), str(d["status"]), str(d["text"])))
    return out


def format_outcomes(outcomes: list[JobOutcome]) -> str:
    """The combined summary: the overrides every job shares, a line per job (``[ok]``/``[FAILED]``
    and its own overrides), the summary
    table of each finished job indented below it, the reason of each failed one; then the totals."""
    lines = ["", "=" * 30 + " sweep summary " + "=" * 30]
    common = set.intersection(*(set(o.overrides) for o in outcomes)) if len(outcomes) > 1 else set()
    if common:
        lines.append(f"every job: {' '.join(o for o in outcomes[0].overrides if o in common)}")
    for o in outcomes:
        mark = "ok" if o.status == FINISHED else f"FAILED ({o.status})"
        own = [x for x in o.overrides if x not in common]
        lines.append(f"job {o.num} [{mark}] {' '.join(own) or '(no overrides)'}")
        lines += [f"    {line}" for line in o.text.splitlines()]
    failed = [o for o in outcomes if o.status != FINISHED]
    total = f"{len(outcomes)} job{'s' if len(outcomes) != 1 else ''}"
    lines.append(f"{total}: {len(outcomes) - len(failed)} finished, {len(failed)} failed"
                 + ("; fix the failed ones and rerun the same command: finished work is skipped" if failed else ""))
    return "\n".join(lines)


def remove_pattern_folder(pattern: str | None) -> None:
    """submitit's local executor (``hydra/launcher=submitit_local``) makes the folder of its jobs'
    logs as the pattern itself (``<sweep dir>/.submitit/%j``, literally) beside the jobs' own folders,
    and leaves it empty: remove it, and each parent whose name is a pattern too, when empty."""
    if not pattern or "%" not in str(pattern):
        return
    folder = Path(str(pattern))
    while "%" in folder.name and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object  # type: ignore[misc,assignment]


class SweepStatus(Callback):
    """Hydra callback: the status folder of a sweep and its combined summary (module docstring)."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        global LAST
        LAST = None
        try:  # in the sweep folder (shared with SLURM jobs), else a temporary folder of this machine
            sweeps = Path(str(config.hydra.sweep.dir)).resolve()
            sweeps.mkdir(parents=True, exist_ok=True)
            folder = tempfile.mkdtemp(prefix=".dode-status-", dir=sweeps)
        except OSError:
            folder = tempfile.mkdtemp(prefix="dode-sweep-")
        os.environ[STATUS_ENV] = folder

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        global LAST
        remove_pattern_folder(config.hydra.launcher.get("submitit_folder"))
        folder = os.environ.pop(STATUS_ENV, None)
        if not folder:
            return
        outcomes = read_outcomes(Path(folder))
        shutil.rmtree(folder, ignore_errors=True)
        LAST = SweepResult(outcomes)
        sys.stdout.flush()
        print(format_outcomes(outcomes), file=sys.stderr if LAST.exit_status else sys.stdout)
        sys.stderr.flush()
