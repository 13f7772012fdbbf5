"""Sampling protocols: the grid spacing, endpoint and stage placement a solver runs with.

A :class:`Protocol` says how a solver discretises the probability-flow ODE for a requested NFE:

* ``spacing`` — the grid kind (:data:`dode.core.schedules.GRID_KINDS`; None: the model's default).
* ``endpoint`` — ``zero``: the last step lands on σ = 0 (DDIM, EDM); ``sigma_min``: sampling stops at
  the model's smallest noise level (discrete models τ = 1, i.e. training step 0, σ ≈ 0.01 for DDPM's
  linear schedule; VE models σ_min), with no final denoising evaluation (official DPM-Solver with
  ``denoise_to_zero=False``, th_deis).
* ``inner`` — where singlestep DPM-Solver's inner stages sit: ``grid``: on the NFE-point grid of the
  same spacing, i.e. every evaluation on one grid and the outer points every order-th (the official
  DPM-Solver's ``get_time_steps`` inside each step); ``logsnr``: at r = 1/2, or 1/3 and 2/3, of the
  step's logSNR interval (Lu et al. 2022, Alg. 1/2 with fixed r).

Presets (:data:`PRESETS`): ``paper`` — what the D-ODE authors' code ran for that solver and model
family (docs/protocol.md): for discrete-time models DDIM on ``uniform_torch`` into σ = 0, DPM-Solver,
DPM-Solver++, iPNDM and DEIS time-uniform in continuous time to ``sigma_min`` with stages on the grid;
for continuous (EDM) models EDM's ρ grid into σ = 0. DPM-Solver(++) also starts below the top
training steps whose log-SNR is under −5.1, as the official ``NoiseScheduleVP`` clips them (none for
DDPM's linear schedule). ``dode`` — dode's earlier default: the model's
default spacing (integer time-uniform or EDM) into σ = 0 with fixed logSNR stages.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Union

from torch import Tensor

from dode.core.schedules import GRID_KINDS, default_grid, schedule_of
from dode.errors import InvalidChoice

ENDPOINTS = ("zero", "sigma_min")
INNER_RULES = ("grid", "logsnr")
PRESETS = ("paper", "dode")


@dataclass(frozen=True)
class Protocol:
    """Spacing, endpoint and inner-stage rule of a solver's grid (module docstring)."""

    spacing: str | None = None
    endpoint: str = "zero"
    inner: str = "logsnr"
    lambda_min: float | None = None  # discrete models: top steps with log-SNR below it are never visited

    def __post_init__(self) -> None:
        for value, valid, what in ((self.spacing, GRID_KINDS, "grid"), (self.endpoint, ENDPOINTS, "endpoint"),
                                   (self.inner, INNER_RULES, "inner")):
            if value is not None and value not in valid:
                raise InvalidChoice(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
        if self.endpoint is None or self.inner is None:
            raise InvalidChoice("a protocol's endpoint and inner rule must be set")

    def record(self) -> dict:
        """The protocol as a plain dict (provenance, run folders)."""
        return {"grid": self.spacing, "endpoint": self.endpoint, "inner": self.inner, "lambda_min": self.lambda_min}


@dataclass(frozen=True)
class Preset:
    """A preset by name with fields replaced where given (dode-run's ``solver.protocol``, ``solver.grid``,
    ``solver.endpoint``, ``solver.inner``); resolved per solver and model by :func:`resolve`."""

    name: str = "paper"
    spacing: str | None = None
    endpoint: str | None = None
    inner: str | None = None

    def __post_init__(self) -> None:
        if self.name not in PRESETS:
            raise InvalidChoice(f"unknown protocol {self.name!r}; valid protocols: {', '.join(PRESETS)}")
        Protocol(self.spacing, self.endpoint or "zero", self.inner or "logsnr")  # validates the names

    def record(self) -> dict:
        return {"protocol": self.name, "grid": self.spacing, "endpoint": self.endpoint, "inner": self.inner}


GridSpec = Union[str, Tensor, Protocol, Preset, None]

DODE = Protocol()
# the authors' code (docs/protocol.md §1–3): discrete-time noise-prediction models, by solver
_PAPER_DISCRETE = {
    "ddim": Protocol("uniform_torch", "zero"),
    "euler": Protocol("uniform_torch", "zero"),
    **{name: Protocol("time_uniform", "sigma_min", "grid", lambda_min=-5.1)  # official NoiseScheduleVP's clip
       for name in ("dpm1", "dpm2", "dpm3", "dpmpp2m", "dpmpp3m")},
    **{name: Protocol("time_uniform", "sigma_min", "grid") for name in ("ipndm", "deis1", "deis2", "deis3")},
}


def preset(name: str, solver: str, denoiser) -> Protocol:
    """The protocol of preset ``name`` for ``solver`` on ``denoiser`` (module docstring)."""
    if name not in PRESETS:
        raise InvalidChoice(f"unknown protocol {name!r}; valid protocols: {', '.join(PRESETS)}")
    if name == "paper" and schedule_of(denoiser).discrete and solver in _PAPER_DISCRETE:
        return _PAPER_DISCRETE[solver]
    return Protocol(default_grid(denoiser))


def resolve(grid: GridSpec, solver: str, denoiser, **overrides) -> Protocol | Tensor:
    """What ``grid=`` means for a run of ``solver`` on ``denoiser``: None → the ``paper`` preset;
    a preset name → that preset; a spacing name → the ``paper`` preset with that spacing; a
    :class:`Preset` → its preset with its fields; a :class:`Protocol` or a tensor of σ → itself.
    ``overrides`` (spacing, endpoint, inner; None ignored) replace fields of the result (not of a
    tensor)."""
    if isinstance(grid, Preset):
        return resolve(grid.name, solver, denoiser, spacing=grid.spacing, endpoint=grid.endpoint,
                       inner=grid.inner, **overrides)
    fields = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(grid, Protocol):
        proto = grid
    elif grid is None or isinstance(grid, str):
        proto = preset(grid if grid in PRESETS else "paper", solver, denoiser)
        if grid is not None and grid not in PRESETS:
            fields = {"spacing": grid, **fields}
    else:
        if fields:
            raise ValueError("an explicit σ grid cannot take grid/endpoint/inner overrides")
        return grid
    return replace(proto, **fields) if fields else proto  # replace validates through Protocol.__post_init__


def spacing_of(grid: GridSpec, solver: str, denoiser) -> str:
    """The spacing a teacher refines ``grid`` in: the protocol's (``uniform_torch`` is time-uniform);
    σ^{1/ρ} (``edm``) for an explicit tensor of σ."""
    proto = resolve(grid, solver, denoiser)
    if not isinstance(proto, Protocol):
        return "edm"
    spacing = proto.spacing or default_grid(denoiser)
    return "time_uniform" if spacing == "uniform_torch" else spacing
