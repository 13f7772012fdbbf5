"""``dode-run``'s messages: mistakes are explained in one line, without a traceback, exit status 2."""
from __future__ import annotations

import sys

import pytest

from dode.runner.cli import check_group_options, main
from runner_helpers import CONF, dode_run, run_main


def test_unknown_option_lists_valid_choices(tmp_path, capsys, monkeypatch):
    msg = check_group_options(["solver=dpm9"], CONF)
    assert "dpm9" in msg and "ddim" in msg and "dpmpp3m" in msg
    assert check_group_options(["solver=ddim,ipndm", "nfe=5"], CONF) is None
    assert "dode_sep" in check_group_options(["distill=dode,nope"], CONF)
    monkeypatch.setattr(sys, "argv", ["dode-run", "solver=dpm9", f"results_dir={tmp_path}"])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "valid solver options: ddim" in err and "Traceback" not in err


def test_impossible_nfe_is_explained(tiny_conf, tmp_path, capsys):
    assert dode_run(tiny_conf, tmp_path, "solver=heun", "nfe=4") == 2
    err = capsys.readouterr().err
    assert "dode-run: error:" in err and "odd" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.npz"))


def test_missing_checkpoint_says_what_to_download_and_where(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DODE_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    assert run_main("solver=dpm3", "nfe=10", "dataset=cifar10", f"results_dir={tmp_path / 'r'}") == 2
    err = capsys.readouterr().err
    assert "model-790000.ckpt" in err and "put it at" in err and str(tmp_path / "ckpt") in err
    assert "make-stats" in err  # and how to make the FID reference statistics
    assert "Traceback" not in err and not list(tmp_path.rglob("*.npz"))


def test_unregistered_distill_kind_is_explained(tiny_conf, tmp_path, capsys):
    assert dode_run(tiny_conf, tmp_path, "distill.kind=nope") == 2
    err = capsys.readouterr().err
    assert "distill kind 'nope' is not registered; valid kinds: none, dode, fixed, iia, s4s, s4s_alt" in err
    assert "Traceback" not in err


def test_a_submitit_launcher_that_is_not_installed_names_the_install_command(monkeypatch, capsys):
    import importlib.util

    from dode.runner.cli import check_launcher_plugin

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins") else real(name, *a))
    assert run_main("-m", "hydra/launcher=submitit_slurm", "launcher=slurm", "nfe=5") == 2
    err = capsys.readouterr().err
    assert 'pip install -e ".[cluster]"' in err and "submitit_slurm" in err and "Traceback" not in err
    assert check_launcher_plugin(["hydra/launcher=basic", "nfe=5"]) is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # installed
    assert check_launcher_plugin(["hydra/launcher=submitit_local"]) is None


@pytest.mark.parametrize("arg", ["checkpoint.path=/tmp/é.pt", "seeds=[", "dir/x.pt"])
def test_an_argument_hydra_cannot_parse_gets_a_hint_about_quoting(arg, capsys):
    """Unquoted non-ASCII letters, a path split by a space, a broken list: exit 2 with how to quote
    (issue 15, item 5; issue 13: Hydra's own parse errors were its message and exit 1)."""
    assert run_main("checkpoint.path=/ok.pt", arg) == 2
    err = capsys.readouterr().err
    assert f"cannot read `{arg}` as key=value" in err and "quoted Hydra-style" in err and "Traceback" not in err


def test_the_quoted_forms_parse():
    from dode.runner.cli import check_override_syntax

    assert check_override_syntax(['checkpoint.path="/data/my model é.pt"', "nfe=[5,10]", "-m", "distill=dode,iia",
                                  "hydra.searchpath=[file:///tmp/conf]", "+eval.inception_weights=/w.pth"]) is None
    # the values of Hydra's own flags are no overrides; the overrides after them are still checked
    assert check_override_syntax(["--cfg", "job", "-cn", "config", "--info", "defaults", "nfe=5"]) is None
    assert "cannot read `dir/x.pt`" in check_override_syntax(["--cfg", "job", "dir/x.pt"])
    assert "cannot read `dir/x.pt`" in check_override_syntax(["--info", "nfe=5", "dir/x.pt"])
