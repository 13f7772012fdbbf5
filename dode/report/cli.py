"""``python -m dode.report`` (``dode-report``): the D-ODE paper's tables and figures from runs.csv.

Reads the rows ``dode-run`` writes (one per configuration and evaluation seed) and the run folders
they name, and writes Markdown + CSV tables to ``<results>/tables`` and PNG + PDF figures to
``<results>/figures`` (the paper: Kim, Tang & Yu, "Distilling ODE Solvers of Diffusion Models into
Smaller Steps", CVPR 2024). The artifacts are those of :mod:`dode.report.registry` (``--help`` lists
them); ``mean ± std`` is over the selected evaluation seeds (:mod:`dode.report.data`).

    python -m dode.report                      # everything that can be rendered
    python -m dode.report table-formulations --dataset cifar10 --checkpoint ddpm-cifar10
    python -m dode.report query make --dataset cifar10   # what mk/paper.mk reads (conf/paper.yaml, registry)
    python -m dode.report rebuild-runs results          # runs.csv anew from the run folders' metric files
    make paper                                 # the sweeps, then this (mk/paper.mk)
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from dode.errors import UserError
from dode.report.options import Options, samples_nfe_of
from dode.report.protocol import SolverNFE, parse_solver_nfe, protocol
from dode.report.render import ARTIFACTS, render


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in str(s).replace(",", " ").split())


def _solver_nfe(s: str) -> SolverNFE:
    try:
        return parse_solver_nfe(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _csv(values) -> str:
    return ",".join(str(v) for v in values)


def _text(solver_nfe: SolverNFE) -> str:
    return f"{solver_nfe[0]}:{solver_nfe[1]}"


def _artifact_lines() -> str:
    width = max(len(n) for n in ARTIFACTS)
    return "\n".join(f"  {a.name:<{width}}  {a.summary}" for a in ARTIFACTS.values())


def program() -> str:
    """How this command was called: ``dode-report`` (the console script) or ``python -m dode.report``."""
    from pathlib import Path

    return "dode-report" if Path(sys.argv[0]).name == "dode-report" else "python -m dode.report"


def parser() -> argparse.ArgumentParser:
    """The render command line (``query`` is a subcommand of its own: :func:`query_parser`)."""
    p = protocol()
    ap = argparse.ArgumentParser(
        prog=program(), formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Render the D-ODE paper's tables (Markdown + CSV) and figures (PNG + PDF) from "
                    "<results>/runs.csv and the run folders (Figs. 2 and 5 are computed with the model).",
        epilog=f"artifacts (default: all of them):\n{_artifact_lines()}\n\nSweeps: mk/paper.mk (make paper). "
               "What make reads: python -m dode.report query {make,artifacts} [--dataset D]. "
               "A corrupt or lost runs.csv: python -m dode.report rebuild-runs RESULTS_DIR.")
    ap.add_argument("what", nargs="*", metavar="ARTIFACT", help="artifacts to render (default: all; listed below)")
    ap.add_argument("--results", default="results", help="folder with runs.csv (default: results)")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--checkpoint", default=None, help="noise-prediction checkpoint (Fig. 3, Tables 2–4; default: "
                    "the dataset's in conf/paper.yaml)")
    ap.add_argument("--edm-checkpoint", default=None, help="data-prediction checkpoint (Fig. 4, Table 1, Fig. 6)")
    ap.add_argument("--tables", default=None, help="output folder of tables (default: <results>/tables)")
    ap.add_argument("--figures", default=None, help="output folder of figures (default: <results>/figures)")
    ap.add_argument("--metric", default=None, help="metric of runs.csv to use (default: the most common)")
    ap.add_argument("--num-samples", type=int, default=None, help="samples per seed to use (default: the most common)")
    ap.add_argument("--scale", type=int, default=None, help="K of the main tables (default: dode-run's, 10)")
    ap.add_argument("--batch", type=int, default=None, help="B of the main tables (default: dode-run's, 100; "
                    "a dataset's fit_batch, LSUN 25)")
    ap.add_argument("--fit-seed", type=int, default=None, help="λ fit seed of the main tables (default: dode-run's, 0)")
    ap.add_argument("--nfe", type=_ints, default=None, help=f"NFE columns of Tables 2–4 (default {_csv(p.table_nfe)}) "
                    f"and of table-learned (default {_csv(p.learned_nfe)})")
    ap.add_argument("--learned-solver", default=None,
                    help=f"base solver of table-learned (default {p.learned_solver})")
    ap.add_argument("--teacher-noise", type=_solver_nfe, default=None, help="reference solver of the "
                    f"noise-prediction model in table-learned, SOLVER:NFE (default {_text(p.teachers['noise'])})")
    ap.add_argument("--teacher-edm", type=_solver_nfe, default=None, help="reference solver of the "
                    f"data-prediction model in table-learned, SOLVER:NFE (default {_text(p.teachers['edm'])})")
    ap.add_argument("--device", default=None, help="device of the computed figures (default auto: cuda if present)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads of the computed figures (default 1; "
                    "0: torch's default)")
    ap.add_argument("--steps", type=int, default=None, help="steps of the long DDIM run (Figs. 2, 5; default 1000)")
    ap.add_argument("--trajectory-nfe", type=int, default=None, help="NFE of the solvers in Fig. 5 (default 10; Heun: "
                    "the odd NFE below it)")
    ap.add_argument("--samples-nfe", type=_ints, default=None,
                    help=f"NFE of Fig. 6's DDIM columns (default {_csv(p.samples_nfe['ddim'])})")
    ap.add_argument("--samples-nfe-heun", type=_ints, default=None,
                    help=f"NFE of Fig. 6's EDM (Heun) columns (default {_csv(p.samples_nfe['heun'])})")
    ap.add_argument("--min-over-seeds", action=argparse.BooleanOptionalAction, default=None,
                    help="cells also show the minimum over the evaluation seeds (EDM's convention), or not "
                         "(default: conf/paper.yaml's aggregate, per dataset and part)")
    ap.add_argument("--quiet", action="store_true")
    return ap


def options(a: argparse.Namespace) -> Options:
    """The :class:`Options` of parsed render arguments: what was given; the rest keeps Options' defaults
    (one place for them)."""
    given = {"results": a.results, "dataset": a.dataset, "checkpoint": a.checkpoint, "edm_checkpoint": a.edm_checkpoint,
             "tables": a.tables, "figures": a.figures, "metric": a.metric, "num_samples": a.num_samples,
             "scale": a.scale, "batch": a.batch, "fit_seed": a.fit_seed, "nfe": a.nfe, "device": a.device,
             "threads": a.threads, "steps": a.steps, "trajectory_nfe": a.trajectory_nfe, "quiet": a.quiet,
             "learned_solver": a.learned_solver, "min_over_seeds": a.min_over_seeds}
    if a.teacher_noise or a.teacher_edm:
        given["teachers"] = {**protocol().teachers, **{role: v for role, v in (("noise", a.teacher_noise),
                                                                                ("edm", a.teacher_edm)) if v}}
    if a.samples_nfe or a.samples_nfe_heun:
        given["samples_nfe"] = samples_nfe_of(a.samples_nfe, a.samples_nfe_heun)
    return Options(**{k: v for k, v in given.items() if v is not None})


# ------------------------------------------------------------------------------------------- query
def make_variables(dataset: str) -> list[str]:
    """mk/paper.mk's view of conf/paper.yaml and the registry, as make assignments without spaces
    (lists comma-separated): the checkpoints of ``dataset``, the protocol's defaults, the artifacts
    with the make target of each one's sweeps (``PAPER_SWEEP_<artifact>``), and those targets."""
    p = protocol()
    models = p.models(dataset)
    sweeps = dict.fromkeys(a.sweep for a in ARTIFACTS.values() if a.sweep)
    values = {"ARTIFACTS": _csv(ARTIFACTS), "SWEEPS": _csv(sweeps),
              "CHECKPOINT": models.noise or "", "EDM_CHECKPOINT": models.edm or "",
              "FID_MODE_NOISE": p.fid_modes.noise, "FID_MODE_EDM": p.fid_modes.edm,
              "NOISE_SOLVERS": _csv(p.noise_solvers), "TABLE_NFE": _csv(p.table_nfe),
              "LEARNED_SOLVER": p.learned_solver, "LEARNED_NFE": _csv(p.learned_nfe),
              "LEARNED": _csv(p.learned_for(dataset)), "LEARNED_BASES": _csv(b.text for b in p.bases),
              "LEARNED_EXTRA": _csv(f"{m}:{b}" for m, b in p.extra_batches_for(dataset)),
              "TEACHER_NOISE": _text(p.teachers["noise"]), "TEACHER_EDM": _text(p.teachers["edm"]),
              "SAMPLES_NFE_DDIM": _csv(p.samples_nfe["ddim"]), "SAMPLES_NFE_HEUN": _csv(p.samples_nfe["heun"])}
    values.update({f"SWEEP_{a.name}": a.sweep or "" for a in ARTIFACTS.values()})
    return [f"PAPER_{k}:={v}" for k, v in values.items()]


def query_parser() -> argparse.ArgumentParser:
    """``python -m dode.report query {make,artifacts}``."""
    ap = argparse.ArgumentParser(prog=f"{program()} query",
                                 description="Print what mk/paper.mk reads: `make`: make assignments (conf/paper.yaml "
                                             "for --dataset, and the artifact registry); `artifacts`: one name a line.")
    ap.add_argument("what", choices=("make", "artifacts"))
    ap.add_argument("--dataset", default="digits")
    return ap


def query(argv: Sequence[str]) -> int:
    """Print the answer of ``query`` (see :func:`query_parser`)."""
    a = query_parser().parse_args(argv)
    print("\n".join(make_variables(a.dataset) if a.what == "make" else ARTIFACTS))
    return 0


def rebuild_runs(argv: Sequence[str]) -> int:
    """``rebuild-runs RESULTS_DIR``: write runs.csv anew from the run folders (the source of truth)."""
    from dode.errors import UserError
    from dode.runner.results import RUNS_CSV, rebuild_runs as rebuild

    ap = argparse.ArgumentParser(prog=f"{program()} rebuild-runs",
                                 description="Rebuild <RESULTS_DIR>/runs.csv from the run folders' run.json, "
                                             "lambdas.json and metric files (a corrupt or lost runs.csv).")
    ap.add_argument("results_dir", metavar="RESULTS_DIR", help="the results_dir of dode-run (e.g. results)")
    a = ap.parse_args(argv)
    try:
        n = rebuild(a.results_dir)
    except (UserError, OSError) as e:
        print(f"{program()}: error: {e}", file=sys.stderr)
        return 2
    print(f"{a.results_dir}/{RUNS_CSV}: {n} row{'s' if n != 1 else ''} rebuilt from the run folders")
    return 0


def check_files(argv: Sequence[str]) -> int:
    """``check-files "OVERRIDES" …``: whether the files of each dode-run job exist here (checkpoint, its
    second file, captions, reference statistics or CLIP weights), every missing one named with where to
    get it; 2 when any is missing. A make target runs it before hours of sweeps."""
    import shlex

    from dode.errors import UserError
    from dode.runner.points import points_from_overrides

    ap = argparse.ArgumentParser(prog=f"{program()} check-files",
                                 description="Check that the local files of dode-run jobs exist, before running them.")
    ap.add_argument("jobs", nargs="+", metavar="OVERRIDES", help="one job's dode-run overrides, quoted as one word")
    problems = []
    for job in ap.parse_args(argv).jobs:
        try:
            points_from_overrides(shlex.split(job), with_files=True)
        except UserError as e:
            problems.append(f"[{job}]\n{e}")
    if problems:
        print(f"{program()}: error: missing files\n\n" + "\n\n".join(problems), file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Render the artifacts named on the command line (all without any); 2 on a usage or input error."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["query"]:
        return query(argv[1:])
    if argv[:1] == ["rebuild-runs"]:
        return rebuild_runs(argv[1:])
    if argv[:1] == ["check-files"]:
        return check_files(argv[1:])
    try:
        a = parser().parse_args(argv)
        files = render(a.what or list(ARTIFACTS), options(a))
    except (FileNotFoundError, ValueError, UserError) as e:
        print(f"{program()}: error: {e}", file=sys.stderr)
        return 2
    if not files:
        print(f"{program()}: nothing rendered (no matching runs)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
