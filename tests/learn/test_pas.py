"""PAS (dode.learn.pas, form ``pas`` of dode.core.forms) on the exact float64 Gaussian-mixture oracle:
θ = 0 is the base solver bit for bit, the basis is PAS's (checked against a NumPy reference), the
search lowers the teacher error at every kept step and skips the steps where it does not help."""
import math
import sys

import numpy as np
import pytest
import torch

import dode
from dode.core.forms import Correction, pas_basis
from dode.core.path import ModelPath
from dode.core.sampling import run_solver, solver_grid
from dode.learn.dode import teacher_states
from dode.learn.pas import AdaptiveSearch, fit_pas, l1_fit
from dode.learn.record import student_points
from dode.runner.cli import main as dode_run_main
from dode.runner.results import read_runs


def _run(model, noise, solver, nfe, correction=None):
    spec, sigmas, plan = solver_grid(model, solver, nfe)
    path = ModelPath(model, correction, record=True)
    return run_solver(path, spec, noise, sigmas, plan), path


@pytest.mark.parametrize("kind,solver", [("edm", "ddim"), ("vp", "ddim"), ("edm", "ipndm"), ("vp", "dpmpp2m")])
def test_zero_theta_is_the_base_solver_bit_for_bit(kind, solver, models, mixture_noise):
    model, noise = models[kind], mixture_noise(16, 1)
    base, _ = _run(model, noise, solver, 5)
    zero, path = _run(model, noise, solver, 5, Correction("pas", [[0.0] * 4] * 5))
    assert torch.equal(base, zero)
    # the features were formed: 2, 3, then 4 basis vectors (x_T and the directions so far)
    assert [sum(path.columns[k]) for k in range(5)] == [2, 3, 4, 4, 4]


def _reference_basis(dirs: np.ndarray, x_rel: np.ndarray, prior: np.ndarray, m: int) -> list[np.ndarray]:
    """PAS's basis of one sample by hand: u_1 = v/‖v‖, then the centred principal components,
    Gram–Schmidt, signs by ⟨x − x_T, u⟩ (⟨x_T, u⟩ when x = x_T)."""
    out = [dirs[-1] / np.linalg.norm(dirs[-1])]
    pcs = np.linalg.svd(dirs - dirs.mean(0), full_matrices=False)[2][:min(m - 1, len(dirs) - 1)]
    ref = x_rel if np.any(x_rel != 0) else prior
    for u in pcs:
        for b in list(out):
            u = u - (u @ b) * b
        u = u / np.linalg.norm(u)
        out.append(u if ref @ u >= 0 else -u)
    return out


def test_pca_features_are_orthonormal_span_the_history_and_match_a_reference():
    g = torch.Generator().manual_seed(3)
    dirs = torch.randn(5, 4, 20, dtype=torch.float64, generator=g)
    x_rel = torch.randn(5, 20, dtype=torch.float64, generator=g)
    basis = pas_basis(dirs, x_rel, dirs[:, 0], 4)
    U = torch.stack(basis, 1)  # (5, 4, 20)
    torch.testing.assert_close(U @ U.transpose(1, 2), torch.eye(4, dtype=torch.float64).expand(5, 4, 4))
    span = U.transpose(1, 2) @ U  # projector on the span
    centred = dirs - dirs.mean(1, keepdim=True)
    for v in (centred, dirs[:, -1:]):  # the centred history and the current direction lie in the span
        torch.testing.assert_close(v @ span, v)
    assert ((torch.stack(basis[1:], 1) @ x_rel[:, :, None]) >= 0).all()
    for i in range(5):
        want = _reference_basis(dirs[i].numpy(), x_rel[i].numpy(), dirs[i, 0].numpy(), 4)
        np.testing.assert_allclose(U[i].numpy(), np.stack(want), atol=1e-10)
    short = pas_basis(dirs[:, :2], torch.zeros_like(x_rel), dirs[:, 0], 4)  # two directions: one component
    assert short[2] is None and short[3] is None and ((short[1] * dirs[:, 0]).sum(1) >= 0).all()
    two = pas_basis(dirs, x_rel, dirs[:, 0], 2)  # M = 2: u_1 and the top component
    assert len(two) == 2 and torch.allclose((two[0] * two[1]).sum(1), torch.zeros(5, dtype=torch.float64))


def test_corrected_ddim_matches_a_numpy_reference(models, mixture_noise):
    """DDIM with PAS's θ at every step against a hand-written loop: ε̃ = ε + Σ θ_m u_m on the basis of
    (x_T in VP scale, the corrected past directions, ε), x ← x + (σ_next − σ)·ε̃."""
    model, noise = models["vp"], mixture_noise(6, 2)
    theta = [[0.3, -0.2], [0.1, 0.4, -0.3], [0.0, 0.0, 0.0, 0.0], [-0.2, 0.1, 0.2, 0.05], [0.05, 0.0, 0.1, -0.1]]
    corr = Correction("pas", [t + [0.0] * (4 - len(t)) for t in theta])
    got = dode.sample(model, noise, "ddim", 5, corr)
    _, sigmas, _ = solver_grid(model, "ddim", 5)
    s = sigmas.tolist()
    x = noise * math.sqrt(1 + s[0] ** 2)
    history = [(x / math.sqrt(1 + s[0] ** 2)).reshape(6, -1).numpy()]
    x_t = x.reshape(6, -1).numpy()
    for k, (a, b) in enumerate(zip(s[:-1], s[1:])):
        eps = ((x - model(x, torch.full((6,), a, dtype=torch.float64))) / a).reshape(6, -1).numpy()
        new = eps.copy()
        for i in range(6):
            dirs = np.stack([h[i] for h in history] + [eps[i]])
            U = _reference_basis(dirs, x.reshape(6, -1).numpy()[i] - x_t[i], history[0][i], 4)
            new[i] = eps[i] + sum(t * u for t, u in zip(theta[k], U))
        history.append(new)
        x = x + (b - a) * torch.from_numpy(new).reshape(x.shape)
    torch.testing.assert_close(got, x, rtol=0, atol=1e-10)


def _l1(a, b):
    return float((a - b).abs().mean())


def test_fit_lowers_the_teacher_error_at_every_kept_step(models, mixture_noise):
    model, noise = models["edm"], mixture_noise(40, 4)
    corr = fit_pas(model, noise, "ddim", 5, scale=6, seeds="0-39")
    prov = corr.provenance
    assert prov["method"] == "pas" and prov["teacher"] == "heun" and prov["loss"] == "l1" and prov["seeds"] == "0-39"
    spec, sigmas, plan = solver_grid(model, "ddim", 5)
    after, points = student_points(model, spec, sigmas, plan)
    states, _ = teacher_states(model, noise, "heun", points, 6)
    _, path = _run(model, noise, "ddim", 5, corr)
    assert prov["kept"] and prov["parameters"] == sum(sum(path.columns[k]) for k in prov["kept"])
    for step in prov["steps"]:  # from the corrected student's own state, the step with and without θ_k
        k = step["evaluation"]
        without = Correction("pas", [t if j < k else [0.0] * 4 for j, t in enumerate(corr.theta)])
        with_k = Correction("pas", [t if j <= k else [0.0] * 4 for j, t in enumerate(corr.theta)])
        errs = []
        for c in (without, with_k):
            final, run = _run(model, noise, "ddim", 5, c)
            errs.append(_l1(run.calls[k + 1].x if k < 4 else final, states[after[k]]))
        assert errs[0] == pytest.approx(step["base"], rel=1e-9)
        if step["kept"]:
            assert errs[1] == pytest.approx(step["fitted"], rel=1e-9) and errs[1] < errs[0] - 1e-4
            assert any(v != 0 for v in corr.theta[k])
        else:
            assert corr.theta[k] == [0.0] * 4
    held_out = mixture_noise(200, 5)
    teacher = dode.sample(model, held_out, "heun", 61)
    base = _l1(dode.sample(model, held_out, "ddim", 5), teacher)
    assert _l1(dode.sample(model, held_out, "ddim", 5, corr), teacher) < 0.6 * base


def test_the_adaptive_rule_skips_steps_where_the_correction_does_not_help(models, mixture_noise):
    model, noise = models["vp"], mixture_noise(30, 6)
    base, path = _run(model, noise, "ipndm", 5)
    own = [c.x for c in path.calls[1:]] + [base]  # the base solver's own states: nothing to correct
    corr = fit_pas(model, noise, "ipndm", 5, targets=own)
    assert corr.provenance["kept"] == [] and all(t == [0.0] * 4 for t in corr.theta)
    assert torch.equal(dode.sample(model, noise, "ipndm", 5, corr), base)
    assert fit_pas(model, noise, "ipndm", 5, scale=4, tol=1e9, first_tol=1e9).provenance["kept"] == []
    # a large first tolerance skips the small early gains; then every step gaining more than tol is kept
    corr = fit_pas(model, noise, "ipndm", 5, scale=4, first_tol=0.02, tol=0.0)
    steps = corr.provenance["steps"]
    first = corr.provenance["kept"][0]
    assert first > 0 and all(s["base"] - s["fitted"] <= 0.02 for s in steps[:first])
    assert all(s["kept"] == (s["base"] - s["fitted"] > 0.0) for s in steps[first:])
    assert all(corr.theta[k] == [0.0] * 4 for k in range(first))


def test_l1_and_l2_step_fits_are_the_minimisers():
    g = torch.Generator().manual_seed(7)
    A = torch.randn(400, 3, dtype=torch.float64, generator=g)
    noise = torch.randn(400, dtype=torch.float64, generator=g) ** 3  # heavy tails: L1 ≠ L2
    r = A @ torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64) + noise
    theta = l1_fit(A, r)
    best = float((r - A @ theta).abs().mean())
    for i in range(3):
        for d in (1e-3, -1e-3):
            assert float((r - A @ (theta + d * torch.eye(3, dtype=torch.float64)[i])).abs().mean()) >= best
    cols = [A[:, i].reshape(20, 20) for i in range(3)]
    l2 = AdaptiveSearch("l2", tol=0.0)(0, cols, r.reshape(20, 20))
    torch.testing.assert_close(torch.tensor(l2, dtype=torch.float64), torch.linalg.lstsq(A, r[:, None]).solution[:, 0])


def test_save_load_round_trip(models, mixture_noise, tmp_path):
    model, noise = models["edm"], mixture_noise(20, 8)
    corr = fit_pas(model, noise, "dpmpp2m", 4, form="pas3", scale=4)
    again = Correction.load(corr.save(tmp_path / "lambdas.json"))
    assert again.form == "pas3" and again.space == "eps" and again.theta == corr.theta
    assert again.provenance["steps"] == corr.provenance["steps"]
    held_out = mixture_noise(10, 9)
    again_x, corr_x = (dode.sample(model, held_out, "dpmpp2m", 4, c) for c in (again, corr))
    assert torch.equal(again_x, corr_x)


def test_dode_run_distill_pas_on_the_embedded_digits_model(tmp_path, monkeypatch, capsys):
    argv = ["dode-run", f"results_dir={tmp_path}", "progress=false", "distill=pas", "nfe=[4]", "seeds=[0]",
            "num_samples=300", "shard_size=150", "batch=30", "scale=4"]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        dode_run_main()
    except SystemExit as e:
        assert not e.code
    df = read_runs(tmp_path).set_index("distill")
    assert set(df.index) == {"none", "pas"} and df.loc["pas", "value"] < df.loc["none", "value"]
    assert "PAS (DDIM) (pas)" in capsys.readouterr().out


def test_pas_and_amed_refuse_unipc_whose_corrector_discards_their_corrections():
    """UniPC's corrector redoes each step from the raw model outputs: a correction fitted on the
    predictor's state would mostly be lost, so PAS and AMED-Plugin refuse it and say why."""
    from dode.core.oracle import GaussianMixture
    from dode.errors import InvalidChoice
    from dode.learn import fit_amed, fit_pas

    model = GaussianMixture(torch.zeros(1, 4, dtype=torch.float64), [1.0])
    noise = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InvalidChoice, match="corrector"):
        fit_pas(model, noise, "unipc2_bh2", 5, scale=2)
    with pytest.raises(InvalidChoice, match="corrector"):
        fit_amed(model, noise, "unipc3_bh1", 4, scale=2)
