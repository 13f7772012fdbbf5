"""Tracing and replaying solvers (dode.learn.record): the dry trace of the features that exist, the
replay that serves cached outputs and stops, and the teacher's states kept by recording σ only."""
import pytest
import torch

import dode
from dode.core.forms import Correction
from dode.core.path import ModelPath
from dode.core.sampling import run_solver, solver_grid, trajectory
from dode.core.schedules import refine
from dode.learn.dode import teacher_states
from dode.learn.record import ReplayPath, Stop, feature_columns, student_points


def test_feature_columns_follow_the_history(models):
    for kind, first in (("vp", [True, False]), ("edm", [False, False])):  # ε space: x_T plays q_{−1}
        spec, sigmas, plan = solver_grid(models[kind], "ddim", 4)
        cols = feature_columns(models[kind], spec, sigmas, plan, "dode2")
        assert cols[0] == first and cols[2:] == [[True, True]] * 2
    spec, sigmas, plan = solver_grid(models["edm"], "ddim", 4)
    assert feature_columns(models["edm"], spec, sigmas, plan, "s4s") == [
        [True, False, False], [True, True, False], [True, True, True], [True, True, True]]


def test_replay_serves_cached_outputs_and_stops(models, mixture_noise, monkeypatch):
    model, noise = models["vp"], mixture_noise(4, 13)
    spec, sigmas, plan = solver_grid(model, "dpm2", 6)
    network = []
    evaluate = ModelPath.evaluate
    monkeypatch.setattr(ModelPath, "evaluate", lambda self, x, s: network.append(s) or evaluate(self, x, s))
    base, cache = Correction("dode", [[0.0]] * 6), []
    for stop, made in ((2, 2), (4, 4), (2, 4)):
        with pytest.raises(Stop):
            run_solver(ReplayPath(model, base, cache, stop), spec, noise, sigmas, plan)
        assert len(cache) == len(network) == made
    final = run_solver(ReplayPath(model, base, cache, 99), spec, noise, sigmas, plan)
    assert len(cache) == len(network) == 6  # each evaluation made once over all replays
    assert torch.equal(final, dode.sample(model, noise, "dpm2", 6))
    made = len(network)
    # θ changed at evaluation 2: evaluations 0–2 are served, the run stops at the input of evaluation 3
    changed = Correction("dode", [[0.0], [0.0], [0.4], [0.0], [0.0], [0.0]])
    path = ReplayPath(model, changed, cache, 3)
    with pytest.raises(Stop) as caught:
        run_solver(path, spec, noise, sigmas, plan)
    assert len(network) == made and path.nfe == 3 and all(c.d is cache[k] for k, c in enumerate(path.calls))
    _, calls = trajectory(model, noise, "dpm2", 6, changed)
    assert caught.value.sigma == calls[3].sigma and torch.equal(caught.value.x, calls[3].x)
    assert [c.sigma for c in path.calls] == [c.sigma for c in calls[:3]]


def test_teacher_states_are_the_last_model_inputs_at_the_points(models, mixture_noise):
    model, noise = models["edm"], mixture_noise(3, 14)
    spec, sigmas, plan = solver_grid(model, "heun", 5)
    _, points = student_points(model, spec, sigmas, plan)
    states, info = teacher_states(model, noise, "heun", points, 3)
    fine = refine(torch.tensor(points, dtype=torch.float64), 3, model)
    final, calls = trajectory(model, noise, "heun", info["teacher_nfe"], grid=fine)
    last = {s: x for s, x, _ in calls}  # Heun evaluates twice at inner σ: the corrector, then the next step
    assert list(states) == points and torch.equal(states[0.0], final)
    for s in points[:-1]:
        assert torch.equal(states[s], last[s])
