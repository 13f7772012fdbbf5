"""dode.report.studies: the computed figures' numbers (Figs. 2 and 5) on an analytic Gaussian-mixture
model with a short DDIM run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dode import fit_correction
from dode.report.model_runs import cosine_data, grid_progress, trajectory_data


@pytest.fixture(scope="module")
def mixture():
    """Three Gaussians on 1×4×4 images (an x0 model)."""
    from dode.core.oracle import GaussianMixture

    g = torch.Generator().manual_seed(0)
    return GaussianMixture(torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64) * 0.5, stds=[0.2] * 3)


def test_cosine_matrix_on_an_analytic_model(mixture):
    noise = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sig, sim = cosine_data(mixture, noise, steps=40)
    assert sim.shape == (40, 40) and len(sig) == 40
    assert np.allclose(np.diag(sim), 1.0) and np.allclose(sim, sim.T)
    assert np.mean([sim[i, i + 1] for i in range(39)]) > 0.9  # neighbouring outputs are highly correlated


def test_trajectory_data_reference_passes_through_student_grid(mixture):
    noise = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fit = torch.randn(32, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    corr = fit_correction(mixture, fit, "ddim", 5, 10, "dode")
    t = trajectory_data(mixture, noise, "ddim", 5, corr, steps=100)
    assert t.ref_steps == 100 and all(x is not None for x in t.ref_at_grid)
    assert len(t.base) == len(t.dode) == len(t.sigmas) == 6
    u = grid_progress(t.sigmas, t.ref_sigmas)
    assert u[0] == 0 and u[-1] == 1 and np.all(np.diff(u) > 0)

    def err(name):
        return float((getattr(t, name)[-1] - t.ref[-1]).pow(2).mean().sqrt())

    assert err("dode") < err("base")  # fitted λ pulls the final sample towards the fine trajectory
