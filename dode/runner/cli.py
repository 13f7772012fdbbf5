"""``dode-run``: the Hydra experiment runner (fit → generate → metric → runs.csv). See docs/runner.md."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Callable

from dode.errors import UserError
from dode.runner import sweep
from dode.runner.config import config_dir, without_group
from dode.runner.options import check_argv_keys

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
# what a command built on the runner adds after a single run's summary table (``dode-run``: the
# report's figure of the job, :mod:`dode.cli`): the job's points → lines to print under the table
AfterRun = Callable[[list], str]


def _choices() -> dict:
    from hydra.core.hydra_config import HydraConfig

    return {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra/")}


def _none_distill() -> dict:
    """The ``distill=none`` node (for the base solver next to a correction), composed like the rest."""
    from omegaconf import OmegaConf

    try:
        from hydra import compose
        from hydra.core.hydra_config import HydraConfig

        overrides = without_group(list(HydraConfig.get().overrides.task), "distill") + ["distill=none"]
        cfg = compose(config_name="config", overrides=overrides)
        return OmegaConf.to_container(cfg.distill, resolve=True)
    except Exception:  # compose unavailable (e.g. restored remote job): the file itself
        return OmegaConf.to_container(OmegaConf.load(config_dir() / "distill" / "none.yaml"), resolve=True)


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def _job() -> tuple[int, tuple[str, ...]]:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    return int(hc.job.get("num", 0) or 0), tuple(hc.overrides.task)


def app(cfg, after_run: AfterRun | None = None) -> list[dict] | None:
    """One Hydra job: check the options, build the points, run them on every process, print the
    summary table (and, outside a sweep, what ``after_run`` adds: :data:`AfterRun`). In a sweep,
    every way the job ends is recorded for the sweep's summary
    (:mod:`dode.runner.sweep`) and the sweep goes on."""
    from dode.runner.sweep import CRASHED, FINISHED, USER_ERROR, JobOutcome, save_outcome

    multirun = _multirun()
    num, overrides = _job()
    try:
        rows, text = run_job(cfg, overrides, None if multirun else after_run)
    except UserError as e:
        _fail(str(e), multirun)
        save_outcome(JobOutcome(num, overrides, USER_ERROR, str(e).splitlines()[0]))
        return None
    except KeyboardInterrupt:
        print("\ndode-run: interrupted. Everything finished so far is kept; rerun the same command to resume.",
              file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:
        if not multirun:
            raise
        logging.getLogger("dode.runner").exception(f"dode-run: job {num} crashed")
        detail = " ".join(str(e).split())  # the message on one line
        save_outcome(JobOutcome(num, overrides, CRASHED, f"{type(e).__name__}: {detail[:300]}"))
        return None
    finally:
        sys.stdout.flush()
    save_outcome(JobOutcome(num, overrides, FINISHED, text))
    return rows


def run_job(cfg, overrides: tuple[str, ...] = (), after_run: AfterRun | None = None) -> tuple[list[dict] | None, str]:
    """(rows, summary table and what ``after_run`` adds) of one job; every input is checked before any
    work, and a full or read-only disk is a :class:`~dode.errors.UserError` naming the path."""
    from omegaconf import OmegaConf

    from dode.runner.distributed import launch
    from dode.runner.options import check_composed_keys, check_options, config_keys, top_level_keys
    from dode.runner.points import build_points
    from dode.runner.results import check_runs, summary
    from dode.runner.stages import execute
    from dode.runner.store import disk_error

    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
        choices = _choices()
        conf = config_dir()
        check_composed_keys(plain, [*top_level_keys(conf), *choices], list(overrides), config_keys(conf))
        check_options(plain)
        check_runs(plain["results_dir"])
        points = build_points(plain, choices, _none_distill())
        lc = cfg.launcher
        rows = launch(execute, {"points": points}, world_size=int(cfg.world_size), launcher=str(lc.name),
                      device=str(cfg.device), backend=lc.get("backend"),
                      threads_per_worker=lc.get("threads_per_worker"),
                      timeout_min=float(lc.get("timeout_min", 600)))
        text = summary(points)
        main_rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)) or 0) == 0
        if after_run is not None and main_rank and points:
            text += "\n" + after_run(points)
    except OSError as e:
        err = disk_error(e)
        if err is None:
            raise
        raise err from None
    if main_rank:
        print()
        print(text)
    return rows, text


def _fail(msg: str, multirun: bool) -> None:
    print(f"dode-run: error: {msg}", file=sys.stderr)
    if not multirun:  # in a sweep the other jobs go on
        sys.exit(EXIT_USER_ERROR)


def check_group_options(argv: list[str], conf: Path) -> str | None:
    """A readable message for ``group=option`` arguments naming no file of ``conf/<group>/`` (Hydra
    would report it too, with its search path and a hint about stack traces), or None."""
    if any(a.startswith("hydra.searchpath") for a in argv):
        return None  # options may live in other config folders: let Hydra decide
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        folder = conf / key
        if key.startswith("hydra") or not folder.is_dir() or any(c in value for c in "()[]{}$*"):
            continue
        valid = sorted(p.stem for p in folder.glob("*.yaml"))
        for option in value.split(","):
            if option and option != "null" and option not in valid:
                return (f"unknown {key} option {option!r} in `{arg}`.\n  valid {key} options: {', '.join(valid)}\n"
                        f"  (files in {folder}; `dode-run --help` lists every group)")
    return None


# Hydra's flags followed by a value of their own (--info's is optional), which is no key=value
HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--experimental-rerun", "--info", "-i"}


def check_override_syntax(argv: list[str]) -> str | None:
    """A readable message for a command-line argument Hydra cannot parse as ``key=value`` (an unquoted
    path with spaces splits in two; non-ASCII letters and some characters need quotes), else None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    flag_value = False
    for arg in argv:
        if arg.startswith("-"):  # -m, --multirun, --help, … are Hydra's flags; some take the next argument
            flag_value = arg in HYDRA_VALUE_FLAGS
            continue
        if flag_value and "=" not in arg:  # `--cfg job`, `--info defaults`, `-cn my_config`
            flag_value = False
            continue
        flag_value = False
        try:
            parser.parse_overrides([arg])
        except Exception as e:  # Hydra's OverrideParseException (ANTLR lexer/parser errors)
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return (f"cannot read `{arg}` as key=value ({reason}). A value with spaces, non-ASCII letters or "
                    "brackets must be quoted Hydra-style inside the shell's quotes, e.g. "
                    "'checkpoint.path=\"/data/my model é.pt\"'")
    return None


def check_launcher_plugin(argv: list[str]) -> str | None:
    """A message when ``hydra/launcher=submitit_*`` is asked for but Hydra's submitit launcher is not
    installed (Hydra itself would only say it cannot find the config), else None."""
    import importlib.util

    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") == "hydra/launcher" and any(v.startswith("submitit") for v in value.split(",")):
            try:
                found = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
            except ModuleNotFoundError:  # no hydra_plugins package at all
                found = False
            if not found:
                return (f"`{arg}` needs Hydra's submitit launcher, which is not installed: "
                        "pip install -e \".[cluster]\" (or pip install hydra-submitit-launcher); docs/runner.md")
    return None


def main(after_run: AfterRun | None = None) -> None:
    """The runner's command line (``python -m dode.runner``; ``dode-run`` adds ``after_run``: :mod:`dode.cli`):
    checks the command line, then runs the Hydra app (one job, or a sweep's jobs)."""
    import hydra

    try:
        conf = config_dir()
    except UserError as e:
        print(f"dode-run: error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    msg = (check_override_syntax(sys.argv[1:]) or check_launcher_plugin(sys.argv[1:])
           or check_group_options(sys.argv[1:], conf) or check_argv_keys(sys.argv[1:], conf))
    if msg:
        print(f"dode-run: error: {msg}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)

    def job(cfg) -> list[dict] | None:
        return app(cfg, after_run)

    hydra.main(version_base="1.3", config_path=str(conf), config_name="config")(job)()
    result, sweep.LAST = sweep.LAST, None
    if result is not None and result.exit_status:
        sys.exit(result.exit_status)


if __name__ == "__main__":
    main()
