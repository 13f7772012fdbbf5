"""What the run folders hold, shown as it is: sample grids (paper Fig. 6) and the per-seed rows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dode.report import figures
from dode.report.data import read_samples, select
from dode.report.options import Options
from dode.report.registry import artifact
from dode.report.tables import rows_of, stem


@artifact("fig-samples", "Fig. 6: sample grids at several NFE, base vs D-ODE, same seeds (read from the run "
          "folders' sample shards)", sweep="runs-samples")
def fig_samples(runs: pd.DataFrame, opt: Options) -> list[Path]:
    """Seed 0's first ``opt.sample_grid`` samples of base and D-ODE runs at ``opt.samples_nfe``, on the
    data-prediction model (as the paper), else the noise-prediction one."""
    out = []
    for ck in [c for c in (opt.edm_checkpoint or opt.checkpoint,) if c]:
        d, _ = select(runs, opt, ck, scale=opt.scale, batch=opt.batch)
        cells = _sample_cells(d[d["distill"].isin(["none", "dode"]) & (d["seed"] == 0)], opt)
        if not cells:
            opt.say(f"fig-samples: no sample shards of {opt.dataset}/{ck}; skipped")
            continue
        out += figures.sample_grids(cells, f"Samples of {opt.dataset} · {ck}: base vs D-ODE, same noises (seed 0, "
                                    f"samples 0–{opt.sample_grid - 1}) (paper Fig. 6 analogue)",
                                    opt.figures / stem("samples", opt, ck))
    return out


def _sample_cells(d: pd.DataFrame, opt: Options) -> dict[tuple[str, int, str], np.ndarray]:
    """``{(solver, nfe, distill): images}`` of the runs in ``d`` that have sample shards."""
    cells = {}
    for s, nfes in opt.samples_nfe.items():
        for n in nfes:
            for dist in ("none", "dode"):
                g = rows_of(d, solver=s, nfe=n, distill=dist)
                imgs = read_samples(Path(g["run_path"].iloc[0]), 0, opt.sample_grid) if len(g) else None
                if imgs is not None:
                    cells[(s, n, dist)] = imgs
    return cells


@artifact("table-runs", "the per-seed rows of runs.csv behind the tables (runs-<dataset>.csv, with the fixed λ), "
          "so the numbers can be checked without the run folders", sweep="paper-runs")
def table_runs(runs: pd.DataFrame, opt: Options) -> list[Path]:
    """The dataset's rows of runs.csv (every seed, with the λ of fixed/lookahead runs)."""
    d = runs[runs["dataset"].astype(str) == opt.dataset].drop(columns=["run_path"])
    if d.empty:
        opt.say(f"table-runs: no runs of {opt.dataset}; skipped")
        return []
    d = d.sort_values(["checkpoint", "solver", "distill", "nfe", "scale", "batch", "lam", "fit_seed", "seed"],
                      na_position="first")
    opt.tables.mkdir(parents=True, exist_ok=True)
    path = opt.tables / f"runs-{opt.dataset}.csv"
    d.to_csv(path, index=False, float_format="%.6g")
    opt.say(f"wrote {path}")
    return [path]
