"""runs.csv: one row per key, concurrent updates never lose a row."""
from __future__ import annotations

import multiprocessing

from pathlib import Path

from dode.runner.results import COLUMNS, read_runs, record


def _record_rows(args):
    results, worker = args
    for j in range(5):
        record(results, [{"run_dir": f"run{j % 3}", "seed": worker, "num_samples": 8, "metric": "m",
                          "value": worker * 10 + j, "nfe": 5}])


def test_runs_csv_concurrent_updates_keep_one_row_per_key(tmp_path):
    read_runs(tmp_path)  # pandas imported once, before the fork
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        pool.map(_record_rows, [(tmp_path, w) for w in range(4)], chunksize=1)
    df = read_runs(tmp_path)
    assert len(df) == 4 * 3  # 4 seeds × 3 run folders, re-recorded keys replaced
    for w in range(4):
        got = df[(df.seed == w)].set_index("run_dir")["value"].to_dict()
        assert got == {"run0": w * 10 + 3, "run1": w * 10 + 4, "run2": w * 10 + 2}
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_row_states_the_fid_mode_and_a_digits_row_none(tmp_path):
    """runs.csv's `mode` column: the FID mode of the metric result (issue 12), empty for FD-digits."""
    from pathlib import Path

    from dode.runner.points import build_points
    from dode.runner.results import csv_row
    from runner_helpers import CHOICES, point_cfg

    point = build_points(point_cfg(tmp_path), CHOICES)[1]
    fid = csv_row(point, Path(tmp_path), 0, {"value": 3.1, "mode": "legacy_tensorflow"}, 1.0)
    digits = csv_row(point, Path(tmp_path), 1, {"value": 7.5}, 1.0)
    record(tmp_path, [fid, digits])
    back = read_runs(tmp_path).set_index("seed")
    assert back.loc[0, "mode"] == "legacy_tensorflow" and back.loc[0, "value"] == 3.1
    assert back["mode"].isna().loc[1] and list(read_runs(tmp_path).columns) == COLUMNS


def test_the_grid_column_round_trips_and_an_older_file_reads_as_the_default_grid(tmp_path):
    """runs.csv's `grid`: "" for the paper protocol, the spacing or `explicit` otherwise; a file written
    before the column existed reads with grid "" and gains the column on the next record."""
    import json

    from dode.runner.points import build_points
    from dode.runner.results import csv_row, folder_rows, grid_text
    from runner_helpers import CHOICES, point_cfg

    assert grid_text({"grid": None, "protocol": "paper"}) == ""
    assert grid_text({"grid": [80.0, 1.0, 0.0]}) == "explicit"
    assert grid_text({"grid": "dmn", "protocol": "dode", "endpoint": "zero"}) == "dmn protocol=dode endpoint=zero"
    old = tmp_path / "old"
    old.mkdir()
    (old / "runs.csv").write_text("run_dir,seed,num_samples,metric,value\nr0,0,8,m,1.5\n")
    assert read_runs(old)["grid"].tolist() == [""]
    points = {g: build_points(point_cfg(tmp_path, solver={"name": "ddim", "grid": g, "label": "DDIM"}), CHOICES)[0]
              for g in (None, "dmn")}
    record(old, [csv_row(p, Path(f"r-{g}"), 0, {"value": 2.0}, None) for g, p in points.items()])
    back = read_runs(old).set_index("run_dir")["grid"]
    assert back.to_dict() == {"r0": "", "r-None": "", "r-dmn": "dmn"}
    folder = tmp_path / "d" / "ck" / "run"  # rebuilding from a run folder fills the column from run.json
    (folder / "seed-0" / "metrics").mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"point": points["dmn"].to_dict()}))
    (folder / "seed-0" / "metrics" / "m.json").write_text(json.dumps({"value": 1.0, "seed": 0, "num_samples": 8,
                                                                      "metric": "m"}))
    assert [r["grid"] for r in folder_rows(tmp_path, folder)] == ["dmn"]
    (tmp_path / "runs.csv").write_text(f"run_dir,seed,num_samples,metric,value\n{folder},0,8,m,1.0\n")
    old_file = read_runs(tmp_path)  # a file older than the columns: read from run.json
    assert old_file["grid"].tolist() == ["dmn"] and old_file["guidance"].tolist() == [""]


def test_the_summary_says_lower_is_better_and_shows_the_paired_difference(tmp_path):
    """Base and D-ODE at one NFE on seeds 0 and 1; the difference is per seed (same noises), so its
    std is that of (21 − 30, 23 − 31) = (−9, −8), not of either column."""
    from dode.runner.points import build_points
    from dode.runner.results import csv_row, summary
    from dode.runner.store import run_dir
    from runner_helpers import CHOICES, point_cfg

    base, dode = build_points(point_cfg(tmp_path), CHOICES, with_files=False)
    values = [(base, 0, 30.0), (base, 1, 31.0), (dode, 0, 21.0), (dode, 1, 23.0)]
    record(tmp_path, [csv_row(p, run_dir(p), s, {"value": v}, 1.0 if p is dode else None) for p, s, v in values])
    record(tmp_path, [csv_row(dode, run_dir(dode), 2, {"value": 99.0}, 1.0)])  # another seed: not this job's
    lines = summary([base, dode]).splitlines()
    assert lines[0].endswith("(2 seeds × 64 samples, mean ± std over seeds; lower is better)")
    assert lines[1].split("  ")[-2:] == ["D-ODE − DDIM", "λ fit [s]"]
    assert lines[3].split() == ["ddim", "4", "30.500", "±", "0.707", "22.000", "±", "1.414", "-8.500", "±", "0.707",
                                "1.0"]
    assert lines[4].startswith("D-ODE − DDIM: the difference per seed")


def test_a_row_states_its_nfe_convention_and_the_summary_says_it(tmp_path):
    """Guided runs count one guided evaluation (a doubled batch) as one NFE: runs.csv says so per row."""
    import dataclasses

    from dode.runner.points import build_points
    from dode.runner.results import NFE_CONVENTIONS, csv_row, summary
    from dode.runner.store import run_dir
    from runner_helpers import CHOICES, point_cfg

    base, dode = build_points(point_cfg(tmp_path), CHOICES, with_files=False)
    guided = dataclasses.replace(base, checkpoint={**base.checkpoint, "guidance": {"scale": 7.5}})
    rows = [csv_row(base, run_dir(base), 0, {"value": 1.0}, None), csv_row(guided, Path(tmp_path) / "g", 0,
                                                                             {"value": 2.0}, None)]
    assert [r["nfe_convention"] for r in rows] == ["network", "guided"]
    record(tmp_path, rows)
    back = read_runs(tmp_path)
    assert list(back.columns) == COLUMNS and COLUMNS[-5:] == ["mode", "nfe_convention", "grid", "guidance", "precision"]
    assert back.set_index("value").loc[2.0, "nfe_convention"] == "guided"
    assert back.set_index("value")["guidance"].to_dict() == {1.0: "", 2.0: "7.5"}  # the scale w, as text
    lines = summary([base, dode]).splitlines()
    assert lines[-2] == f"NFE — network: {NFE_CONVENTIONS['network']}"


def test_an_old_runs_csv_without_the_convention_reads_it_from_the_run_folders(tmp_path):
    """A file written before the column: each row's convention comes from its run.json (guidance.scale);
    a row whose folder is gone stays unknown; recording into it keeps the old rows; a bad value is refused."""
    import json

    import pytest

    from dode.runner.results import CorruptRunsCsv, convention_note

    for name, guidance in (("sd", {"scale": 7.5}), ("plain", {"scale": None})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({"point": {"checkpoint": {"guidance": guidance}}}))
    head = "dataset,checkpoint,solver,distill,nfe,scale,batch,seed,num_samples,metric,value,fit_seconds," \
           "sample_seconds,metric_seconds,fit_seed,run_dir,mode\n"
    old = [f"coco,sd-v1-5,ddim,none,5,,,0,8,fid30k,13.5,,,,,{tmp_path / 'sd'},clean",
           f"digits,digits-ddpm,ddim,none,5,,,0,8,fd,7.0,,,,,{tmp_path / 'plain'},",
           f"digits,digits-ddpm,ddim,none,6,,,0,8,fd,6.0,,,,,{tmp_path / 'gone'},"]
    (tmp_path / "runs.csv").write_text(head + "\n".join(old) + "\n")
    df = read_runs(tmp_path)
    assert df["nfe_convention"].tolist()[:2] == ["guided", "network"] and df["nfe_convention"].isna().iloc[2]
    assert convention_note(df["nfe_convention"]).endswith("some rows: not recorded")
    record(tmp_path, [{"run_dir": "new", "seed": 0, "num_samples": 8, "metric": "fd", "value": 1.0, "nfe": 5,
                       "nfe_convention": "network"}])
    df = read_runs(tmp_path)
    assert len(df) == 4 and df.set_index("run_dir").loc[str(tmp_path / "sd"), "nfe_convention"] == "guided"
    text = (tmp_path / "runs.csv").read_text().replace(",network\n", ",passes\n", 1)
    (tmp_path / "runs.csv").write_text(text)
    with pytest.raises(CorruptRunsCsv, match="nfe_convention 'passes' is none of network, guided"):
        read_runs(tmp_path)


def test_a_row_states_its_network_options_and_an_old_file_reads_them_from_run_json(tmp_path):
    """runs.csv's `precision`: "" for the defaults (fp32, no compile, no channels-last), else the options
    that are not (any may change images); a file older than the column reads it from each run.json."""
    import dataclasses
    import json

    from dode.runner.points import build_points
    from dode.runner.results import csv_row, folder_rows, precision_text
    from dode.runner.store import run_dir
    from runner_helpers import CHOICES, point_cfg

    assert precision_text({"precision": "fp32", "compile": False, "channels_last": False}) == ""
    assert precision_text({}) == ""  # a run.json older than the options: the defaults
    assert precision_text({"precision": "bf16", "compile": True, "channels_last": True}) == "bf16 compile channels_last"
    base = build_points(point_cfg(tmp_path), CHOICES, with_files=False)[0]
    half = dataclasses.replace(base, precision="fp16")
    rows = [csv_row(p, run_dir(p), 0, {"value": v}, None) for p, v in ((base, 1.0), (half, 2.0))]
    assert [r["precision"] for r in rows] == ["", "fp16"]
    folder = tmp_path / "d" / "ck" / "half"
    (folder / "seed-0" / "metrics").mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"point": half.to_dict()}))
    (folder / "seed-0" / "metrics" / "m.json").write_text(json.dumps({"value": 2.0, "seed": 0, "num_samples": 8,
                                                                      "metric": "m"}))
    assert [r["precision"] for r in folder_rows(tmp_path, folder)] == ["fp16"]
    (tmp_path / "runs.csv").write_text(f"run_dir,seed,num_samples,metric,value\n{folder},0,8,m,2.0\ngone,0,8,m,1.0\n")
    assert read_runs(tmp_path)["precision"].tolist() == ["fp16", ""]  # a folder gone: the defaults
