"""Learned grids (dode.learn.grids): the monotone parametrisation, and saved IIA/S4S/S4S-Alt fits
that reload and reproduce their samples bit for bit on the grid they were fitted on."""
import json
import math

import pytest
import torch

import dode
from dode.core.forms import Correction
from dode.core.sampling import solver_grid
from dode.learn.grids import MonotoneGrid, grid_of, sample_learned
from dode.learn.iia import fit_iia
from dode.learn.s4s import fit_s4s
from dode.learn.s4s_alt import fit_s4s_alt


def test_monotone_grid_parametrisation(models):
    for kind, space in (("edm", "rho"), ("edm", "logsigma"), ("vp", "time")):
        _, sig, _ = solver_grid(models[kind], "ddim", 6)
        mg = MonotoneGrid(models[kind], sig, space)
        assert mg.n_free == 4
        torch.testing.assert_close(mg.sigmas(mg.init), sig, rtol=1e-12, atol=0)
        for seed in range(5):
            logits = torch.randn(mg.n_free, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
            g = mg.sigmas(logits)
            assert MonotoneGrid.monotone(g) and g[0] == sig[0] and g[-2] == sig[-2] and g[-1] == 0
        free = MonotoneGrid(models[kind], sig, space, free_end=True)  # the last positive σ is learned too
        assert free.n_free == 5
        torch.testing.assert_close(free.sigmas(free.init), sig, rtol=1e-12, atol=0)
        for seed in range(5):
            logits = torch.randn(free.n_free, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
            g = free.sigmas(logits)
            lo = min(models[kind].sigma_min, float(sig[-2]))  # never below the model's σ_min
            assert MonotoneGrid.monotone(g) and g[0] == sig[0] and g[-1] == 0
            assert lo * (1 - 1e-12) <= g[-2] < sig[0]
            u = free._u(torch.tensor([lo, float(sig[0])], dtype=torch.float64))
            want = u[0] + (u[1] - u[0]) * (1 - math.exp(-float(logits[-1]) ** 2))  # in the grid's own space
            assert float(free._u(g[-2:-1])) == pytest.approx(float(want), rel=1e-12)
    with pytest.raises(ValueError, match="free_end needs a grid that ends at σ = 0"):
        MonotoneGrid(models["edm"], torch.tensor([80.0, 1.0, 0.1], dtype=torch.float64), free_end=True)


def test_saved_fits_reload_and_reproduce_samples_exactly(models, tmp_path, mixture_noise):
    model, noise, held_out = models["edm"], mixture_noise(32, 17), mixture_noise(8, 18).float()
    fits = {
        "iia": fit_iia(model, noise, "heun", 5, substeps=4, seeds="0-31"),
        "s4s": fit_s4s(model, noise, "ddim", 4, iters=10, teacher_nfe=19, seeds="0-31"),
        "s4s_alt": fit_s4s_alt(model, noise, "ddim", 4, rounds=1, iters=10, round_iters=5, grid_evals=8,
                               teacher_nfe=19, seeds="0-31"),
    }
    for name, corr in fits.items():
        path = corr.save(tmp_path / name / "lambdas.json")
        meta = json.loads(path.read_text())["provenance"]
        assert meta["seeds"] == "0-31" and meta["fit_seconds"] > 0 and meta["method"] == name
        loaded = Correction.load(path)
        assert loaded.form == corr.form and loaded.space == "x0" and loaded.theta == corr.theta
        solver, nfe = meta["solver"], meta["nfe"]
        want = dode.sample(model, held_out, solver, nfe, corr, grid=grid_of(corr))
        assert torch.equal(dode.sample(model, held_out, solver, nfe, loaded, grid=grid_of(loaded)), want)
        assert torch.equal(sample_learned(model, held_out, loaded), want)
    assert isinstance(grid_of(fits["s4s_alt"]), torch.Tensor) and grid_of(fits["s4s"], "edm") == "edm"
