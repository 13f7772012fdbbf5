"""mk/s4s.mk (`make table-latent`): the files are checked first, then the dode-run sweeps of S4S's latent
table — each split into its Hydra jobs and turned into the runner's points — then table-learned renders."""
from __future__ import annotations

import subprocess
from pathlib import Path

from dode.report import cli
from test_make import REPO, compose_jobs, make_commands, needs_make, split_commands

MK = REPO / "mk" / "s4s.mk"


def s4s_commands(*args: str, makefile: Path = MK) -> list[list[str]]:
    return split_commands(subprocess.run(["make", "--no-print-directory", "-n", "-f", str(makefile), "table-latent", *args],
                                         cwd=REPO, capture_output=True, text=True, check=True).stdout)


@needs_make
def test_table_latent_checks_files_then_sweeps_both_models_then_renders():
    from dode.runner.points import points_from_overrides

    cmds = s4s_commands("LATENT_SOLVERS=ddim,dpmpp2m", "LATENT_NFES=4,10", "LATENT_EVALS_COCO=fid30k,clip30k")
    assert cmds[0][:4] == ["python", "-m", "dode.report", "check-files"]
    assert cmds[0][4:] == ["dataset=coco checkpoint=sd-v1-5 checkpoint.guidance.scale=7.5 checkpoint.dtype=float16 "
                           f"eval={e}" for e in ("fid30k", "clip30k")] + ["dataset=lsun_bedroom checkpoint=ldm-lsun-bedroom"]
    runs = [c for c in cmds if Path(c[0]).name == "dode-run"]
    assert [c[c.index("progress=false") + 2].split("=")[1] for c in runs] == ["coco", "lsun_bedroom"]
    seen = set()
    for cmd in runs:
        for job in compose_jobs(cmd):
            for p in points_from_overrides(job, with_files=False):
                c = p.choices
                seen.add((c.dataset, c.eval, p.solver["name"], c.distill, p.nfe))
                if c.dataset == "coco":
                    assert c.checkpoint == "sd-v1-5" and p.checkpoint["guidance"]["scale"] == 7.5
                    assert p.checkpoint["dtype"] == "float16" and p.num_samples == 30000
                else:
                    assert c.checkpoint == "ldm-lsun-bedroom" and p.num_samples == 50000 and c.eval == "fid50k"
                assert p.seeds == (0,) and (not p.fits or p.batch == 25)
    methods = {"none", "dode", "s4s", "s4s_alt"}
    assert seen == {("coco", e, s, d, n) for e in ("fid30k", "clip30k") for s in ("ddim", "dpmpp2m") for d in methods
                    for n in (4, 10)} | {("lsun_bedroom", "fid50k", s, d, n) for s in ("ddim", "dpmpp2m")
                                         for d in methods for n in (4, 10)}
    renders = [cli.parser().parse_args(c[3:]) for c in cmds if c[3:4] == ["table-learned"]]
    assert {(a.dataset, a.checkpoint, a.learned_solver, a.metric) for a in renders} == {
        ("coco", "sd-v1-5", s, e) for s in ("ddim", "dpmpp2m") for e in ("fid30k", "clip30k")} | {
        ("lsun_bedroom", "ldm-lsun-bedroom", s, "fid50k") for s in ("ddim", "dpmpp2m")}
    for a in renders:  # one table per model, base solver and metric: none overwrites another
        assert a.what == ["table-learned"] and list(a.nfe) == [4, 10]
        assert a.tables.endswith(f"latent-{a.learned_solver}-{a.metric}") and len(renders) == 6


@needs_make
def test_the_makefile_includes_it_without_the_paper_query_and_its_variables_reach_the_commands():
    cmds = s4s_commands("GUIDANCE=3.0", "LATENT_MODELS=coco", "LATENT_TEACHER=ddim:100", makefile=REPO / "Makefile")
    assert cmds == s4s_commands("GUIDANCE=3.0", "LATENT_MODELS=coco", "LATENT_TEACHER=ddim:100")
    runs = [c for c in cmds if Path(c[0]).name == "dode-run"]
    assert all("checkpoint.guidance.scale=3.0" in c and "dataset=coco" in c for c in runs) and len(runs) == 2
    assert runs[1][-3:] == ["solver=ddim", "nfe=100", "distill=none"]
    assert all("--teacher-noise" in c for c in cmds if "table-learned" in c)
    assert make_commands("table-learned")  # mk/paper.mk's own targets are unchanged


def test_check_files_names_every_missing_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for var in ("DODE_CHECKPOINT_DIR", "DODE_DATA_DIR", "DODE_STATS_DIR"):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["check-files", "dataset=lsun_bedroom checkpoint=ldm-lsun-bedroom"]) == 2
    err = capsys.readouterr().err
    assert "ldm-lsun-bedroom/model.ckpt" in err and "ommer-lab.com/files/latent-diffusion/lsun_bedrooms.zip" in err
    assert "ldm-lsun-bedroom/config.yaml" in err and "checkpoint.ldm_config.path=" in err
    assert "lsun_bedroom_fid_clean.npz" in err
