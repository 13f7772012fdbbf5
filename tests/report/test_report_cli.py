"""dode.report's command line, its artifact registry and the one source of its protocol (conf/paper.yaml)."""
from __future__ import annotations

import sys

import pytest

from dode.report import cli
from dode.report.labels import method_label, solver_label
from dode.report.protocol import protocol, runner_default, s4s_teacher
from dode.report.registry import artifact, lookup
from dode.report.render import ARTIFACTS
from dode.runner.config import config_dir, group_option


def test_missing_runs_csv_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["table-formulations", "--results", str(tmp_path)]) == 2
    assert "runs.csv not found" in capsys.readouterr().err
    assert cli.main(["no-such-table", "--results", str(tmp_path)]) == 2


def test_help_lists_every_registered_artifact_with_its_line(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert ARTIFACTS and list(ARTIFACTS)[0] == "fig-fid-nfe" and list(ARTIFACTS)[-1] == "table-runs"
    for a in ARTIFACTS.values():
        assert any(line.split() == [a.name] + a.summary.split() for line in out.splitlines()), a.name


def test_unknown_artifact_names_the_valid_ones(tmp_path, capsys):
    assert cli.main(["table-nope", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown artifact(s) table-nope" in err and f"valid: {', '.join(ARTIFACTS)}" in err
    with pytest.raises(ValueError, match="valid: fig-fid-nfe"):
        lookup(["fig-fid-nfe", "fig-nope"])


def test_an_artifact_registers_once():
    with pytest.raises(ValueError, match="registered twice"):
        artifact("table-time", "again")(lambda runs, opt: [])
    assert ARTIFACTS["table-time"].make.__name__ == "table_time"


def test_query_make_prints_the_protocol_and_each_artifacts_sweep(capsys):
    assert cli.main(["query", "make", "--dataset", "celeba64"]) == 0
    got = dict(line.split(":=", 1) for line in capsys.readouterr().out.splitlines())
    assert got["PAPER_ARTIFACTS"] == ",".join(ARTIFACTS)
    assert got["PAPER_CHECKPOINT"] == "ddpm-celeba64" and got["PAPER_EDM_CHECKPOINT"] == ""
    assert got["PAPER_TEACHER_NOISE"] == "ddim:1000" and got["PAPER_TEACHER_EDM"] == "heun:399"
    assert got["PAPER_LEARNED_BASES"] == ",".join(b.text for b in protocol().bases) == "unipc3_bh2,dpmpp2m@dmn"
    assert all(got[f"PAPER_SWEEP_{a.name}"] == (a.sweep or "") for a in ARTIFACTS.values())
    assert " " not in "".join(got.values())  # make reads the words of $(shell ...)
    assert cli.main(["query", "artifacts"]) == 0
    assert capsys.readouterr().out.split() == list(ARTIFACTS)


def test_paper_protocol_names_existing_configs():
    p = protocol()
    assert set(p.checkpoints) == {f.stem for f in (config_dir() / "dataset").glob("*.yaml")}
    for models in p.checkpoints.values():
        for ck in (models.noise, models.edm):
            assert ck is None or group_option("checkpoint", ck), ck
    for s in {*p.noise_solvers, *p.edm_solvers, p.learned_solver, *(t[0] for t in p.teachers.values()),
              *(b.solver for b in p.bases)}:
        assert group_option("solver", s), s
    assert p.goals == {5: 1.25, 4: 2.0}
    assert p.models("no-such-dataset").noise is None


def test_a_learned_base_is_solver_or_solver_at_grid():
    from dode.report.labels import base_label
    from dode.report.protocol import BaseSolver, parse_base

    assert parse_base("dpmpp2m@dmn") == BaseSolver("dpmpp2m", "dmn") and parse_base("unipc3_bh2").text == "unipc3_bh2"
    for bad in ("dpmpp2m@", "@dmn", "a@b@c", "a b", "a,b"):
        with pytest.raises(ValueError, match="SOLVER@GRID"):
            parse_base(bad)
    assert base_label("dpmpp2m", "dmn") == "DPM-Solver++(2M), DMN grid" and base_label("unipc3_bh2") == "UniPC-3 (bh2)"


def test_runner_defaults_and_labels_come_from_the_runner_config():
    assert runner_default("batch", "lsun_bedroom") == 25 and runner_default("batch", "cifar10") == 100
    assert runner_default("scale", "digits") == 10 and runner_default("fit_seed", "digits") == 0
    assert s4s_teacher() == ("heun", 199)
    assert solver_label("heun") == "EDM" and solver_label("deis3") == "DEIS-3" and solver_label("nope") == "nope"
    assert method_label("dpmpp2m", "dode") == "D-DPM-Solver++(2M)"
    assert method_label("ddim", "s4s_fd") == "S4S (DDIM, features)"
    opt = cli.options(cli.parser().parse_args(["--dataset", "lsun_bedroom", "--quiet"]))
    assert (opt.checkpoint, opt.edm_checkpoint, opt.batch, opt.scale) == ("adm-lsun-bedroom256", None, 25, 10)


def test_the_command_calls_itself_as_it_was_called(monkeypatch, capsys):
    """dode-report says dode-report (issue 15); python -m dode.report says that."""
    from dode.report import cli

    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/dode-report"])
    assert cli.parser().prog == "dode-report"
    assert cli.main(["no-such-artifact"]) == 2
    assert capsys.readouterr().err.startswith("dode-report: error: unknown artifact(s) no-such-artifact")
    monkeypatch.setattr(sys, "argv", ["/x/dode/report/__main__.py"])
    assert cli.parser().prog == "python -m dode.report"
