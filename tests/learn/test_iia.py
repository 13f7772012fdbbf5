"""IIA (dode.learn.iia) on the exact float64 Gaussian-mixture oracle: its targets are the fine solver
from the student's own step start, and its fit lowers the per-step error."""
import pytest
import torch

import dode
from dode.core.oracle import GaussianMixture
from dode.core.sampling import solver_grid, trajectory
from dode.learn.iia import FineTargets, fit_iia, step_errors
from dode.learn.s4s import teacher_samples


def _rms(a, b):
    return float((a - b).pow(2).mean().sqrt())


def test_fine_targets_converge_to_the_exact_flow(mixture_noise):
    gm = GaussianMixture(torch.zeros(1, 1, 3, 3) + 0.3, stds=[0.7])
    x = mixture_noise(8, 2) * 5.0
    exact = gm.exact_solution(x, 5.0, 0.5)
    errs = [_rms(FineTargets(gm, "ddim", m)(0, x, 5.0, 0.5), exact) for m in (1, 10, 40)]
    assert errs[1] < errs[0] / 5 and errs[2] < errs[1] / 3
    heun = FineTargets(gm, "heun", 10)
    h10, h40 = _rms(heun(0, x, 5.0, 0.5), exact), _rms(FineTargets(gm, "heun", 40)(0, x, 5.0, 0.5), exact)
    assert h10 < errs[1] / 5 and h40 < h10 / 12 and heun.nfe == 20  # second order; 2 NFE per sub-step


def test_iia_targets_start_from_the_students_step_start_on_heun(models, monkeypatch, mixture_noise):
    """Both stages of a Heun step are fitted to the fine flow over the step, from the step's start."""
    model, noise = models["edm"], mixture_noise(30, 3)
    seen = []
    fine = FineTargets.fine
    monkeypatch.setattr(FineTargets, "fine", lambda self, x, a, b: seen.append((a, b, x)) or fine(self, x, a, b))
    corr = fit_iia(model, noise, "heun", 7, substeps=4)
    _, sig, _ = solver_grid(model, "heun", 7)
    assert [(a, b) for a, b, _ in seen] == list(zip(sig.tolist()[:-1], sig.tolist()[1:]))  # once per step
    _, calls = trajectory(model, noise, "heun", 7, corr)
    starts = [calls[i][1] for i in (0, 2, 4, 6)]  # the Euler-stage inputs are the step starts
    for (_, _, x), want in zip(seen, starts):
        torch.testing.assert_close(x, want, rtol=0, atol=1e-12)
    assert corr.provenance["target_nfe"] == 3 * 8 + 7 and corr.provenance["fine_solver"] == "heun"


@pytest.mark.parametrize("kind,solver,nfe,form", [("edm", "ddim", 6, "iia"), ("edm", "heun", 7, "iia"),
                                                  ("edm", "heun", 7, "biia"), ("vp", "ddim", 6, "iia"),
                                                  ("vp", "dpm2", 6, "iia")])
def test_iia_reduces_the_per_step_error_on_held_out_noise(kind, solver, nfe, form, models, mixture_noise):
    model = models[kind]
    corr = fit_iia(model, mixture_noise(60, 4), solver, nfe, substeps=8, form=form, seeds="0-59")
    assert corr.form == form and corr.theta[0] == [0.0] * len(corr.theta[0])  # no output before the first
    held_out = mixture_noise(60, 5)
    base = step_errors(model, held_out, solver, nfe, None, substeps=8)
    fitted = step_errors(model, held_out, solver, nfe, corr, substeps=8)
    assert fitted.sum() < 0.7 * base.sum(), (base, fitted)
    teacher = teacher_samples(model, held_out)
    base_final = _rms(dode.sample(model, held_out, solver, nfe), teacher)
    assert _rms(dode.sample(model, held_out, solver, nfe, corr), teacher) < base_final
    for key in ("fit_seconds", "substeps", "target_nfe", "solver", "nfe", "batch", "dode_version"):
        assert key in corr.provenance
    assert corr.provenance["method"] == "iia" and corr.provenance["seeds"] == "0-59"
