"""AMED-Plugin — "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps", Zhou, Chen, Wang &
Chen, CVPR 2024 — on dode's one model-call path: a base solver of :mod:`dode.core.solvers` run on a
grid with one learned point inserted into every step, plus a learned scale of the inserted evaluation's
direction through the hook (form ``amed``, :mod:`dode.core.forms`). No solver is copied.

For each step t_n → t_{n+1} of the base grid, a ratio r_n ∈ (0, 1) places the intermediate time
geometrically (AMED's t_mid = t_{n+1}^r · t_n^{1−r}, uniform in log σ):

    s_n = t_n · exp(−r_n · log(t_n / max(t_{n+1}, σ_min)))

(a step into σ = 0 of an explicit grid interpolates towards the model's σ_min), and the base solver runs on
t_0, s_0, t_1, s_1, …, t_N with the direction of the evaluation at s_n scaled by c_n: for DDIM
(Euler in VE form) x_{s_n} = x_n + (s_n − t_n) ε(x_n, t_n) and x_{n+1} = x_{s_n} + c_n (t_{n+1} − s_n)
ε(x_{s_n}, s_n) — AMED's Euler plugin; for iPNDM the inserted evaluations join the multistep history and
c_n scales the combined direction — AMED's iPNDM plugin. r = 1/2, c = 1 is the base solver on the
logSNR-midpoint grid, bit for bit.

The base grid is the protocol's spacing (``uniform_torch``: time-uniform) for N steps ending at σ_min
(``endpoint="sigma_min"``: the sample is the state there, no final denoising step, as the authors' grids
with ``denoise_to_zero=False``; an explicit σ grid is taken as it is).

NFE (the authors' accounting): N steps with their inserted evaluations cost 2N evaluations; with the
analytical first step (AFS: the first evaluation replaced by the prior's ε = x_T/√(1 + σ_0²),
:func:`dode.core.sampling.start_state`) 2N − 1. An even NFE n runs N = n/2 steps without AFS, an odd
NFE N = (n + 1)/2 steps with AFS (NFE 5: three steps with midpoints, AFS on the first).

Fit (greedy, step by step as the authors' training loop): the teacher's states at the base grid's
points (``teacher`` on the base grid refined ``scale``×, :func:`~dode.learn.dode.teacher_states` — by
default the base solver itself, the authors' AMED-Plugin setting ``--sampler_tea`` = ``--sampler_stu``
(their AMED-Solver's teacher is Heun) — or given ``targets``), then for n = 0 … N−1 Adam on (r_n, c_n),
r_n = sigmoid(a), c_n = 1 + ``scale_dir``·tanh(b) (AMED's c ∈ [1 − scale_dir, 1 + scale_dir]), minimising
the mean squared distance of the student's state at t_{n+1} to the teacher's; earlier evaluations are
served from a cache (:class:`~dode.learn.record.ReplayPath`), so an Adam step costs one evaluation with
backprop.

Deviations from the authors' code (stated): AMED's predictor is a tiny network on the U-Net
bottleneck and (t_n, t_{n+1}), giving r and c per sample; dode's denoisers do not expose a bottleneck,
so r_n and c_n are per-step constants shared by all samples (what the predictor gives for a fixed input;
at the AFS step the authors feed it zeros, so there it is exactly this). Step n is fitted from the
student's own state at t_n (the authors feed the teacher's state, with the student's history). AMED's
optional time scale a_n (the evaluation at a_n·s_n, ``scale_time``) is not used (the authors' default
0). Base solvers: one evaluation per step and no corrector (DDIM/Euler, iPNDM, DEIS, DPM-Solver++; not UniPC,
whose corrector would discard the scaled estimate); the AFS ε does not join a multistep history.

dode's guard (``guard``, not in AMED): the fit is kept only if its final samples from the fit batch are
closer to the teacher's state at the base grid's last σ (mean squared distance) than the base solver's
samples at the same NFE on its protocol grid are to the teacher's final state there (where that grid
ends at σ = 0: the teacher's last step into 0, x̂_0 = D(x̂_{t_N}, t_N)); else the result is the base
solver (:func:`~dode.learn.grids.guarded`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dode.version import __version__
from dode.core.denoisers import as_sigma, weights_digest
from dode.core.forms import Correction
from dode.core.protocols import GridSpec, Protocol, resolve, spacing_of
from dode.core.sampling import run_solver, solver_grid
from dode.core.solvers import Level, get_solver, one_per_step
from dode.errors import InvalidChoice, InvalidNFE
from dode.learn.dode import teacher_states
from dode.learn.grids import grid_record, guarded
from dode.learn.record import ReplayPath, Stop

__all__ = ["AmedSteps", "amed_steps", "amed_correction", "fit_amed"]

Targets = Callable[[float], Tensor]  # the teacher's state at a base-grid σ


def amed_steps(nfe: int) -> tuple[int, bool]:
    """(base steps N, AFS) for ``nfe`` evaluations: N = ⌈nfe/2⌉, AFS when nfe is odd (2N − AFS = nfe)."""
    if nfe < 1:
        raise InvalidNFE(f"NFE must be at least 1, got {nfe}")
    return (nfe + 1) // 2, nfe % 2 == 1


@dataclass(frozen=True)
class AmedSteps:
    """AMED-Plugin's learned values on a base grid ``base`` (t_0 … t_N): ``ratios`` r_n and ``scales``
    c_n of the first len(ratios) steps, ``afs`` for an analytical first step, ``floor`` the σ_min
    that a step into σ = 0 interpolates towards (floats, or 0-dim tensors while fitted)."""

    base: Sequence[Level]
    ratios: Sequence[Level]
    scales: Sequence[Level]
    afs: bool
    floor: float

    def grid(self) -> Tensor:
        """t_0, s_0, t_1, …, t_n for the n = len(ratios) steps (without t_0 under AFS)."""
        pts: list[Level] = []
        for n, r in enumerate(self.ratios):
            t, nxt = self.base[n], self.base[n + 1]
            low = nxt if float(nxt) > 0 else self.floor
            mid = t * (torch.exp(-r * torch.log(t / low)) if isinstance(r, Tensor) or isinstance(t, Tensor)
                       else math.exp(-r * math.log(t / low)))
            pts += [t, mid]
        pts = pts[1:] if self.afs else pts
        pts.append(self.base[len(self.ratios)])
        if any(isinstance(p, Tensor) for p in pts):
            return torch.stack([torch.as_tensor(p, dtype=torch.float64) for p in pts])
        return torch.tensor(pts, dtype=torch.float64)

    def theta(self) -> list:
        """θ per evaluation (form ``amed``): 0 at t_n, c_n − 1 at s_n."""
        rows = [row for c in self.scales for row in ([0.0], [c - 1])]
        return rows[1:] if self.afs else rows

    def correction(self, **provenance) -> Correction:
        return Correction("amed", self.theta(), provenance=provenance,
                          afs=float(self.base[0]) if self.afs else None)


def _base(denoiser, solver: str, nfe: int, grid: GridSpec):
    spec = get_solver(solver)
    if spec.stage_grid or spec.plan is not one_per_step or spec.corrects_back:
        raise InvalidChoice(f"AMED-Plugin runs on solvers with one evaluation per step and no corrector (ddim, euler, "
                            f"ipndm, deis*, dpmpp*), not {spec.name}"
                            + (": UniPC's corrector redoes each step from the raw outputs, so the scale of the "
                               "inserted evaluation would mostly be lost" if spec.corrects_back else ""))
    steps, afs = amed_steps(nfe)
    proto = resolve(grid, spec.name, denoiser)
    if isinstance(proto, Protocol):  # the authors' grids end at σ_min (uniform_torch's integer steps end at 0)
        spacing = "time_uniform" if proto.spacing == "uniform_torch" else proto.spacing
        proto = replace(proto, spacing=spacing, endpoint="sigma_min")
    _, base, _ = solver_grid(denoiser, spec, steps, proto)
    return spec, base, afs


def amed_correction(denoiser, solver: str, nfe: int, ratios: Sequence[float], scales: Sequence[float],
                    grid: GridSpec = None, **provenance) -> Correction:
    """The AMED-Plugin correction of ``solver`` at ``nfe`` with the given r_n and c_n on the base grid of
    ``grid``: sample it with :func:`dode.learn.sample_learned` (or ``dode.sample`` at ``nfe`` on
    :func:`dode.learn.grid_of`)."""
    spec, base, afs = _base(denoiser, solver, nfe, grid)
    if len(ratios) != len(base) - 1 or len(scales) != len(ratios):
        raise ValueError(f"{solver} at NFE {nfe} takes {len(base) - 1} steps: give as many ratios and scales")
    steps = AmedSteps(base.tolist(), [float(r) for r in ratios], [float(c) for c in scales], afs,
                      float(denoiser.sigma_min))
    sig = [float(v) for v in steps.grid()]
    return steps.correction(method="amed", solver=spec.name, nfe=int(nfe), grid=sig, grid_learned=True, sigmas=sig,
                            base_grid=grid_record(grid, base), base_sigmas=base.tolist(), afs=afs,
                            ratios=list(steps.ratios), scales=list(steps.scales), model=weights_digest(denoiser),
                            dode_version=__version__, **provenance)


def fit_amed(denoiser, noise: Tensor, solver: str = "ddim", nfe: int = 5, grid: GridSpec = None,
             teacher: str | None = None, scale: int = 10, targets: Targets | None = None, iters: int = 40,
             lr: float = 0.1, scale_dir: float = 0.01, guard: bool = True, progress: bool = False,
             **provenance) -> Correction:
    """AMED-Plugin on ``solver`` at ``nfe`` (module docstring): r_n and c_n fitted step by step on the batch
    ``noise`` against the states of ``teacher`` (None: ``solver``; its grid the base grid refined ``scale``×) or of
    ``targets`` (σ → state) at the base grid's points; ``iters`` Adam steps per step (learning rate
    ``lr``) from r = 1/2, c = 1, keeping the best values seen. Returns the correction (form ``amed``,
    grid and AFS in it) with r, c, the losses and ``fit_seconds`` in its provenance; with ``guard`` the
    base solver instead where its samples are closer to the teacher's (module docstring)."""
    start = time.perf_counter()
    spec, base, afs = _base(denoiser, solver, nfe, grid)
    pts = base.tolist()
    if targets is None:
        with torch.no_grad():
            states, tinfo = teacher_states(denoiser, noise, teacher or spec.name, pts, scale,
                                           spacing_of(grid, spec.name, denoiser))
        targets = states.__getitem__
    else:
        tinfo = {"teacher": "given targets"}
    floor = float(denoiser.sigma_min)
    ratios: list[float] = []
    scales: list[float] = []
    cache: list[Tensor] = []
    log: dict[str, list[float]] = {"loss_init": [], "loss_best": []}

    def student(steps: AmedSteps, path) -> Tensor:
        sig = steps.grid()
        return run_solver(path, spec, noise, sig, spec.plan(len(sig) - 1, bool(sig[-1] == 0)))

    def mid(j: int) -> int:
        """The index of the evaluation at s_j."""
        return 2 * j + (0 if afs else 1)

    bar = tqdm(total=len(pts) - 1, desc=f"fit amed {spec.name}@{nfe}", disable=not progress, leave=False)
    for n in range(len(pts) - 1):
        del cache[mid(n - 1) if n else 0:]  # the evaluations before s_{n−1} do not depend on step n − 1's values
        with torch.no_grad():  # fill the cache up to s_n with the fitted values of the earlier steps
            fixed = AmedSteps(pts, ratios + [0.5], scales + [1.0], afs, floor)
            try:
                student(fixed, ReplayPath(denoiser, fixed.correction(), cache, mid(n)))
            except Stop:
                pass
        target = targets(pts[n + 1])
        ab = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([ab], lr=lr)
        best = (math.inf, 0.5, 1.0)
        with torch.enable_grad():
            for it in range(iters + 1):
                r, c = torch.sigmoid(ab[0]), 1 + scale_dir * torch.tanh(ab[1])
                steps = AmedSteps([torch.tensor(p, dtype=torch.float64) for p in pts], ratios + [r], scales + [c],
                                  afs, floor)
                x = student(steps, ReplayPath(denoiser, steps.correction(), list(cache), -1))
                loss = (x - target).pow(2).mean()
                if it == 0:
                    log["loss_init"].append(float(loss.detach()))
                if float(loss.detach()) < best[0]:
                    best = (float(loss.detach()), float(r.detach()), float(c.detach()))
                if it == iters:
                    break
                opt.zero_grad()
                loss.backward()
                opt.step()
        ratios.append(best[1])
        scales.append(best[2])
        log["loss_best"].append(best[0])
        bar.update(1)
    bar.close()
    fitted = amed_correction(denoiser, spec.name, nfe, ratios, scales, grid, batch=int(noise.shape[0]), iters=iters,
                             lr=lr, scale_dir=scale_dir, **tinfo, **log, **provenance)
    if guard:
        end = targets(pts[-1])
        with torch.no_grad():
            zero = denoiser(end, as_sigma(pts[-1], end)) if pts[-1] > 0 else end  # the teacher's last step into 0
        fitted = guarded(fitted, denoiser, noise, grid, lambda sigma: end if sigma > 0 else zero)
    fitted.provenance["fit_seconds"] = time.perf_counter() - start
    return fitted
