"""A sweep (``dode-run -m``) ends with one summary of all its jobs and fails when any job failed."""
from __future__ import annotations

import importlib.util
import subprocess

import pytest

from dode.runner.results import read_runs
from dode.runner.sweep import (CRASHED, FINISHED, USER_ERROR, JobOutcome, SweepResult, format_outcomes,
                               remove_pattern_folder)
from runner_helpers import BASE, CONF, ROOT, cmd, env, run_main


def submitit_installed() -> bool:
    try:
        return importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
    except ModuleNotFoundError:
        return False


needs_submitit = pytest.mark.skipif(not submitit_installed(), reason="Hydra's submitit launcher is not installed "
                                    "(pip install -e \".[cluster]\"; make install-test installs it)")


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


@needs_submitit
def test_the_slurm_launcher_config_composes_as_docs_runner_md_gives_it(tmp_path):
    from hydra import compose, initialize_config_dir

    overrides = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=240",
                 "hydra.launcher.tasks_per_node=4", "hydra.launcher.gpus_per_node=4", "launcher=slurm",
                 "dataset=cifar10", f"results_dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.timeout_min, launcher.tasks_per_node, launcher.gpus_per_node) == \
        ("gpu", 240, 4, 4)
    assert launcher.submitit_folder == f"{tmp_path}/sweeps/.submitit/%j"
    assert cfg.launcher.name == "slurm" and cfg.hydra.callbacks.sweep_status._target_ == "dode.runner.sweep.SweepStatus"


@pytest.mark.slow
@needs_submitit
def test_a_sweep_through_submitits_local_executor_reports_every_job_and_leaves_no_pattern_folder(tiny_conf, tmp_path):
    """The documented dry run of the SLURM path: each job a submitit job (its own process, pickled
    task), the combined summary over them, and no empty `.submitit/%j` folder left behind."""
    args = [a for a in cmd(tiny_conf, tmp_path) if not a.startswith("nfe=")]
    proc = subprocess.run([*args[:3], "-m", "hydra/launcher=submitit_local", *args[3:], "nfe=3,4", "distill=none"],
                          env=env(), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = proc.stdout[proc.stdout.index("sweep summary"):]
    assert "job 0 [ok] nfe=3" in summary and "job 1 [ok] nfe=4" in summary and "2 jobs: 2 finished" in summary
    assert sorted(read_runs(tmp_path)["nfe"].unique()) == [3, 4]
    logs = tmp_path / "sweeps" / ".submitit"
    folders = sorted(p.name for p in logs.iterdir())
    assert len(folders) == 2 and all(f.isdigit() for f in folders), folders  # one per job, named by its id
    assert all(list((logs / f).glob("*_0_log.out")) for f in folders)


def test_only_an_empty_folder_named_like_a_pattern_is_removed(tmp_path):
    (tmp_path / ".submitit" / "%j").mkdir(parents=True)
    (tmp_path / ".submitit" / "123").mkdir()
    remove_pattern_folder(f"{tmp_path}/.submitit/%j")
    assert sorted(p.name for p in (tmp_path / ".submitit").iterdir()) == ["123"]
    (tmp_path / "logs" / "%A" / "%a").mkdir(parents=True)
    remove_pattern_folder(f"{tmp_path}/logs/%A/%a")
    assert (tmp_path / "logs").is_dir() and not (tmp_path / "logs" / "%A").exists()
    (tmp_path / "full" / "%j").mkdir(parents=True)
    (tmp_path / "full" / "%j" / "x.log").write_text("kept")
    remove_pattern_folder(f"{tmp_path}/full/%j")
    assert (tmp_path / "full" / "%j" / "x.log").read_text() == "kept"
    remove_pattern_folder(None)
