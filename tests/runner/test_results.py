"""runs.csv: one row per key, concurrent updates never lose a row."""
from __future__ import annotations

import multiprocessing

from dode.runner.results import read_runs, record


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
    assert back["mode"].isna().loc[1] and list(back.reset_index().columns)[-1] == "mode"
