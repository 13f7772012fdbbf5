"""σ grids of learned solvers: S4S-Alt's monotone grid parametrisation, and sampling a fit on the
grid it was fitted on.

The σ of a grid between its fixed ends σ_0 and σ_{N−1} (σ_N = 0 kept) are

    u_i = u_0 + (u_{N−1} − u_0) · Σ_{j<i} softmax(ℓ)_j,   σ_i = u^{-1}(u_i),

with u = σ^{1/ρ} (``space="rho"``), log σ or the schedule's time — strictly monotone for every ℓ
(:class:`MonotoneGrid`). A learned grid is stored as the list ``provenance["grid"]`` with
``provenance["grid_learned"] = True``; :func:`grid_of` gives what to pass as ``grid=`` and
:func:`sample_learned` samples with it; :func:`guarded` keeps a fitted grid only where it beats the
base solver (dode's guard for GITS and AMED-Plugin).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from dode.core.forms import Correction
from dode.core.sampling import sample, solver_grid
from dode.core.protocols import GridSpec, Preset, Protocol
from dode.core.schedules import schedule_of
from dode.errors import InvalidChoice

__all__ = ["grid_record", "MonotoneGrid", "grid_of", "sample_learned", "guarded"]


def grid_record(grid: GridSpec, sigmas: Tensor | None = None) -> str | list[float] | dict | None:
    """A grid for the provenance: its name, or the list of σ of an explicit grid or of a protocol's
    grid (a protocol without ``sigmas``: its fields)."""
    if isinstance(grid, (str, type(None))):
        return grid
    if isinstance(grid, (Protocol, Preset)) and sigmas is None:
        return grid.record()
    return [float(v) for v in (torch.as_tensor(grid) if sigmas is None else sigmas)]


class MonotoneGrid:
    """A strictly decreasing σ grid from free logits (S4S-Alt's time-grid parametrisation).

    σ_0 and a final σ = 0 stay fixed. In the space ``u(σ)`` — ``"rho"``: σ^{1/ρ}, ``"logsigma"``:
    log σ, ``"time"``: the schedule's time — the gaps between consecutive points from σ_0 to σ_m (the
    last positive σ) are ``softmax([0, ℓ_1, …, ℓ_{m−1}]) · (u_m − u_0)``, so every ℓ gives a strictly
    monotone grid. σ_m is fixed too, unless ``free_end``: then u_m = u_lo + (u_0 − u_lo)(1 − e^{−ℓ_m²})
    with one more parameter ℓ_m, any σ_m in [σ_lo, σ_0), σ_lo the model's σ_min (the base grid's σ_m
    is often σ_min itself, where the last evaluation before σ = 0 does almost nothing; ℓ_m = 0 there).
    :attr:`init` are the parameters of the grid the object was built from.
    """

    def __init__(self, denoiser, sigmas: Tensor, space: str = "rho", rho: float = 7.0, free_end: bool = False):
        sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
        self.zero_end = bool(sig[-1] == 0)
        pos = sig[:-1] if self.zero_end else sig
        if len(pos) < 2:
            raise ValueError("a grid with fewer than two positive σ has nothing to optimise")
        sched = schedule_of(denoiser)
        if space == "rho":
            self._u, self._inv = (lambda s: s ** (1 / rho)), (lambda u: u ** rho)
        elif space == "logsigma":
            self._u, self._inv = torch.log, torch.exp
        elif space == "time":
            self._u, self._inv = sched.t, sched.sigma
        else:
            raise InvalidChoice(f"unknown grid space {space!r}; valid: rho, logsigma, time")
        self.space, self.base = space, sig
        self.first, self.last = pos[0], pos[-1]
        u = self._u(pos)
        self.u0, self.u1 = u[0], u[-1]
        gaps = (u[1:] - u[:-1]) / (self.u1 - self.u0)
        if not bool((gaps > 0).all()):
            raise ValueError("the initial grid must be strictly decreasing")
        self.init = (gaps.log() - gaps[0].log())[1:]
        self.free_end = bool(free_end)
        if self.free_end:
            if not self.zero_end:
                raise ValueError("free_end needs a grid that ends at σ = 0 (its last positive σ is then free)")
            lo = min(float(denoiser.sigma_min), float(self.last))
            self.u_lo = self._u(torch.tensor(lo, dtype=torch.float64))
            frac = (self.u1 - self.u_lo) / (self.u0 - self.u_lo)
            self.init = torch.cat([self.init, torch.sqrt(-torch.log1p(-frac)).reshape(1)])

    @property
    def n_free(self) -> int:
        return len(self.init)

    def sigmas(self, logits) -> Tensor:
        logits = torch.as_tensor(logits, dtype=torch.float64).flatten()
        last, u1 = self.last, self.u1
        if self.free_end:
            logits, end = logits[:-1], logits[-1]
            u1 = self.u_lo - (self.u0 - self.u_lo) * torch.expm1(-end * end)
            last = self._inv(u1)
        ell = torch.cat([torch.zeros(1, dtype=torch.float64), logits])
        w = torch.softmax(ell, 0)
        inner = self._inv(self.u0 + torch.cumsum(w, 0)[:-1] * (u1 - self.u0))
        parts = [self.first.reshape(1), inner, last.reshape(1)]
        if self.zero_end:
            parts.append(torch.zeros(1, dtype=torch.float64))
        return torch.cat(parts)

    @staticmethod
    def monotone(sig: Tensor) -> bool:
        return bool((sig[1:] < sig[:-1]).all()) and bool(torch.isfinite(sig).all())



def grid_of(correction: Correction | None, default: GridSpec = None) -> GridSpec:
    """The grid to sample a correction with: its learned grid (S4S-Alt) as a float64 tensor, else
    ``default`` (a fitted D-ODE/IIA/S4S correction is tied to the grid it was fitted on)."""
    prov = getattr(correction, "provenance", None) or {}
    if prov.get("grid_learned"):
        return torch.tensor(prov["grid"], dtype=torch.float64)
    return default


def sample_learned(denoiser, noise: Tensor, correction: Correction) -> Tensor:
    """Sample with a fitted correction on the solver, NFE and grid recorded in its provenance."""
    prov = correction.provenance
    grid = prov.get("grid")
    grid = grid if grid is None or isinstance(grid, str) else torch.tensor(grid, dtype=torch.float64)
    return sample(denoiser, noise, prov["solver"], int(prov["nfe"]), correction, grid_of(correction, grid))


def guarded(fitted: Correction, denoiser, noise: Tensor, grid: GridSpec,
            reference: Callable[[float], Tensor]) -> Correction:
    """dode's guard (not in GITS or AMED): ``fitted`` if its final samples from the fit batch ``noise``
    are closer to the teacher's than the base solver's at the same NFE on ``grid`` (its protocol grid),
    d = mean (x − x̂)² over the batch and the pixels, d_fit < d_base; else the base solver — λ = 0 at
    every evaluation on its own grid, so it samples as the base solver bit for bit — with the rejected
    fit's grid (and AFS) kept as ``fit_grid`` (``fit_afs``). ``reference(σ)``: the teacher's final
    state at σ, the last σ of a grid. The provenance records ``distance_fit``, ``distance_base``,
    ``kept`` and ``fallback``."""
    prov = fitted.provenance
    solver, nfe = prov["solver"], int(prov["nfe"])
    _, base, _ = solver_grid(denoiser, solver, nfe, grid)
    with torch.no_grad():
        d_fit = float((sample_learned(denoiser, noise, fitted) - reference(float(prov["grid"][-1]))).pow(2).mean())
        d_base = float((sample(denoiser, noise, solver, nfe, None, grid) - reference(float(base[-1]))).pow(2).mean())
    kept = d_fit < d_base
    record = {"guard": True, "distance_fit": d_fit, "distance_base": d_base, "kept": kept, "fallback": not kept}
    if kept:
        return Correction(fitted.form, fitted.theta, fitted.space, {**prov, **record}, fitted.afs)
    moved = ("grid", "sigmas", "afs", "grid_learned", "grid_changed")
    sig = [float(v) for v in base]
    return Correction.from_lambdas([0.0] * nfe, **{k: v for k, v in prov.items() if k not in moved},
                                   **{"fit_" + k: prov[k] for k in ("grid", "afs") if k in prov}, grid=sig,
                                   grid_learned=False, grid_changed=False, sigmas=sig, **record)
