"""dode.report's tables and figures from runs.csv: a small synthetic runs.csv with known values, so
every cell of every table is checked exactly."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dode.report import cli
from dode.report.data import load_runs, read_samples, stats
from dode.report.labels import method_label
from dode.report.nfe import QUOTED_COSTS, QUOTED_SAMPLING
from dode.report.options import Options
from dode.report.render import render
from dode.report.tables import NOT_GIVEN, fmt_pm

PAPER = sorted(Path("/work/shared/papers").glob("000_*.txt"))

COLUMNS = ["dataset", "checkpoint", "solver", "distill", "nfe", "scale", "batch", "seed", "num_samples", "metric",
           "value", "fit_seconds", "sample_seconds", "metric_seconds", "fit_seed", "run_dir", "grid"]


# ----------------------------------------------------------------------------------- synthetic runs
REFERENCE_VALUE = {1000: 5.0, 399: 10.0}


def value_of(solver, distill, nfe, seed, scale=10, batch=100, lam=None, fit_seed=0, grid=""):
    """A known value per row: base 100/nfe·10, D-ODE lower, seeds ±1 around the mean; on the DMN grid
    5 lower, on the EDM grid 1000 higher."""
    if nfe in REFERENCE_VALUE:  # the models' reference solvers (ddim 1000, heun 399)
        return REFERENCE_VALUE[nfe] + (seed - 1)
    base = {"ddim": 200.0, "ipndm": 150.0, "heun": 300.0, "unipc3_bh2": 120.0, "dpmpp2m": 130.0}[solver] / nfe
    base += {"": 0.0, "dmn": -5.0, "edm": 1000.0}[grid]
    off = {"none": 0.0, "dode": -0.3 * base, "dode_sep": 50.0, "dode_all": 80.0, "dode_2": 1.0, "iia": -0.2 * base,
           "s4s": -0.5 * base, "s4s_fd": -0.6 * base, "s4s_alt": -0.7 * base}.get(distill, 0.0)
    if distill in ("fixed", "lookahead"):
        off = abs(lam - (0.5 if distill == "fixed" else 1.0)) * 3 - (2 if distill == "fixed" else 1)
    if distill == "dode":
        off -= (scale - 10) * 0.1 + (batch - 100) * 0.01
    return base + off + (seed - 1) + 0.0 * fit_seed


def make_results(root: Path, num_samples: int = 500) -> Path:
    rows = []

    def add(ck, solver, distill, nfe, seeds=(0, 1, 2), scale=10, batch=100, fit_seed=0, lam=None, n=num_samples,
            paired=False, grid=""):
        fits = distill not in ("none", "fixed", "lookahead")
        name = f"{solver}-nfe{nfe}-{distill}" + (f"-K{scale}-B{batch}-f{fit_seed}" if fits else "") + \
               (f"-lam{lam}" if lam is not None else "") + f"-n{n}" + (f"-{grid}" if grid else "")
        folder = root / "digits" / ck / name
        folder.mkdir(parents=True, exist_ok=True)
        if lam is not None:
            (folder / "run.json").write_text(json.dumps({"point": {"distill": {"name": distill, "lam": lam}}}))
        for s in seeds:
            fs = s if paired else fit_seed
            rows.append({"dataset": "digits", "checkpoint": ck, "solver": solver, "distill": distill, "nfe": nfe,
                         "scale": scale if fits else None, "batch": batch if fits else None, "seed": s,
                         "num_samples": n, "metric": "fd_digits",
                         "value": value_of(solver, distill, nfe, s, scale, batch, lam, fs, grid),
                         "fit_seconds": 2.0 + nfe / 10 if fits else None,
                         "sample_seconds": 0.01 * nfe * n / 100 * (1.0 + 0.1 * s), "metric_seconds": 0.1,
                         "fit_seed": fs if fits else None, "run_dir": str(folder), "grid": grid})
        return folder

    for nfe in (3, 5, 10, 25, 50):
        for solver in ("ddim", "ipndm"):
            add("digits-ddpm", solver, "none", nfe)
            add("digits-ddpm", solver, "dode", nfe)
    for nfe in (10, 25, 50):
        for dist in ("dode_sep", "dode_all", "dode_2"):
            add("digits-ddpm", "ddim", dist, nfe)
        for lam in (0.25, 0.5, 1.0):
            add("digits-ddpm", "ddim", "fixed", nfe, lam=lam)
            add("digits-ddpm", "ddim", "lookahead", nfe, lam=lam)
        for k in (5, 20):
            for s in (0, 1, 2):
                add("digits-ddpm", "ddim", "dode", nfe, seeds=(s,), scale=k, fit_seed=s, paired=True)
        for b in (5, 50):
            for s in (0, 1, 2):
                add("digits-ddpm", "ddim", "dode", nfe, seeds=(s,), batch=b, fit_seed=s, paired=True)
        for s in (1, 2):  # K = 10, B = 100 with its own fit per seed (seed 0 is the main run)
            add("digits-ddpm", "ddim", "dode", nfe, seeds=(s,), fit_seed=s, paired=True)
    for nfe in (10, 25):
        for s in (0, 1, 2):
            add("digits-ddpm", "ddim", "dode", nfe, seeds=(s,), scale=30, fit_seed=s, paired=True)
    # table-learned: DDIM and its learned variants on both models, and each model's reference solver
    for ck in ("digits-ddpm", "digits-edm"):
        for nfe in (3, 5, 10):
            for dist in ("none", "dode", "iia", "s4s", "s4s_fd", "s4s_alt"):  # no s4s_alt_fd: its row is left out
                if ck == "digits-edm" or dist not in ("none", "dode"):
                    add(ck, "ddim", dist, nfe)
            # the un-learned bases of conf/paper.yaml (unipc3_bh2, dpmpp2m@dmn), and grids that must not mix in
            for solver, grid in (("unipc3_bh2", ""), ("dpmpp2m", "dmn"), ("unipc3_bh2", "edm"), ("dpmpp2m", "edm"),
                                 ("ddim", "edm")):
                add(ck, solver, "none", nfe, grid=grid)
    add("digits-ddpm", "ddim", "none", 1000)
    add("digits-edm", "heun", "none", 399)
    # a smoke run with another num_samples must never mix in
    add("digits-ddpm", "ddim", "none", 10, seeds=(0,), n=50)
    for nfe in (3, 5, 11):
        add("digits-edm", "heun", "none", nfe)
        add("digits-edm", "heun", "dode", nfe)
    # sample shards for Fig. 6 (seed 0 of the EDM runs)
    for p in (root / "digits" / "digits-edm").iterdir():
        sd = p / "seed-0" / "samples"
        sd.mkdir(parents=True, exist_ok=True)
        imgs = np.random.default_rng(0).integers(0, 256, size=(20, 8, 8, 1), dtype=np.uint8)
        np.savez(sd / "shard-0000000-0000020.npz", images=imgs, indices=np.arange(20), seed=0)
    pd.DataFrame(rows, columns=COLUMNS).to_csv(root / "runs.csv", index=False)
    return root


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return make_results(tmp_path_factory.mktemp("results"))


def options(results: Path, **kw) -> Options:
    return Options(results=results, dataset="digits", quiet=True, **kw)


def md_rows(path: Path, title_contains: str = "") -> dict:
    """{first cell: [cells]} of the first Markdown table (after a title containing the string)."""
    lines = path.read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("### ") and title_contains in l)
    out, seen = {}, False
    for l in lines[start + 1:]:
        if l.startswith("### "):
            break
        if l.startswith("|"):
            cells = [c.strip() for c in l.strip("|").split("|")]
            if not seen:
                out["__header__"] = cells
                seen = True
            elif not set(cells[0]) <= {"-", ":"}:
                out[cells[0]] = cells[1:]
    return out


def md_list(path: Path) -> list[list[str]]:
    """Every row (header first) of the first Markdown table of a file."""
    out = []
    for l in path.read_text().splitlines():
        if l.startswith("|"):
            cells = [c.strip() for c in l.strip("|").split("|")]
            if not set(cells[0]) <= {"-", ":"}:
                out.append(cells)
        elif out:
            break
    return out


def pm(mean, std):
    return f"{mean:.2f} ± {std:.2f}"


# ------------------------------------------------------------------------------------------ helpers
def test_fmt_and_stats():
    assert fmt_pm(*stats([1.0, 2.0, 3.0])) == "2.00 ± 1.00"
    assert fmt_pm(*stats([4.0])) == "4.00"
    assert fmt_pm(*stats([])) == "—"
    assert fmt_pm(*stats([1.0, float("nan"), 3.0])) == pm(2.0, math.sqrt(2))
    assert method_label("ddim", "dode_sep") == "D-DDIM-Sep"
    assert method_label("heun", "dode") == "D-EDM"
    assert method_label("ddim", "lookahead") == "LA-DDIM"
    assert method_label("ddim", "fixed") == "Fixed-D-DDIM"


def test_load_runs_reads_lambda_of_fixed_runs(results):
    df = load_runs(results)
    fixed = df[df["distill"] == "fixed"]
    assert sorted(fixed["lam"].unique()) == [0.25, 0.5, 1.0]
    assert df[df["distill"] == "dode"]["lam"].isna().all()


# ------------------------------------------------------------------------------------------- tables
def test_table_formulations(results):
    opt = options(results)
    files = render(["table-formulations"], opt)
    md = opt.tables / "formulations-digits-digits-ddpm.md"
    assert md in files and (opt.tables / "formulations-digits-digits-ddpm.csv") in files
    rows = md_rows(md, "Formulations")
    assert rows["__header__"] == ["NFE", "10", "25", "50"]
    assert list(rows)[1:] == ["DDIM", "D-DDIM-Sep", "D-DDIM-All", "D-DDIM", "D-DDIM-2"]  # the paper's order
    for label, dist in (("DDIM", "none"), ("D-DDIM-Sep", "dode_sep"), ("D-DDIM", "dode"), ("D-DDIM-2", "dode_2")):
        for cell, nfe in zip(rows[label], (10, 25, 50)):
            vals = [value_of("ddim", dist, nfe, s) for s in (0, 1, 2)]
            assert cell == pm(np.mean(vals), np.std(vals, ddof=1)), (label, nfe)
    assert rows["DDIM"][0] == "20.00 ± 1.00"  # the 50-sample smoke row is not mixed in
    diff = md_rows(md, "Paired")
    assert diff["D-DDIM-Sep − DDIM"] == ["+50.00 ± 0.00"] * 3
    assert diff["D-DDIM − DDIM"][0] == f"{-0.3 * 20:+.2f} ± 0.00"
    assert diff["D-DDIM-All − D-DDIM"][0] == f"{80 + 0.3 * 20:+.2f} ± 0.00"
    paper = md_rows(md, "Published")
    assert paper["D-DDIM"] == ["8.67", "8.18", "6.55"] and paper["D-DDIM-All"] == ["179.67", "36.65", "18.48"]
    csv = pd.read_csv(opt.tables / "formulations-digits-digits-ddpm.csv")
    assert {"method", "distill", "nfe", "mean", "std", "n"} <= set(csv.columns)
    assert len(csv) == 15 and (csv["n"] == 3).all()


def test_table_ablation_scale_pairs_fit_seeds_and_marks_capped_k(results):
    opt = options(results)
    render(["table-ablation-scale"], opt)
    rows = md_rows(opt.tables / "ablation-scale-digits-digits-ddpm.md", "Ablation")
    assert rows["__header__"] == ["NFE", "10", "25", "50"]
    assert list(rows)[1:] == ["K = 5", "K = 10", "K = 20", "K = 30", "DDIM (no λ)"]
    for k in (5, 10, 20):
        for cell, nfe in zip(rows[f"K = {k}"], (10, 25, 50)):
            vals = [value_of("ddim", "dode", nfe, s, scale=k) for s in (0, 1, 2)]
            assert cell == pm(np.mean(vals), np.std(vals, ddof=1))
    # K = 30 at NFE 50: K·N > T = 1000; shows the K = 20 run in parentheses with a dagger
    k20 = [value_of("ddim", "dode", 50, s, scale=20) for s in (0, 1, 2)]
    assert rows["K = 30"][2] == f"({pm(np.mean(k20), np.std(k20, ddof=1))})†"
    assert rows["K = 30"][0] != rows["K = 30"][2]
    diff = md_rows(opt.tables / "ablation-scale-digits-digits-ddpm.md", "Paired")
    assert list(diff)[1:] == ["K = 5 − K = 10", "K = 20 − K = 10", "K = 30 − K = 10"]
    assert diff["K = 5 − K = 10"] == ["+0.50 ± 0.00"] * 3 and diff["K = 30 − K = 10"][2] == "—"
    text = (opt.tables / "ablation-scale-digits-digits-ddpm.md").read_text()
    assert "† K·N > T = 1000" in text


def test_table_ablation_batch(results):
    opt = options(results)
    render(["table-ablation-batch"], opt)
    rows = md_rows(opt.tables / "ablation-batch-digits-digits-ddpm.md", "Ablation")
    assert list(rows)[1:] == ["B = 5", "B = 50", "B = 100", "DDIM (no λ)"]
    for b in (5, 50, 100):
        vals = [value_of("ddim", "dode", 25, s, batch=b) for s in (0, 1, 2)]
        assert rows[f"B = {b}"][1] == pm(np.mean(vals), np.std(vals, ddof=1))


def test_table_lookahead_picks_best_lambda_and_shows_grid(results):
    opt = options(results)
    files = render(["table-lookahead"], opt)
    md = opt.tables / "lookahead-digits-digits-ddpm.md"
    rows = md_rows(md, "Fixed-D-DDIM and LA-DDIM")
    assert list(rows)[1:] == ["DDIM", "D-DDIM", "Fixed-D-DDIM", "LA-DDIM"]
    best_fixed = [value_of("ddim", "fixed", 10, s, lam=0.5) for s in (0, 1, 2)]
    assert rows["Fixed-D-DDIM"][0] == f"{pm(np.mean(best_fixed), np.std(best_fixed, ddof=1))} (λ = 0.5)"
    assert rows["LA-DDIM"][0].endswith("(λ = 1)")
    grid = md_rows(md, "grid search")
    assert len(grid) - 1 == 6 and "Fixed-D-DDIM λ = 0.25" in grid
    assert "{0.25, 0.5, 1}" in md.read_text()
    png = opt.figures / "lookahead-grid-digits-digits-ddpm.png"
    assert png in files and png.stat().st_size > 1000


def test_table_time_extrapolates_to_50k(results):
    opt = options(results)
    render(["table-time"], opt)
    md = opt.tables / "time-digits.md"
    text = md.read_text()
    assert "extrapolated linearly" in text and NOT_GIVEN in text
    rows = md_rows(md, "Time of D-ODE")
    assert rows["__header__"][:4] == ["checkpoint", "method", "NFE", "λ fit [s]"]
    csv = pd.read_csv(opt.tables / "time-digits.csv")
    r = csv[(csv["checkpoint"] == "digits-edm") & (csv["nfe"] == 5)].iloc[0]
    per = [0.01 * 5 * 500 / 100 * (1 + 0.1 * s) / 500 * 50000 for s in (0, 1, 2)]
    assert r["method"] == "D-EDM"
    assert r["sample_seconds_50k"] == pytest.approx(np.mean(per))
    assert r["fit_seconds"] == pytest.approx(2.5)
    assert r["total_seconds"] == pytest.approx(2.5 + np.mean(per))
    assert csv["method"].iloc[0] == "D-EDM"  # the paper's Table 1 is D-EDM: listed first
    quoted = md_rows(md, "quoted")
    assert any(k.startswith("Consistency distillation") for k in quoted)


@pytest.mark.skipif(not PAPER, reason="the paper text is not in /work/shared/papers")
def test_quotes_are_in_the_paper_text():
    text = PAPER[0].read_text()
    for _, _, _, said in QUOTED_COSTS:
        for q in said.split('"')[1::2]:
            assert q in text, q
    for q in QUOTED_SAMPLING.split('"')[1::2]:
        assert q in text


# ------------------------------------------------------------------------------------------ figures
def test_fig_fid_nfe_and_its_table(results):
    opt = options(results)
    files = render(["fig-fid-nfe"], opt)
    for ck in ("digits-ddpm", "digits-edm"):
        for ext in ("png", "pdf"):
            f = opt.figures / f"fid-nfe-digits-{ck}.{ext}"
            assert f in files and f.stat().st_size > 1000
    rows = md_list(opt.tables / "fid-nfe-digits-digits-ddpm.md")
    assert rows[0] == ["solver", "NFE", "base", "D-ODE", "D-ODE − base", "λ fit [s]"]
    by = {(r[0], r[1]): r[2:] for r in rows[1:]}
    assert len(by) == 10  # 2 solvers × 5 NFE
    base = [value_of("ddim", "none", 3, s) for s in (0, 1, 2)]
    dode = [value_of("ddim", "dode", 3, s) for s in (0, 1, 2)]
    assert by[("DDIM / D-DDIM", "3")] == [pm(np.mean(base), 1.0), pm(np.mean(dode), 1.0),
                                          f"{np.mean(dode) - np.mean(base):+.2f} ± 0.00", "2.3"]  # paired by seed
    assert ("iPNDM / D-iPNDM", "50") in by


def test_table_learned_lists_methods_bases_reference_fit_times_and_the_goals(results):
    opt = options(results)
    files = render(["table-learned"], opt)
    for ck, ref, verdict in (("digits-ddpm", 5.0, "not met"), ("digits-edm", 10.0, "met")):
        md = opt.tables / f"learned-digits-{ck}.md"
        png = opt.figures / f"learned-digits-{ck}.png"
        assert md in files and png in files and png.stat().st_size > 1000
        rows = md_rows(md, "Learned solvers")
        assert rows["__header__"] == ["NFE", "3", "5", "10"]  # only the NFE that were run, in order
        # the un-learned bases of conf/paper.yaml right after the learned solver's own row
        reference = "DDIM, 1000 steps (NFE 1000)" if ref == 5.0 else "EDM (Heun), 200 steps (NFE 399)"
        assert list(rows)[1:] == ["DDIM", "UniPC-3 (bh2)", "DPM-Solver++(2M), DMN grid", "D-DDIM", "IIA-DDIM",
                                  "S4S (DDIM)", "S4S (DDIM, features)", "S4S-Alt (DDIM)", f"reference: {reference}"]
        for label, solver, dist, grid in (("DDIM", "ddim", "none", ""), ("IIA-DDIM", "ddim", "iia", ""),
                                          ("S4S-Alt (DDIM)", "ddim", "s4s_alt", ""),
                                          ("UniPC-3 (bh2)", "unipc3_bh2", "none", ""),  # not its EDM-grid runs
                                          ("DPM-Solver++(2M), DMN grid", "dpmpp2m", "none", "dmn")):
            assert rows[label] == [pm(np.mean([value_of(solver, dist, n, s, grid=grid) for s in (0, 1, 2)]), 1.0)
                                   for n in (3, 5, 10)], label
        assert set(list(rows.values())[-1]) == {pm(ref, 1.0)}
        ratio = md_rows(md, "Ratio to the reference")
        assert ratio["S4S (DDIM)"][1] == f"{(40.0 - 20.0) / ref:.2f}×"
        assert ratio["DPM-Solver++(2M), DMN grid"][1] == f"{(26.0 - 5.0) / ref:.2f}×"
        fit = md_rows(md, "Fit time")
        assert "DDIM" not in fit and "UniPC-3 (bh2)" not in fit and fit["S4S (DDIM)"] == ["2.3", "2.5", "3.0"]
        text = md.read_text()
        best = 40.0 - 28.0  # S4S-Alt at NFE 5
        assert (f"Goal (best learned solver at NFE 5 within 1.25× the reference's FD-digits): **{verdict}** — "
                f"S4S-Alt (DDIM) {best:.2f} vs reference {ref:.2f}, ratio {best / ref:.2f}." in text)
        assert "Goal (best learned solver at NFE 4 within 2× the reference's FD-digits): not measured." in text
        assert "Every learned method at least as good as the base solver (DDIM) at every NFE: **yes**." in text
        assert "UniPC-3 (bh2), DPM-Solver++(2M), DMN grid" in text  # the caption lists the bases
        assert "D-DDIM, IIA-DDIM, S4S (DDIM), S4S (DDIM, features), S4S-Alt (DDIM)" in text  # and the methods
        csv = pd.read_csv(opt.tables / f"learned-digits-{ck}.csv", keep_default_na=False)
        assert len(csv) == 8 * 3 + 1 and float(csv["mean"].iloc[-1]) == pytest.approx(ref)
        assert float(csv[(csv["distill"] == "s4s") & (csv["nfe"] == 5)]["fit_seconds"].item()) == pytest.approx(2.5)
        dmn = csv[csv["method"] == "DPM-Solver++(2M), DMN grid"]
        assert list(dmn["solver"]) == ["dpmpp2m"] * 3 and set(dmn["grid"]) == {"dmn"}
        assert set(dmn["distill"]) == {"none"}


def test_table_learned_says_which_learned_method_is_worse_than_its_base(tmp_path):
    """A learned method worse than the base solver at one NFE (means over seeds) is named, with the NFE; a
    base row being worse or better changes no verdict (it is not learned)."""
    root = make_results(tmp_path / "r")
    runs = pd.read_csv(root / "runs.csv", keep_default_na=False)
    worse = (runs["checkpoint"] == "digits-ddpm") & (runs["distill"] == "iia") & (runs["nfe"] == 3)
    runs.loc[worse, "value"] = runs.loc[worse, "value"] + 100.0
    better = (runs["checkpoint"] == "digits-ddpm") & (runs["solver"] == "unipc3_bh2") & (runs["grid"] == "")
    runs.loc[better, "value"] = 1.0  # far below the reference: the goal still looks at learned methods only
    runs.to_csv(root / "runs.csv", index=False)
    opt = options(root)
    render(["table-learned"], opt)
    text = (opt.tables / "learned-digits-digits-ddpm.md").read_text()
    assert "at least as good as the base solver (DDIM) at every NFE: **no** — IIA-DDIM@3." in text
    assert "NFE 5 within 1.25× the reference's FD-digits): **not met** — S4S-Alt (DDIM)" in text


def test_table_learned_shows_a_method_fitted_on_more_noises_as_its_own_row(tmp_path):
    """conf/paper.yaml's learned.extra_batches (s4s_alt_fd: [400]): the method's B = 100 fits stay in its
    own row, its B = 400 fits get the row "…, B = 400" right after it (in the goal, the fit-time table,
    the CSV and the caption); a fit on any other B shows nowhere."""
    root = make_results(tmp_path / "r")
    runs = pd.read_csv(root / "runs.csv", keep_default_na=False)
    one = runs[(runs["checkpoint"] == "digits-edm") & (runs["distill"] == "s4s_alt")].copy()
    values = {100: 50.0, 400: -2.0, 200: -5.0}  # B → an offset per B (B = 200, the best, must not show)
    extra = [one.assign(distill="s4s_alt_fd", batch=b, value=one["value"] + v, run_dir=one["run_dir"] + f"-fd-B{b}",
                        fit_seconds=one["fit_seconds"].astype(float) * b) for b, v in values.items()]
    pd.concat([runs, *extra]).to_csv(root / "runs.csv", index=False)
    opt = options(root)
    render(["table-learned"], opt)
    md = opt.tables / "learned-digits-digits-edm.md"
    rows = md_rows(md, "Learned solvers")
    fd, fd400 = "S4S-Alt (DDIM, features)", "S4S-Alt (DDIM, features), B = 400"
    assert list(rows)[-3:] == [fd, fd400, "reference: EDM (Heun), 200 steps (NFE 399)"]
    for label, b in ((fd, 100), (fd400, 400)):
        assert rows[label] == [pm(np.mean([value_of("ddim", "s4s_alt", n, s) for s in (0, 1, 2)]) + values[b], 1.0)
                               for n in (3, 5, 10)], label
    assert md_rows(md, "Fit time")[fd400] == [f"{(2.0 + n / 10) * 400:.1f}" for n in (3, 5, 10)]
    text = md.read_text()
    best = 40.0 - 28.0 - 2.0
    assert f"**met** — {fd400} {best:.2f} vs reference 10.00" in text
    assert "every fit on the first B = 100 noises of fit seed 0 (rows \"…, B = 400\": its first 400)" in text
    assert "S4S-Alt (DDIM), S4S-Alt (DDIM, features) (K = 10" in text  # the methods' list names each method once
    csv = pd.read_csv(opt.tables / "learned-digits-digits-edm.csv", keep_default_na=False)
    assert list(csv[csv["method"] == fd400]["distill"]) == ["s4s_alt_fd"] * 3


def test_extra_batches_are_checked_and_reach_the_sweep():
    """learned.extra_batches names learned methods and positive B; `query make` lists METHOD:B of the
    methods swept on the dataset (s4s_alt_fd is digits-only)."""
    from dode.report.protocol import parse_extra_batches, protocol

    assert parse_extra_batches({"s4s": 400, "ld3": [50, 200]}, ("s4s", "ld3")) == {"s4s": (400,), "ld3": (50, 200)}
    with pytest.raises(ValueError, match=r"learned.extra_batches.dpm: 'dpm' is not in learned.methods \(s4s\)"):
        parse_extra_batches({"dpm": 400}, ("s4s",))
    for bad in (0, [], [100, "x"], True):
        with pytest.raises(ValueError, match="expected a positive integer B or a list of them"):
            parse_extra_batches({"s4s": bad}, ("s4s",))
    assert protocol().extra_batches_for("digits") == (("s4s_alt_fd", 400),)
    assert protocol().extra_batches_for("cifar10") == ()
    assert "PAPER_LEARNED_EXTRA:=s4s_alt_fd:400" in cli.make_variables("digits")
    assert "PAPER_LEARNED_EXTRA:=" in cli.make_variables("cifar10")


def test_table_learned_reads_a_runs_csv_without_the_grid_column(tmp_path):
    """An older runs.csv (no `grid`): every row is on the protocol's grid, so a base on another grid has no row."""
    root = make_results(tmp_path / "r")
    runs = pd.read_csv(root / "runs.csv", keep_default_na=False)
    runs[runs["grid"] == ""].drop(columns="grid").to_csv(root / "runs.csv", index=False)
    opt = options(root)
    render(["table-learned"], opt)
    rows = md_rows(opt.tables / "learned-digits-digits-edm.md", "Learned solvers")
    assert list(rows)[1:4] == ["DDIM", "UniPC-3 (bh2)", "D-DDIM"]


def test_cells_repeated_by_an_older_run_folder_use_the_newest(tmp_path, capsys):
    """Two configs with the same names (e.g. another distill.iters) must not be averaged together."""
    import os

    root = make_results(tmp_path / "r")
    runs = pd.read_csv(root / "runs.csv")
    rows = runs[(runs["checkpoint"] == "digits-ddpm") & (runs["distill"] == "s4s") & (runs["nfe"] == 5)].copy()
    old = Path(rows["run_dir"].iloc[0])
    new = old.with_name(old.name + "-other-config")
    new.mkdir()
    for folder, t in ((old, 1_000_000), (new, 2_000_000)):
        (folder / "run.json").write_text("{}")
        os.utime(folder / "run.json", (t, t))
    rows["run_dir"], rows["value"] = str(new), rows["value"] + 100.0
    pd.concat([runs, rows]).to_csv(root / "runs.csv", index=False)
    opt = Options(results=root, dataset="digits", nfe=(5,))
    render(["table-learned"], opt)
    cell = md_rows(opt.tables / "learned-digits-digits-ddpm.md", "Learned")["S4S (DDIM)"]
    assert cell == [pm(np.mean([value_of("ddim", "s4s", 5, s) for s in (0, 1, 2)]) + 100.0, 1.0)]
    assert f"using the newest, ignoring: {old.name}" in capsys.readouterr().out
    assert len(pd.read_csv(render(["table-runs"], opt)[0])) == len(runs) + 3  # table-runs keeps all


def test_table_learned_needs_valid_teachers(results, capsys):
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["table-learned", "--teacher-edm", "heun"])
    assert "expected SOLVER:NFE" in capsys.readouterr().err
    opt = options(results, teachers={"noise": ("ddim", 999), "edm": ("heun", 399)}, nfe=(5,))
    render(["table-learned"], opt)
    text = (opt.tables / "learned-digits-digits-ddpm.md").read_text()
    assert "reference:" not in text and "not measured" in text  # no run of that reference: said so, not guessed
    assert md_rows(opt.tables / "learned-digits-digits-ddpm.md", "Learned")["__header__"] == ["NFE", "5"]


def test_fig_samples_reads_shards(results):
    opt = options(results)
    opt.samples_nfe = {"heun": (3, 5, 11)}
    files = render(["fig-samples"], opt)
    png = opt.figures / "samples-digits-digits-edm.png"
    assert png in files and png.stat().st_size > 1000
    imgs = read_samples(Path(load_runs(results).query("checkpoint == 'digits-edm'")["run_path"].iloc[0]),
                               0, 16)
    assert imgs.shape == (16, 8, 8, 1) and imgs.dtype == np.uint8


def test_table_runs_keeps_every_seed(results):
    opt = options(results)
    (path,) = render(["table-runs"], opt)
    rows = pd.read_csv(path)
    assert len(rows) == len(pd.read_csv(results / "runs.csv")) and "run_path" not in rows
    assert sorted(rows[rows["distill"] == "lookahead"]["lam"].unique()) == [0.25, 0.5, 1.0]


def test_a_default_run_renders_only_what_it_has_data_for(results, tmp_path, capsys):
    """Results of the default dode-run (DDIM and D-DDIM only) give the NFE figure and table, and no
    near-empty tables for the formulations, ablations, one-λ baselines or learned solvers (issue 15)."""
    runs = pd.read_csv(results / "runs.csv")
    keep = (runs["checkpoint"] == "digits-ddpm") & (runs["solver"] == "ddim") & runs["distill"].isin(["none", "dode"]) \
        & (runs["fit_seed"].isna() | ((runs["fit_seed"] == 0) & (runs["scale"] == 10) & (runs["batch"] == 100)))
    root = tmp_path / "default"
    root.mkdir()
    runs[keep].to_csv(root / "runs.csv", index=False)
    opt = Options(results=root, dataset="digits", edm_checkpoint="")
    files = render(["fig-fid-nfe", "table-formulations", "table-ablation-scale", "table-ablation-batch",
                    "table-lookahead", "table-learned"], opt)
    assert sorted(f.name for f in files) == ["fid-nfe-digits-digits-ddpm.csv", "fid-nfe-digits-digits-ddpm.md",
                                             "fid-nfe-digits-digits-ddpm.pdf", "fid-nfe-digits-digits-ddpm.png"]
    out = capsys.readouterr().out
    for words in ("table-formulations: no runs of D-DDIM's other formulations", "table-ablation-scale: fewer than two",
                  "table-ablation-batch: fewer than two", "table-lookahead: no Fixed-D-DDIM or LA-DDIM runs",
                  "table-learned: no ddim runs of a learned method other than D-ODE"):
        assert words in out, out


def test_mixed_seed_counts_are_said_not_silent(results, tmp_path, capsys):
    """A one-seed run beside three-seed runs in one table gets a note (issue 15, item 2)."""
    runs = pd.read_csv(results / "runs.csv")
    one = runs[(runs["checkpoint"] == "digits-ddpm") & (runs["solver"] == "ddim") & (runs["distill"] == "none")
               & (runs["nfe"] == 10) & (runs["seed"] != 0)].index
    root = tmp_path / "mixed"
    root.mkdir()
    runs.drop(index=one).to_csv(root / "runs.csv", index=False)
    render(["fig-fid-nfe"], Options(results=root, dataset="digits"))
    out = capsys.readouterr().out
    assert "note: fid-nfe-digits-digits-ddpm.md: its cells rest on different numbers of evaluation seeds (1, 3)" in out
    render(["fig-fid-nfe"], Options(results=results, dataset="digits"))
    assert "different numbers of evaluation seeds" not in capsys.readouterr().out


def test_a_caption_states_what_the_nfe_of_its_rows_count():
    """Tables and figures say their NFE convention (runs.csv's nfe_convention of the selected rows)."""
    import pandas as pd

    from dode.report.data import Selection, conventions
    from dode.report.tables import caption_common
    from dode.runner.results import NFE_CONVENTIONS

    rows = pd.DataFrame({"nfe_convention": ["guided", "guided", None]})
    cap = caption_common(Selection("fid30k", 10, conventions(rows)), [0])
    assert cap.endswith(f"NFE — guided: {NFE_CONVENTIONS['guided']}; some rows: not recorded")
    assert caption_common(Selection("fid30k", 10, conventions(rows.iloc[:2])), [0]).endswith(
        "two network passes per sample)")
    assert "NFE" not in caption_common(Selection("fid30k", 10), [0])


def test_a_higher_is_better_metric_inverts_the_at_least_as_good_verdict_and_has_no_distance_goals():
    """The CLIP score (conf/eval/clip30k.yaml `better: higher`): captions say so, a learned method is worse
    than its base when its mean is lower, and the ratio goals (made for distances) do not apply."""
    import pandas as pd

    from dode.report import learned
    from dode.report.labels import better_text, higher_is_better

    assert higher_is_better("clip30k") and not higher_is_better("fid30k") and not higher_is_better("fd_digits")
    assert better_text("clip30k") == "higher is better" and better_text("fd_digits") == "lower is better"
    rows = [learned.Row("none", "DDIM", "ddim", "none"), learned.Row("dode", "D-DDIM", "ddim", "dode")]
    curves = pd.DataFrame({"row": ["none", "dode", "none", "dode"], "nfe": [5, 5, 10, 10],
                           "mean": [30.0, 31.0, 32.0, 31.5], "n": [3] * 4})
    assert learned._not_worse(curves, rows, [5, 10], higher=True).endswith("**no** — D-DDIM@10.")
    assert learned._not_worse(curves, rows, [5, 10]).endswith("**no** — D-DDIM@5.")
    info = type("Info", (), {"metric": "clip30k"})()
    assert "not applicable" in learned._goal(curves, rows, 5, 1.25, None, info)


def test_a_table_shows_one_guidance_scale_and_says_which_others_it_left_out():
    """Runs of one checkpoint under two guidance scales never share a table: the most common scale is
    shown (runs.csv's `guidance`), a note names the other."""
    import pandas as pd

    from dode.report.data import select

    said = []
    opt = type("Opt", (), {"dataset": "coco", "metric": None, "num_samples": None, "fit_seed": 0,
                           "say": staticmethod(said.append)})()
    base = {"dataset": "coco", "checkpoint": "sd", "solver": "ddim", "distill": "none", "nfe": 5, "scale": None,
            "batch": None, "fit_seed": None, "metric": "fid30k", "num_samples": 30000, "grid": "", "lam": float("nan")}
    rows = [{**base, "seed": s, "value": v, "guidance": w, "run_path": f"/r/{w}", "run_dir": f"/r/{w}"}
            for s, (v, w) in enumerate([(10.0, "7.5"), (11.0, "7.5"), (20.0, "3")])]
    d, info = select(pd.DataFrame(rows), opt, "sd")
    assert d["guidance"].tolist() == ["7.5", "7.5"] and d["value"].tolist() == [10.0, 11.0]
    assert info.metric == "fid30k" and any("guidance scale 7.5 shown" in s and "3" in s for s in said)


def test_a_table_shows_one_set_of_network_options_and_says_which_others_it_left_out():
    """fp32 and fp16 runs of one checkpoint never share a cell: the most common options are shown
    (runs.csv's `precision`, "" for fp32), a note names the others."""
    from dode.report.data import select

    said = []
    opt = type("Opt", (), {"dataset": "digits", "metric": None, "num_samples": None, "fit_seed": 0,
                           "say": staticmethod(said.append)})()
    base = {"dataset": "digits", "checkpoint": "ck", "solver": "ddim", "distill": "none", "nfe": 5, "scale": None,
            "batch": None, "fit_seed": None, "metric": "fd_digits", "num_samples": 100, "grid": "", "guidance": "",
            "lam": float("nan")}
    rows = [{**base, "seed": s, "value": v, "precision": p, "run_path": f"/r/{p}{s}", "run_dir": f"/r/{p}{s}"}
            for s, (v, p) in enumerate([(10.0, "fp16"), (11.0, "fp16"), (20.0, "")])]
    d, _ = select(pd.DataFrame(rows), opt, "ck")
    assert d["value"].tolist() == [10.0, 11.0]
    assert said == ["note: digits/ck: runs with network options fp16 shown; others in runs.csv not mixed in: "
                    "fp32 (defaults)"]
