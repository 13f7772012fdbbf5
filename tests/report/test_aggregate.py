"""The minimum over seeds beside mean ± std (issue 12: EDM reports the best of three FID runs, D-ODE
the mean), where conf/paper.yaml's ``aggregate`` asks for it: per dataset and part, on a synthetic
runs.csv with irregular per-seed values."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dode.report.options import Options
from dode.report.protocol import parse_aggregate, protocol
from dode.report.render import render
from test_tables import md_list

NOISE, EDM = protocol().models("cifar10").noise, protocol().models("cifar10").edm
# value per (checkpoint, solver, distill, nfe) and seed 0, 1, 2: the minimum is at a different seed each time
VALUES = {(NOISE, "ddim", "none", 5): (30.0, 27.5, 31.25), (NOISE, "ddim", "dode", 5): (12.0, 11.0, 14.5),
          (EDM, "heun", "none", 5): (20.0, 22.0, 17.75), (EDM, "heun", "dode", 5): (9.5, 8.25, 10.0),
          (EDM, "ddim", "none", 5): (40.0, 41.0, 39.0), (EDM, "ddim", "iia", 5): (15.0, 13.5, 16.0),
          (EDM, "heun", "none", 399): (2.5, 2.0, 2.25)}


def pm_min(values, digits: int = 2) -> str:
    v = np.asarray(values)
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f} (min {v.min():.{digits}f})"


def pm(values) -> str:
    v = np.asarray(values)
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    rows = []
    for (ck, solver, distill, nfe), values in VALUES.items():
        fits = distill != "none"
        folder = root / "cifar10" / ck / f"{solver}-nfe{nfe}-{distill}"
        folder.mkdir(parents=True)
        for seed, v in enumerate(values):
            rows.append({"dataset": "cifar10", "checkpoint": ck, "solver": solver, "distill": distill, "nfe": nfe,
                         "scale": 10 if fits else None, "batch": 100 if fits else None, "seed": seed,
                         "num_samples": 50000, "metric": "fid50k", "value": v, "fit_seconds": 1.5 if fits else None,
                         "sample_seconds": 100.0, "metric_seconds": 10.0, "fit_seed": 0 if fits else None,
                         "run_dir": str(folder), "mode": "legacy_tensorflow"})
    pd.DataFrame(rows).to_csv(root / "runs.csv", index=False)
    return root


def options(results: Path, out: Path, **kw) -> Options:
    return Options(results=results, dataset="cifar10", tables=out / "tables", figures=out / "figures", quiet=True, **kw)


def test_conf_paper_yaml_asks_for_the_minimum_in_the_edm_part_of_image_datasets_only():
    p = protocol()
    assert p.statistics("cifar10", "edm") == ("mean", "min") and p.statistics("cifar10", "noise") == ("mean",)
    assert p.statistics("digits", "edm") == ("mean",) and p.statistics("no-such-dataset", "noise") == ("mean",)


def test_a_wrong_aggregate_entry_is_named_with_the_valid_values():
    assert parse_aggregate({"cifar10": {"edm": "mean"}}) == {"cifar10": {"edm": ("mean",)}}
    with pytest.raises(ValueError, match=r"aggregate\.cifar10\.edm = \['min'\]: a list of mean, min with mean in it"):
        parse_aggregate({"cifar10": {"edm": ["min"]}})
    with pytest.raises(ValueError, match=r"aggregate\.cifar10\.edm = \['mean', 'median'\]"):
        parse_aggregate({"cifar10": {"edm": ["mean", "median"]}})
    with pytest.raises(ValueError, match="unknown part 'teacher'; valid: noise, edm"):
        parse_aggregate({"cifar10": {"teacher": ["mean"]}})


def test_fid_nfe_tables_show_the_minimum_where_the_protocol_asks(results, tmp_path):
    opt = options(results, tmp_path)
    render(["fig-fid-nfe"], opt)
    edm = md_list(opt.tables / f"fid-nfe-cifar10-{EDM}.md")
    assert edm[0] == ["solver", "NFE", "base", "D-ODE", "D-ODE − base", "λ fit [s]"]
    assert edm[1][2:4] == [pm_min(VALUES[EDM, "heun", "none", 5]), pm_min(VALUES[EDM, "heun", "dode", 5])]
    assert "(min …) the minimum over them" in (opt.tables / f"fid-nfe-cifar10-{EDM}.md").read_text()
    csv = pd.read_csv(opt.tables / f"fid-nfe-cifar10-{EDM}.csv")
    assert list(csv.columns) == ["solver", "distill", "nfe", "mean", "std", "min", "n", "seeds"]
    assert csv.set_index("distill")["min"].to_dict() == {"none": 17.75, "dode": 8.25}
    # the noise part: mean ± std only, as D-ODE reports
    noise = md_list(opt.tables / f"fid-nfe-cifar10-{NOISE}.md")
    assert noise[1][2:4] == [pm(VALUES[NOISE, "ddim", "none", 5]), pm(VALUES[NOISE, "ddim", "dode", 5])]
    assert "min" not in pd.read_csv(opt.tables / f"fid-nfe-cifar10-{NOISE}.csv").columns
    assert "(min" not in (opt.tables / f"fid-nfe-cifar10-{NOISE}.md").read_text()


def test_the_option_overrides_the_protocol_both_ways(results, tmp_path):
    off = options(results, tmp_path / "off", min_over_seeds=False)
    render(["fig-fid-nfe"], off)
    assert md_list(off.tables / f"fid-nfe-cifar10-{EDM}.md")[1][2] == pm(VALUES[EDM, "heun", "none", 5])
    on = options(results, tmp_path / "on", min_over_seeds=True)
    render(["fig-fid-nfe"], on)
    assert md_list(on.tables / f"fid-nfe-cifar10-{NOISE}.md")[1][2] == pm_min(VALUES[NOISE, "ddim", "none", 5])


def test_table_time_and_table_learned_show_the_edm_minimum(results, tmp_path):
    opt = options(results, tmp_path)
    render(["table-time", "table-learned"], opt)
    time = pd.read_csv(opt.tables / "time-cifar10.csv").set_index("checkpoint")
    assert time.loc[EDM, "value_min"] == 8.25 and np.isnan(time.loc[NOISE, "value_min"])
    rows = {r[0]: r for r in md_list(opt.tables / "time-cifar10.md")}
    assert rows[EDM][-1] == pm_min(VALUES[EDM, "heun", "dode", 5])
    assert rows[NOISE][-1] == pm(VALUES[NOISE, "ddim", "dode", 5])
    learned = {r[0]: r[1:] for r in md_list(opt.tables / f"learned-cifar10-{EDM}.md")}
    assert learned["IIA-DDIM"] == [pm_min(VALUES[EDM, "ddim", "iia", 5])]
    assert learned["reference: EDM (Heun), 200 steps (NFE 399)"] == [pm_min(VALUES[EDM, "heun", "none", 399])]
    csv = pd.read_csv(opt.tables / f"learned-cifar10-{EDM}.csv").set_index("method")
    assert csv.loc["IIA-DDIM", "min"] == 13.5 and csv.loc["reference: EDM (Heun), 200 steps (NFE 399)", "min"] == 2.0
