"""The relaxed objective (dode.learn.relaxed, LD3 / S4S): radius 0 is the plain objective; the starts
stay in their balls; a move is kept only where it lowers that sample's distance."""
import pytest
import torch

from dode.errors import UserError
from dode.learn.relaxed import RelaxedStarts, ld3_radius
from dode.learn.s4s import fit_s4s
from dode.learn.s4s_alt import fit_s4s_alt


def test_radius_zero_is_the_plain_objective(models, mixture_noise):
    model, noise = models["edm"], mixture_noise(24, 30)
    kw = dict(iters=15, teacher_nfe=39)
    plain, relaxed = fit_s4s(model, noise, "ddim", 4, **kw), fit_s4s(model, noise, "ddim", 4, radius=0.0, **kw)
    assert relaxed.theta == plain.theta and relaxed.provenance["curve"] == plain.provenance["curve"]
    assert relaxed.provenance["radius"] == 0.0 and relaxed.provenance["relax_max_offset"] == 0.0
    assert plain.provenance["radius"] is None
    kw = dict(iters=10, round_iters=5, rounds=1, grid_iters=8, teacher_nfe=39)
    a, b = fit_s4s_alt(model, noise, "ddim", 4, **kw), fit_s4s_alt(model, noise, "ddim", 4, radius=0.0, **kw)
    assert a.theta == b.theta and a.provenance["grid"] == b.provenance["grid"]


def test_relaxed_fit_keeps_the_starts_in_the_ball_and_lowers_the_loss_below_the_plain_fit(models, mixture_noise):
    model, noise = models["edm"], mixture_noise(24, 31)
    kw = dict(iters=15, teacher_nfe=39)
    plain = fit_s4s(model, noise, "ddim", 4, **kw).provenance
    p = fit_s4s(model, noise, "ddim", 4, radius=0.5, **kw).provenance
    assert p["relax_moves"] > 0 and 0 < p["relax_max_offset"] <= 0.5 + 1e-12
    assert p["loss_best"] < plain["loss_best"]  # the student gets the slack of the ball


def test_projection_onto_each_sample_ball():
    origin = torch.zeros(3, 2, dtype=torch.float64)
    starts = RelaxedStarts(origin, radius=1.0)
    inside, outside = torch.tensor([0.3, 0.4]), torch.tensor([3.0, 4.0])
    out = starts.project(torch.stack([inside, outside, -outside]).double())
    torch.testing.assert_close(out[0], inside.double(), rtol=0, atol=0)  # inside: unchanged
    torch.testing.assert_close(out[1], torch.tensor([0.6, 0.8], dtype=torch.float64))  # radially onto the sphere
    torch.testing.assert_close(out[2], -out[1])


def test_a_move_is_kept_only_where_it_lowers_the_distance():
    origin = torch.zeros(2, 2, dtype=torch.float64)
    starts = RelaxedStarts(origin, radius=0.1, step=1.0)
    starts.record(torch.tensor([[1.0, 0.0], [0.0, -2.0]], dtype=torch.float64), torch.tensor([1.0, 1.0]))
    cand = starts.candidate()  # a step of length 0.1 against each gradient
    torch.testing.assert_close(cand, torch.tensor([[-0.1, 0.0], [0.0, 0.1]], dtype=torch.float64))
    assert starts.accept(cand, torch.tensor([0.5, 2.0])) == 1
    torch.testing.assert_close(starts.starts, torch.tensor([[-0.1, 0.0], [0.0, 0.0]], dtype=torch.float64))


def test_ld3_radius_and_refusals(models, mixture_noise):
    assert ld3_radius((3, 32, 32), 10) == pytest.approx(0.03072)  # LD3's CIFAR-10 bound at 10 steps
    with pytest.raises(ValueError, match="radius must be ≥ 0"):
        RelaxedStarts(torch.zeros(1, 2), radius=-1.0)
    with pytest.raises(UserError, match="optimizer=adam"):
        fit_s4s(models["edm"], mixture_noise(4, 1), "ddim", 3, radius=0.1, optimizer="lbfgs", teacher_nfe=19)
