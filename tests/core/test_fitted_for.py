"""A correction carries what it was fitted for — solver, NFE, σ grid — and dode.sample refuses, in one
line, any run it does not fit (issue: a λ file with 2 of 5 values used to run with the rest as 0)."""
import pytest
import torch

import dode
from dode.core.forms import Correction, FittedFor
from dode.errors import CorrectionMismatch, UserError
from dode.learn import fit_s4s_alt, grid_of


@pytest.fixture(scope="module")
def fitted(models, mixture_noise):
    return dode.fit_correction(models["vp"], mixture_noise(16, 3), "ddim", 5, scale=4)


def test_a_fit_records_its_solver_nfe_and_grid(fitted, models):
    _, sigmas, _ = dode.core.sampling.solver_grid(models["vp"], "ddim", 5)
    assert fitted.fitted_for == FittedFor("ddim", 5, tuple(sigmas.tolist()))


@pytest.mark.parametrize("solver, nfe, grid, words", [
    ("dpm3", 5, None, ["fitted for ddim, NFE 5", "not for dpm3"]),
    ("ddim", 6, None, ["θ for 5 model evaluations", "makes 6"]),
    ("ddim", 5, "time_quadratic", ["another σ grid", "6 points"]),
])
def test_sample_refuses_another_solver_nfe_or_grid(fitted, models, mixture_noise, solver, nfe, grid, words):
    with pytest.raises(CorrectionMismatch) as e:
        dode.sample(models["vp"], mixture_noise(2, 0), solver, nfe, fitted, grid=grid)
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    assert all(w in str(e.value) for w in words), str(e.value)
    with pytest.raises(CorrectionMismatch):
        dode.trajectory(models["vp"], mixture_noise(2, 0), solver, nfe, fitted, grid=grid)


def test_a_truncated_lambda_file_is_refused_not_padded_with_zeros(fitted, models, mixture_noise, tmp_path):
    d = fitted.to_dict()
    d["theta"] = d["theta"][:2]
    short = Correction(d["form"], d["theta"], d["space"], d["provenance"])
    with pytest.raises(CorrectionMismatch, match="θ for 2 model evaluations, the run makes 5"):
        dode.sample(models["vp"], mixture_noise(2, 0), "ddim", 5, short)
    with pytest.raises(CorrectionMismatch, match="θ for 3 model evaluations"):
        dode.sample(models["vp"], mixture_noise(2, 0), "ddim", 5, [0.1, 0.2, 0.3])  # bare λ: the length alone


def test_the_identity_survives_a_reload_and_the_fitted_run_still_works(fitted, models, mixture_noise, tmp_path):
    again = Correction.load(fitted.save(tmp_path / "lambdas.json"))
    assert again.fitted_for == fitted.fitted_for
    x = mixture_noise(4, 1)
    torch.testing.assert_close(dode.sample(models["vp"], x, "ddim", 5, again),
                               dode.sample(models["vp"], x, "ddim", 5, fitted), rtol=0, atol=0)
    with pytest.raises(CorrectionMismatch):
        dode.sample(models["vp"], x, "ddim", 10, again)


def test_hand_made_and_fixed_corrections_check_what_they_know(models, mixture_noise):
    fixed = Correction.fixed("dode", 0.1, 5)
    assert fixed.fitted_for == FittedFor(None, 5, None)
    dode.sample(models["vp"], mixture_noise(2, 0), "dpm3", 5, fixed)  # any solver: one λ fits all
    with pytest.raises(CorrectionMismatch, match="not for NFE 6"):
        dode.sample(models["vp"], mixture_noise(2, 0), "ddim", 6, Correction("dode", [[0.1]] * 6, provenance={"nfe": 5}))


def test_a_learned_grid_is_the_grid_the_correction_fits(models, mixture_noise):
    """S4S-Alt's correction holds on its learned grid only."""
    corr = fit_s4s_alt(models["edm"], mixture_noise(8, 5), "ddim", 4, rounds=1, iters=2, round_iters=1,
                       grid_evals=6, teacher_nfe=19)
    x = mixture_noise(2, 0)
    dode.sample(models["edm"], x, "ddim", 4, corr, grid=grid_of(corr))
    assert corr.provenance["grid_changed"]  # (these settings move the grid)
    with pytest.raises(CorrectionMismatch, match="another σ grid"):
        dode.sample(models["edm"], x, "ddim", 4, corr)


def test_a_correction_is_refused_on_another_model(models, mixture_noise):
    """The fit records the weights' sha256; sampling another model (or one changed in place) is refused."""
    from dode.core.denoisers import weights_digest
    from dode.core.oracle import GaussianMixture

    edm = models["edm"]
    fit = dode.fit_correction(edm, mixture_noise(16, 5), "ddim", 5, scale=4)
    assert fit.fitted_for.model == weights_digest(edm) and len(fit.fitted_for.model) == 64
    dode.sample(edm, mixture_noise(2, 0), "ddim", 5, fit)  # its own model
    other = GaussianMixture(edm.means + 0.5, edm.stds)
    with pytest.raises(CorrectionMismatch, match="fitted on another model"):
        dode.sample(other, mixture_noise(2, 0), "ddim", 5, fit)
    copy = GaussianMixture(edm.means.clone(), edm.stds)
    dode.sample(copy, mixture_noise(2, 0), "ddim", 5, fit)  # equal weights: the same model
    copy.means.add_(1e-3)  # changed in place: the cached digest is renewed
    with pytest.raises(CorrectionMismatch, match="fitted on another model"):
        dode.sample(copy, mixture_noise(2, 0), "ddim", 5, fit)
