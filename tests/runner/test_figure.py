"""``dode-run`` (:mod:`dode.cli`) ends a single run with the figure of its job: metric vs NFE, base
vs correction, mean ± std over the job's seeds, drawn from the job's own rows of runs.csv."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from dode import cli
from dode.report import figures
from dode.runner.results import read_runs
from runner_helpers import BASE

ARGS = [b for b in BASE if not b.startswith(("nfe=", "seeds="))]


def dode_run(monkeypatch, conf, results, *args: str) -> int:
    """``dode-run`` (the console script's function) on the test model; its exit status."""
    flags = [a for a in args if a.startswith("-")]  # Hydra's flags (-m) before the overrides
    monkeypatch.setattr(sys, "argv", ["dode-run", *flags, f"hydra.searchpath=[file://{conf}]", f"results_dir={results}",
                                      *ARGS, *(a for a in args if a not in flags)])
    try:
        cli.run()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture
def plotted(monkeypatch):
    """The numbers each figure was drawn from (figures.fid_vs_nfe's ``long`` and ``learned``)."""
    calls = []
    real = figures.fid_vs_nfe

    def spy(long, solvers, *args, **kw):
        calls.append((long.copy(), solvers, kw.get("learned")))
        return real(long, solvers, *args, **kw)

    monkeypatch.setattr(figures, "fid_vs_nfe", spy)
    return calls


def figure_path(out: str) -> Path:
    line = next(x for x in out.splitlines() if x.startswith("figure: "))
    return Path(line.split()[1])


def test_a_run_writes_its_figure_from_its_own_rows_and_prints_its_path(tiny_conf, tmp_path, monkeypatch, capsys,
                                                                        plotted):
    # an earlier job in the same results folder (other seeds) must not enter this job's figure
    assert dode_run(monkeypatch, tiny_conf, tmp_path, "nfe=[4]", "seeds=[2]") == 0
    first = figure_path(capsys.readouterr().out)
    assert dode_run(monkeypatch, tiny_conf, tmp_path, "nfe=[3,4]", "seeds=[0,1]") == 0
    out = capsys.readouterr().out
    png = figure_path(out)
    assert png != first and png.parent == tmp_path / "figures" and png.name.startswith("run-test-tiny-")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    assert out.index("lower is better") < out.index("runs.csv:") < out.index("figure: ")

    long, solvers, learned = plotted[-1]
    assert solvers == ["ddim"] and learned == "dode"
    runs = read_runs(tmp_path)
    for (distill, nfe), g in runs[runs["seed"].isin([0, 1])].groupby(["distill", "nfe"]):
        row = long[(long["distill"] == distill) & (long["nfe"] == nfe)]
        assert len(row) == 1 and int(row["n"].iloc[0]) == 2 and row["seeds"].iloc[0] == "0 1"
        assert float(row["mean"].iloc[0]) == pytest.approx(g["value"].mean(), rel=1e-12)
        assert float(row["std"].iloc[0]) == pytest.approx(g["value"].std(ddof=1), rel=1e-12)
    assert sorted(zip(long["distill"], long["nfe"])) == [("dode", 3), ("dode", 4), ("none", 3), ("none", 4)]

    # a rerun finds everything finished and rewrites the same figure
    assert dode_run(monkeypatch, tiny_conf, tmp_path, "nfe=[3,4]", "seeds=[0,1]") == 0
    assert figure_path(capsys.readouterr().out) == png


def test_a_base_solver_run_plots_the_base_solver_alone(tiny_conf, tmp_path, monkeypatch, capsys, plotted):
    assert dode_run(monkeypatch, tiny_conf, tmp_path, "nfe=[4]", "seeds=[0]", "distill=none") == 0
    assert figure_path(capsys.readouterr().out).is_file()
    long, _, learned = plotted[-1]
    assert learned == "none" and list(long["distill"]) == ["none"] and np.isnan(long["std"].iloc[0])


def test_a_sweep_draws_no_figure_per_job(tiny_conf, tmp_path, monkeypatch, capsys, plotted):
    assert dode_run(monkeypatch, tiny_conf, tmp_path, "-m", "nfe=3,4", "seeds=[0]", "distill=none") == 0
    out = capsys.readouterr().out
    assert "2 jobs: 2 finished" in out and "figure:" not in out and not plotted
    assert not (tmp_path / "figures").exists()
    assert len(read_runs(tmp_path)) == 2
