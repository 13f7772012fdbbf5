"""The D-ODE authors' released code's teacher targets (``distill=dode_authors``; docs/protocol.md).

The paper fits λ_k against the teacher's state at the student's own σ (dode's default: the teacher runs
on the student's grid refined K times, so the grids coincide). The authors' code instead runs its
teacher on a grid of its own with K·NFE steps — DDIM on ``uniform_torch`` (capped at T steps) for
DDIM and DPM-Solver students of discrete-time models, the student's own method on the th_deis grid
for iPNDM and DEIS, Euler on EDM's ρ grid of K·NFE points for the Euler and Heun students of EDM
models — from the same x_T, and takes as the target of evaluation k the teacher's state after step
(k + 1)·K' (K' = teacher steps // NFE), the last evaluation's target being the teacher's final state:

    target_k = x^teacher_{(k+1)K'}  (k < NFE − 1),    target_{NFE−1} = x^teacher_final.

Except for iPNDM and DEIS these targets sit at other σ than the student's states (at NFE 5 on DDPM:
teacher steps 780/580/380/180 against the student's 600/400/200/0), and a DPM-Solver student, which
stops at σ_min, is fitted to the DDIM teacher's σ = 0 sample. Not reproduced here (stated in
docs/protocol.md): where the authors' DPM-Solver and Heun code feed a stage's corrected output (only
into the update right after it; dode's hook feeds it into every later use within the step), and the
one-index shift of their th_deis network input.
"""
from __future__ import annotations

from torch import Tensor

from dode.core.forms import Correction
from dode.core.path import ModelPath
from dode.core.protocols import GridSpec, Protocol
from dode.core.sampling import run_solver, solver_grid
from dode.core.schedules import schedule_of
from dode.errors import InvalidChoice
from dode.learn.dode import fit_correction

__all__ = ["AUTHORS_TEACHERS", "authors_targets", "fit_authors"]

# (teacher, its protocol) per student, by model family (discrete-time: True)
AUTHORS_TEACHERS = {
    True: {**{s: ("ddim", Protocol("uniform_torch", "zero")) for s in ("ddim", "dpm2", "dpm3")},
           **{s: (s, Protocol("time_uniform", "sigma_min")) for s in ("ipndm", "deis1", "deis2", "deis3")}},
    False: {s: ("euler", Protocol("edm", "zero")) for s in ("ddim", "euler", "heun")},
}


def authors_targets(denoiser, noise: Tensor, solver: str, nfe: int, scale: int) -> tuple[list[Tensor], dict]:
    """The authors' target of every student evaluation (module docstring) and the teacher's record."""
    sched = schedule_of(denoiser)
    table = AUTHORS_TEACHERS[bool(sched.discrete)]
    if solver not in table:
        family = "discrete-time" if sched.discrete else "continuous (EDM)"
        raise InvalidChoice(f"the authors' code has no D-{solver} for {family} models; the authors' variant "
                            f"exists for: {', '.join(table)}")
    teacher, protocol = table[solver]
    steps = min(sched.T, scale * nfe) if sched.discrete else scale * nfe
    per = steps // nfe
    spec, sigmas, plan = solver_grid(denoiser, teacher, steps, protocol)
    wanted = [float(sigmas[(k + 1) * per]) for k in range(nfe - 1)]
    path = ModelPath(denoiser, record=wanted)
    final = run_solver(path, spec, noise, sigmas, plan)
    states = {call.sigma: call.x for call in path.calls}
    targets = [states[s] for s in wanted] + [final]
    return targets, {"teacher": teacher, "teacher_scale": per, "teacher_nfe": path.nfe,
                     "teacher_grid": protocol.record(), "variant": "authors"}


def fit_authors(denoiser, noise: Tensor, solver: str, nfe: int, scale: int = 10, form: str = "dode",
                grid: GridSpec = None, progress: bool = False, **provenance) -> Correction:
    """D-ODE fitted against the authors' targets (:func:`authors_targets`) instead of the aligned
    teacher of :func:`~dode.learn.dode.fit_correction`."""
    targets, info = authors_targets(denoiser, noise, solver, nfe, scale)
    return fit_correction(denoiser, noise, solver, nfe, scale, form, grid, targets=targets, progress=progress,
                          **info, **provenance)
