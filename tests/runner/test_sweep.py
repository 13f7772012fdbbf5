"""A sweep (``dode-run -m``) ends with one summary of all its jobs and fails when any job failed."""
from __future__ import annotations

from dode.runner.sweep import CRASHED, FINISHED, USER_ERROR, JobOutcome, SweepResult, format_outcomes
from runner_helpers import BASE, run_main


def sweep(conf, results, *args: str) -> int:
    base = [b for b in BASE if not b.startswith("nfe=")]
    return run_main("-m", f"hydra.searchpath=[file://{conf}]", f"results_dir={results}", *base, "distill=none", *args)


def test_sweep_with_a_user_error_reports_every_job_and_exits_2(tiny_conf, tmp_path, capsys):
    assert sweep(tiny_conf, tmp_path, "solver=heun", "nfe=3,4") == 2
    out, err = capsys.readouterr()
    summary = err[err.index("sweep summary"):]
    assert "every job: " in summary and "solver=heun" in summary.splitlines()[1]
    assert "job 0 [ok] nfe=3\n" in summary and "heun      3" in summary  # the finished job's table
    assert "job 1 [FAILED (user error)] nfe=4\n" in summary and "valid NFE are odd" in summary
    assert "2 jobs: 1 finished, 1 failed" in summary and "Traceback" not in err
    assert not list(tmp_path.rglob(".dode-status-*"))


def test_sweep_with_a_crashed_job_exits_1(tiny_conf, tmp_path, capsys):
    assert sweep(tiny_conf, tmp_path, "nfe=3", "+checkpoint.res=4,x") == 1
    err = capsys.readouterr().err
    summary = err[err.index("sweep summary"):]
    assert "job 0 [ok]" in summary and "job 1 [FAILED (crashed)]" in summary and "TypeError" in summary
    assert "2 jobs: 1 finished, 1 failed" in summary


def test_sweep_of_finished_jobs_exits_0(tiny_conf, tmp_path, capsys):
    assert sweep(tiny_conf, tmp_path, "solver=ddim,euler", "nfe=3") == 0
    out = capsys.readouterr().out
    assert "job 0 [ok]" in out and "job 1 [ok]" in out and "2 jobs: 2 finished, 0 failed" in out


def test_sweep_exit_status_and_format():
    ok = JobOutcome(0, ("nfe=5",), FINISHED, "table")
    assert SweepResult([ok]).exit_status == 0
    assert SweepResult([ok, JobOutcome(1, ("nfe=4",), USER_ERROR, "odd")]).exit_status == 2
    crashed = [ok, JobOutcome(1, (), CRASHED, "KeyError: 1"), JobOutcome(2, (), USER_ERROR, "x")]
    assert SweepResult(crashed).exit_status == 1
    text = format_outcomes([ok, JobOutcome(1, ("nfe=4",), USER_ERROR, "odd")])
    assert "job 0 [ok] nfe=5\n    table" in text and "job 1 [FAILED (user error)] nfe=4\n    odd" in text
