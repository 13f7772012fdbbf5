"""``dode-run``: the runner's command line, then the figure of the job.

The one module above both :mod:`dode.runner` and :mod:`dode.report`: a single run (not a sweep:
``dode-report`` draws those) ends with its summary table and the line naming its figure
(:func:`dode.report.job.figure_line`). ``python -m dode.runner`` is the runner alone (what torchrun
and SLURM tasks start).
"""
from __future__ import annotations


def figure_line(points: list) -> str:
    """:func:`dode.report.job.figure_line`, imported only once a job has run (``dode-run --help`` and
    a mistaken command line never load the report's plotting)."""
    from dode.report.job import figure_line as line

    return line(points)


def run() -> None:
    """The ``dode-run`` console script."""
    from dode.runner.cli import main

    main(after_run=figure_line)


if __name__ == "__main__":
    run()
