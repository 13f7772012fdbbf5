"""IIA and S4S: two more learned few-step solvers on D-ODE's one model-call path (no copied solver).

Both are a base solver of :mod:`dode.core.solvers` plus per-evaluation numbers θ_k that enter through the
one hook :meth:`dode.core.path.ModelPath.correct` as a :class:`~dode.core.path.Correction`: at model evaluation
k the solver's x0 estimate d_k becomes ``d̃_k = d_k + Σ_m θ_{k,m} g_{k,m}`` (θ = 0 is the base solver
bit for bit). Notation as in ``dode.core.path``: VE state x at noise level σ, ε = (x − d)/σ.

**IIA** — "On Accelerating Diffusion-Based Sampling Processes via Improved Integration
Approximation", Zhang, Niwa & Kleijn, ICLR 2024. For every student step, from the student's own
state z_i at σ_i, the *original* solver run over M fine sub-steps of [σ_i, σ_{i+1}] gives z_fine; the
coefficients of the step minimise Σ_batch ‖z_fine − z_{i+1}(θ)‖², a tiny linear least-squares
problem solved in closed form (float64), step by step along the student's own (already corrected)
trajectory. Forms (``dode.core.path.FORMS``):

* ``iia`` — IIA-DDIM / IIA-DPM-Solver / IIA-EDM: g = [Δx̂0, Δε] = [d_k − d_{k−1}, −σ_k(ε_k − ε_{k−1})]
  (a change δ of ε moves x0 by −σ·δ). On DDIM, ``x_{i+1} = x̂0 + σ_{i+1} ε̂`` picks up
  ``(1 − σ_{i+1}/σ_i)(θ_1 Δx̂0 − σ_i θ_2 Δε)``: weights on the differences of the last two data and
  noise predictions, as IIA-DDIM. On EDM Heun the Euler stage pairs with the previous step's
  gradient (past gradients) and the corrector with the step's own Euler stage, so θ of the corrector
  reweights Heun's two terms ``½ε_i + ½ε'`` (IIA-EDM).
* ``biia`` — BIIA-EDM: one weight, on Δε. On Heun's corrector it turns the trapezoid weights (½, ½)
  into (½ − θ/2, ½ + θ/2); on every other evaluation it adds θ (ε_k − ε_{k−1}) to the gradient.

There is no output before the first evaluation (both forms act in x0 space: no x_T pseudo-output),
so θ_0 = 0. Fine solver: the student's own method (``fine_solver`` overrides it, e.g. ``"ddim"``),
started afresh from the student's state over M sub-intervals refined by
:func:`dode.core.schedules.refine` in the grid's own spacing. What "the step's start" is comes from
:func:`dode.learn.dode.fit_correction`: the last model input at a σ above the evaluation's end — for
Heun's corrector that is the step's start state (so the Euler stage and the corrector of one step
share one fine target, computed once); for the inner stages of singlestep DPM-Solver it is the inner
stage's input (so each stage is fitted to the fine flow over its own sub-interval).

**S4S** — "S4S: Solving for a Diffusion Model Solver", Frankel, Chen, Li, Koh, Ratliff & Oh, 2025.
Learn the solver itself: with the forms ``s4s`` (w = 3), ``s4s2``, ``s4s4`` the features are the
last w data predictions, ``d̃_k = (1 + θ_{k,0}) d_k + θ_{k,1} d_{k−1} + … + θ_{k,w−1} d_{k−w+1}``,
so on DDIM (x_{i+1} = (σ_{i+1}/σ_i) x_i + (1 − σ_{i+1}/σ_i) d̃_i) the student is a linear multistep
solver in data-prediction form with free per-step coefficients, initialised at the base solver
(θ = 0; e.g. DPM-Solver++(2M) is θ_k = (1/(2r_k), −1/(2r_k)), r_k = h_{k−1}/h_k). With Heun as the
base solver the corrector stage gets its own coefficients (the predictor–corrector variant). The θ
are torch tensors optimised with Adam so that the student's final samples match a strong teacher's
on a batch of noises — data-free:

    min_θ  E_noise  dist(student_θ(noise), teacher(noise)),  dist = mean squared error by default

(or the FD-digits classifier's features, or LPIPS, or any callable). The paper's relaxed (LD3-style)
objective is not implemented. **S4S-Alt** alternates this with optimising the time grid: the σ of
the grid between its fixed ends σ_0 and σ_{N−1} (σ_N = 0 kept) are

    u_i = u_0 + (u_{N−1} − u_0) · Σ_{j<i} softmax(ℓ)_j,   σ_i = u^{-1}(u_i),

with u = σ^{1/ρ} (``grid_space="rho"``), log σ or the schedule's time — strictly monotone for every
ℓ — and ℓ (one fixed at 0, N − 2 free) optimised derivative-free by Nelder–Mead (scipy), each loss
one student run on the batch: the solvers turn σ into Python floats, so no gradient flows to σ.
A grid step is accepted only when it lowers the loss, so the loss never rises.

The learned grid is stored as the list ``provenance["grid"]`` with ``provenance["grid_learned"] =
True``; :func:`grid_of` gives what to pass as ``grid=`` and :func:`sample_learned` samples with it.
Every fit records ``fit_seconds`` (and ``teacher_seconds``) in the provenance and shows a tqdm bar
with ``progress=True``.
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dode import __version__
from dode.learn.dode import fit_correction
from dode.learn.record import feature_columns
from dode.errors import InvalidChoice, UserError
from dode.core.forms import Correction
from dode.core.path import ModelPath
from dode.core.sampling import run_solver, sample, solver_grid
from dode.core.schedules import Grid, refine, schedule_of
from dode.core.solvers import Solver, get_solver

__all__ = [
    "fit_iia", "FineTargets", "step_errors",
    "fit_s4s", "fit_s4s_alt", "s4s_form", "teacher_samples", "MonotoneGrid",
    "mse_distance", "FeatureDistance", "lpips_distance", "get_distance",
    "grid_of", "sample_learned",
    "fit_iia_point", "fit_s4s_point", "fit_s4s_alt_point",
]

IIA_FORMS = ("iia", "biia")
S4S_FORMS = {2: "s4s2", 3: "s4s", 4: "s4s4"}


def _grid_record(grid: Grid, sigmas: Tensor | None = None):
    """A grid for the provenance: its name, or the list of σ of an explicit grid."""
    if isinstance(grid, (str, type(None))):
        return grid
    return [float(v) for v in (torch.as_tensor(grid) if sigmas is None else sigmas)]


# ============================================================================================== IIA
class FineTargets:
    """IIA's step targets: the base solver over ``substeps`` fine sub-steps of one student interval.

    Called by :func:`dode.learn.dode.fit_correction` as ``targets(k, x_start, σ_start, σ_next)``; runs
    ``solver`` (a name or :class:`~dode.core.solvers.Solver`) from ``x_start`` at σ_start to σ_next on the
    interval refined ``substeps`` times by :func:`dode.core.schedules.refine` in the spacing of ``grid``.
    The last answer is cached: Heun's two stages of one step ask for the same target. ``nfe`` counts
    the model evaluations spent (per sample).
    """

    def __init__(self, denoiser, solver: str | Solver, substeps: int = 10, grid: Grid = None):
        if int(substeps) < 1:
            raise ValueError(f"substeps must be at least 1, got {substeps}")
        self.denoiser, self.substeps, self.grid = denoiser, int(substeps), grid
        self.spec = solver if isinstance(solver, Solver) else get_solver(solver)
        self.nfe = 0
        self._last: tuple | None = None

    def fine(self, x: Tensor, sigma_start: float, sigma_next: float) -> Tensor:
        fine = refine(torch.tensor([sigma_start, sigma_next], dtype=torch.float64), self.substeps,
                      self.denoiser, self.grid)
        plan = self.spec.plan_for_steps(len(fine) - 1, bool(fine[-1] == 0))
        path = ModelPath(self.denoiser)
        with torch.no_grad():
            out = self.spec.fn(path, x, fine, plan)
        self.nfe += path.nfe
        return out

    def __call__(self, k: int, x: Tensor, sigma_start: float, sigma_next: float) -> Tensor:
        key = (float(sigma_start), float(sigma_next))
        if self._last is not None and self._last[0] == key and torch.equal(self._last[1], x):
            return self._last[2]
        out = self.fine(x, *key)
        self._last = (key, x, out)
        return out


def fit_iia(denoiser, noise: Tensor, solver: str = "ddim", nfe: int = 10, substeps: int = 10,
            form: str = "iia", grid: Grid = None, fine_solver: str | None = None, progress: bool = False,
            **provenance) -> Correction:
    """IIA (Zhang, Niwa & Kleijn, ICLR 2024): fit ``form`` (``iia`` or ``biia``) for ``solver`` at
    ``nfe`` on one batch of standard-normal ``noise``.

    Step by step along the student's own trajectory, θ_k = argmin Σ_batch ‖z_fine − z_{k+1}(θ)‖²
    in closed form (float64 least squares), where z_fine is ``fine_solver`` (default: the student's
    own method) over ``substeps`` (M) sub-steps from the student's state at the start of the step
    (see :class:`FineTargets`). Cost: one student run plus about M·(NFE of the method per step)
    evaluations per student step, on the batch. Returns a :class:`~dode.core.path.Correction` for
    :func:`dode.sample`; extra keyword arguments go into its provenance.
    """
    if form not in IIA_FORMS:
        raise InvalidChoice(f"IIA fits the forms {', '.join(IIA_FORMS)}, not {form!r}")
    spec = get_solver(solver)
    fine = get_solver(fine_solver or spec.name)
    targets = FineTargets(denoiser, fine, substeps, grid)
    corr = fit_correction(denoiser, noise, spec.name, nfe, substeps, form, grid, targets=targets,
                          progress=progress, method="iia", substeps=int(substeps), **provenance)
    corr.provenance.update(teacher=fine.name, fine_solver=fine.name, target_nfe=targets.nfe)
    return corr


def step_errors(denoiser, noise: Tensor, solver: str = "ddim", nfe: int = 10,
                correction: Correction | None = None, substeps: int = 10, grid: Grid = None,
                fine_solver: str | None = None) -> Tensor:
    """IIA's per-step error: for every evaluation k of the (corrected) student, the RMS distance
    between the state after it and ``fine_solver`` over ``substeps`` sub-steps from the student's
    own state at the start of the step (the same start as in :func:`fit_iia`). float64, shape (nfe,)."""
    spec, sigmas, plan = solver_grid(denoiser, solver, nfe, grid)
    path = ModelPath(denoiser, correction, record=True)
    with torch.no_grad():
        final = run_solver(path, spec, noise, sigmas, plan)
    targets = FineTargets(denoiser, get_solver(fine_solver or spec.name), substeps, grid)
    inputs = [call.x for call in path.calls]
    after = inputs[1:] + [final]
    sig_after = path.sigmas[1:] + [float(sigmas[-1])]
    errs = []
    for k in range(nfe):
        j = max(i for i in range(k + 1) if path.sigmas[i] > sig_after[k])
        want = targets(k, inputs[j], path.sigmas[j], sig_after[k])
        errs.append(float((after[k] - want).double().pow(2).mean().sqrt()))
    return torch.tensor(errs, dtype=torch.float64)


# ======================================================================================== distances
def mse_distance(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error (the batch mean of per-sample mean squared differences)."""
    return (x - y).pow(2).mean()


class FeatureDistance:
    """Mean squared distance between per-sample features of a frozen network on [−1, 1] images:
    ``mean_b ‖f(x_b) − f(y_b)‖²``, the network fed ``(x + 1)·127.5`` (clean-fid's [0, 255] input).

    ``FeatureDistance.metric("fd_digits")`` uses the digits classifier of :mod:`dode.eval.metrics` (the
    FD-digits feature network). The target's features are cached (the teacher is fixed)."""

    def __init__(self, net: Callable, name: str = "features"):
        self.net, self.name = net, name
        self._cache: dict = {}

    @classmethod
    def metric(cls, metric: str = "fd_digits", device: str = "cpu", classifier: str | None = None):
        try:
            from dode.eval.metrics import feature_extractor
        except ImportError as e:  # pragma: no cover - dode.eval.metrics is part of the package
            raise UserError(f"distance={metric!r} needs dode.eval.metrics: {e}") from None
        if metric != "fd_digits":
            raise InvalidChoice(f"a differentiable feature distance exists for 'fd_digits' only, not {metric!r} "
                                "(Inception FID needs a non-differentiable resize)")
        net = feature_extractor(metric, device, classifier)
        for p in net.parameters():
            p.requires_grad_(False)
        return cls(net, metric)

    def features(self, x: Tensor) -> Tensor:
        return self.net((x.float() + 1) * 127.5).flatten(1)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        key = (y.data_ptr(), tuple(y.shape), y._version)
        if key not in self._cache:
            if len(self._cache) >= 256:
                self._cache.clear()
            with torch.no_grad():
                self._cache[key] = self.features(y)
        return (self.features(x) - self._cache[key]).pow(2).sum(1).mean()


def lpips_distance(weights: str | Path | None, net: str = "vgg", resize: int | None = 224) -> Callable:
    """LPIPS (Zhang et al. 2018) as an S4S distance, from *local* weights only (nothing is
    downloaded): ``weights`` is a ``torch.save``-d full state dict of ``lpips.LPIPS(net=net)``
    (backbone and linear layers). Images in [−1, 1] are upsampled bilinearly to ``resize`` first
    (as LD3 and S4S do for 32×32 images). Needs ``pip install lpips``."""
    if not weights or not Path(weights).is_file():
        raise UserError(f"distance='lpips' needs local LPIPS weights: lpips_weights={weights!r} is not a file. "
                        "Save a full state dict once where the weights can be downloaded (`torch.save(lpips.LPIPS("
                        f"net='{net}').state_dict(), 'lpips_{net}.pt')`) and pass its path, or use distance='l2'")
    try:
        import lpips  # type: ignore
    except ImportError:
        raise UserError("distance='lpips' needs the lpips package: pip install lpips") from None
    model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def dist(x: Tensor, y: Tensor) -> Tensor:
        x, y = x.float(), y.float()
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        if resize and x.shape[-1] != resize:
            up = lambda t: torch.nn.functional.interpolate(t, size=(resize, resize), mode="bilinear",  # noqa: E731
                                                           align_corners=False)
            x, y = up(x), up(y)
        return model.to(x.device)(x, y).mean()

    dist.name = f"lpips-{net}"  # type: ignore[attr-defined]
    return dist


def get_distance(distance: str | Callable = "l2", device: str = "cpu", classifier: str | None = None,
                 lpips_weights: str | None = None) -> tuple[Callable, str]:
    """(callable, name) for ``distance``: ``"l2"``, ``"fd_digits"`` (classifier features), ``"lpips"``
    (with ``lpips_weights``) or any callable ``(x, y) -> scalar`` that is a batch mean."""
    if callable(distance):
        return distance, getattr(distance, "name", getattr(distance, "__name__", "custom"))
    if distance in ("l2", "mse"):
        return mse_distance, "l2"
    if distance == "fd_digits":
        return FeatureDistance.metric("fd_digits", device, classifier), "fd_digits"
    if distance == "lpips":
        return lpips_distance(lpips_weights), "lpips"
    raise InvalidChoice(f"unknown distance {distance!r}; valid: l2, fd_digits, lpips, or a callable")


# ============================================================================================== S4S
def s4s_form(window: int) -> str:
    if window not in S4S_FORMS:
        raise InvalidChoice(f"S4S windows are {', '.join(map(str, S4S_FORMS))} data predictions, not {window}")
    return S4S_FORMS[window]


def teacher_samples(denoiser, noise: Tensor, teacher: str = "heun", teacher_nfe: int = 199,
                    grid: Grid = None) -> Tensor:
    """Final samples of a strong ``teacher`` (solver name) with ``teacher_nfe`` evaluations on
    ``grid`` (default: the model's), from the same standard-normal ``noise`` (no gradients)."""
    with torch.no_grad():
        return sample(denoiser, noise, teacher, teacher_nfe, grid=grid)


class _S4SProblem:
    """The student, the teacher's samples and the distance of one S4S fit."""

    def __init__(self, denoiser, noise, targets, spec, plan, form, distance, chunk):
        self.denoiser, self.noise, self.targets = denoiser, noise, targets
        self.spec, self.plan, self.form = spec, plan, form
        self.distance, self.chunk = distance, chunk
        self.runs = 0

    def correction(self, params: Tensor) -> Correction:
        return Correction(self.form, [list(row.unbind()) for row in params])

    def loss(self, params: Tensor, sigmas: Tensor, noise: Tensor | None = None, targets: Tensor | None = None,
             backward: bool = False) -> float:
        """dist(student, teacher) over the batch (in chunks of ``chunk``; gradients accumulated)."""
        noise = self.noise if noise is None else noise
        targets = self.targets if targets is None else targets
        size = int(self.chunk or len(noise))
        total = 0.0
        with torch.set_grad_enabled(backward):
            for i in range(0, len(noise), size):
                n, y = noise[i:i + size], targets[i:i + size]
                path = ModelPath(self.denoiser, self.correction(params))
                x = run_solver(path, self.spec, n, sigmas, self.plan)
                part = self.distance(x, y) * (len(n) / len(noise))
                if backward:
                    part.backward()
                total += float(part.detach())
        self.runs += 1
        return total


def _optimise(problem: _S4SProblem, params: Tensor, sigmas: Tensor, iters: int, lr: float, mask: Tensor,
              val: tuple | None, eval_every: int, progress: bool, desc: str,
              optimizer: str = "adam") -> tuple[Tensor, dict]:
    """Minimise the S4S loss over ``params`` (entries where ``mask`` is 0 stay fixed).

    ``adam``: ``iters`` Adam steps with a cosine learning-rate decay from ``lr`` to ``lr/100``;
    ``lbfgs``: L-BFGS with strong-Wolfe line search, at most ``iters`` iterations (precise on small,
    ill-conditioned problems; ``lr`` is its initial step, 1 is usual). Returns the best parameters
    seen — by the loss on ``val`` = (noise, targets) when given (scored every ``eval_every`` Adam
    steps, and at the end), else by the training loss — and a log."""
    if optimizer not in ("adam", "lbfgs"):
        raise InvalidChoice(f"unknown optimizer {optimizer!r}; valid: adam, lbfgs")
    p = params.detach().clone().requires_grad_(True)
    train0 = problem.loss(p.detach(), sigmas)
    log = {"optimizer": optimizer, "loss_init": train0, "curve": []}
    state = {"train": (train0, p.detach().clone()), "evals": 0}
    if val is not None:
        log["val_init"] = problem.loss(p.detach(), sigmas, *val)
        state["val"] = (log["val_init"], p.detach().clone())
    bar = tqdm(total=iters, desc=desc, disable=not progress, leave=False)

    def closure() -> Tensor:
        if p.grad is not None:
            p.grad = None
        loss = problem.loss(p, sigmas, backward=True)
        p.grad.mul_(mask)
        if loss < state["train"][0]:
            state["train"] = (loss, p.detach().clone())
        if state["evals"] % max(1, iters // 20) == 0:
            log["curve"].append([state["evals"], loss])
        state["evals"] += 1
        return torch.tensor(loss, dtype=torch.float64)

    def score_val() -> None:
        v = problem.loss(p.detach(), sigmas, *val)
        if v < state["val"][0]:
            state["val"] = (v, p.detach().clone())

    if optimizer == "adam":
        opt = torch.optim.Adam([p], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(iters, 1), eta_min=lr * 0.01)
        for it in range(iters):
            loss = float(closure())
            opt.step()
            sched.step()
            if val is not None and ((it + 1) % eval_every == 0 or it + 1 == iters):
                score_val()
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", best=f"{state['train'][0]:.4g}")
    else:
        opt = torch.optim.LBFGS([p], lr=lr, max_iter=iters, max_eval=int(iters * 1.5) + 1, history_size=50,
                                tolerance_grad=1e-14, tolerance_change=1e-16, line_search_fn="strong_wolfe")

        def counted() -> Tensor:
            out = closure()
            bar.update(1)
            bar.set_postfix(loss=f"{float(out):.4g}", best=f"{state['train'][0]:.4g}")
            return out

        opt.step(counted)
        if val is not None:
            score_val()
    bar.close()
    last = problem.loss(p.detach(), sigmas)  # the parameters after the last step
    if last < state["train"][0]:
        state["train"] = (last, p.detach().clone())
    log["gradient_evals"] = state["evals"]
    if val is None:
        best = state["train"][1]
        log["loss_best"] = state["train"][0]
    else:
        best = state["val"][1]
        log["val_best"] = state["val"][0]
        log["loss_best"] = problem.loss(best, sigmas)
    return best, log


def _as_params(init: Correction | None, nfe: int, width: int, form: str) -> Tensor:
    params = torch.zeros(nfe, width, dtype=torch.float64)
    if init is not None:
        if init.form != form:
            raise ValueError(f"init has form {init.form!r}, the fit {form!r}")
        for k in range(min(nfe, len(init.theta))):
            row = [float(v) for v in init.theta[k]][:width]
            params[k, :len(row)] = torch.tensor(row, dtype=torch.float64)
    return params


def _setup_s4s(denoiser, noise, solver, nfe, window, grid, teacher, teacher_nfe, teacher_grid, targets,
               distance, lpips_weights, classifier, chunk):
    form = s4s_form(window)
    spec, sigmas, plan = solver_grid(denoiser, solver, nfe, grid)
    start = time.perf_counter()
    if targets is None:
        targets = teacher_samples(denoiser, noise, teacher, teacher_nfe, teacher_grid)
        tinfo = {"teacher": teacher, "teacher_nfe": int(teacher_nfe), "teacher_grid": _grid_record(teacher_grid)}
    else:
        targets = torch.as_tensor(targets)
        if targets.shape != noise.shape:
            raise ValueError(f"targets have shape {tuple(targets.shape)}, the noise {tuple(noise.shape)}")
        tinfo = {"teacher": "given targets"}
    tinfo["teacher_seconds"] = time.perf_counter() - start
    if chunk and int(chunk) < len(noise) and getattr(denoiser, "model_kwargs", None):
        raise UserError("chunk splits the fit batch, but the model carries per-batch model_kwargs (class labels); "
                        "use chunk=null (or a smaller batch)")
    dist, dname = get_distance(distance, str(noise.device), classifier, lpips_weights)
    problem = _S4SProblem(denoiser, noise, targets.to(noise.dtype), spec, plan, form, dist, chunk)
    present = feature_columns(denoiser, spec, sigmas, plan, form)
    mask = torch.tensor([[float(c) for c in row] for row in present], dtype=torch.float64)
    return form, spec, sigmas, plan, problem, mask, tinfo, dname


def _val_pair(denoiser, val_noise, val_targets, teacher, teacher_nfe, teacher_grid):
    if val_noise is None:
        return None
    if val_targets is None:
        val_targets = teacher_samples(denoiser, val_noise, teacher, teacher_nfe, teacher_grid)
    return val_noise, torch.as_tensor(val_targets).to(val_noise.dtype)


def _finish(form, params, mask, provenance) -> Correction:
    theta = (params.detach() * mask).tolist()
    return Correction(form, [[float(v) for v in row] for row in theta], provenance=provenance)


def fit_s4s(denoiser, noise: Tensor, solver: str = "ddim", nfe: int = 5, window: int = 3, grid: Grid = None,
            teacher: str = "heun", teacher_nfe: int = 199, teacher_grid: Grid = None, targets: Tensor | None = None,
            distance: str | Callable = "l2", iters: int = 200, lr: float = 3e-2, chunk: int | None = None,
            val_noise: Tensor | None = None, val_targets: Tensor | None = None, eval_every: int = 10,
            init: Correction | None = None, optimizer: str = "adam", lpips_weights: str | None = None,
            classifier: str | None = None, progress: bool = False, **provenance) -> Correction:
    """S4S (Frankel et al. 2025): learn the per-evaluation coefficients of ``solver`` on its last
    ``window`` data predictions (form ``s4s``/``s4s2``/``s4s4``) so that its final samples from
    ``noise`` match ``teacher``'s (``teacher_nfe`` evaluations; or the given ``targets``).

    Adam (``iters`` steps, learning rate ``lr`` with cosine decay, gradients through the model and the
    solver by autograd, in ``chunk``-sized pieces when memory is short) from θ = 0 (the base solver)
    or ``init`` (``optimizer="lbfgs"``: L-BFGS instead, for small problems solved precisely). Returns
    the best θ seen — by the loss on ``val_noise`` (held-out noise, teacher run on it unless
    ``val_targets``) when given, else by the training loss. ``distance``: ``"l2"``
    (mean squared error), ``"fd_digits"`` (digits-classifier features), ``"lpips"`` (with
    ``lpips_weights``) or a callable ``(x, y) -> batch-mean scalar``. Returns a
    :class:`~dode.core.path.Correction` (float θ) with ``fit_seconds`` and the losses in its provenance.
    """
    start = time.perf_counter()
    form, spec, sigmas, plan, problem, mask, tinfo, dname = _setup_s4s(
        denoiser, noise, solver, nfe, window, grid, teacher, teacher_nfe, teacher_grid, targets, distance,
        lpips_weights, classifier, chunk)
    val = _val_pair(denoiser, val_noise, val_targets, teacher, teacher_nfe, teacher_grid)
    params = _as_params(init, nfe, len(mask[0]), form)
    with torch.enable_grad():
        params, log = _optimise(problem, params, sigmas, iters, lr, mask, val, eval_every, progress,
                                f"fit s4s {spec.name}@{nfe}", optimizer)
    prov = {"method": "s4s", "solver": spec.name, "nfe": nfe, "form": form, "window": window,
            "grid": _grid_record(grid, sigmas), "sigmas": [float(v) for v in sigmas], "batch": int(noise.shape[0]),
            "distance": dname, "iters": iters, "lr": lr, **tinfo, **log, "student_runs": problem.runs,
            "fit_seconds": time.perf_counter() - start, "dode_version": __version__, **provenance}
    return _finish(form, params, mask, prov)


# ========================================================================================= S4S-Alt
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


def _nelder_mead(problem: _S4SProblem, params: Tensor, mg: MonotoneGrid, logits: Tensor, loss0: float,
                 evals: int, step: float, progress: bool, desc: str) -> tuple[Tensor, float, int]:
    """Nelder–Mead on the free logits (params fixed); returns (best logits, its loss, evaluations)."""
    import numpy as np
    from scipy.optimize import minimize

    best = [loss0, logits.clone()]
    bar = tqdm(total=evals, desc=desc, disable=not progress, leave=False)
    count = [0]

    def f(v):
        count[0] += 1
        bar.update(1)
        sig = mg.sigmas(torch.from_numpy(np.asarray(v, dtype=np.float64)))
        if not MonotoneGrid.monotone(sig):
            return 1e300
        with torch.no_grad():
            loss = problem.loss(params, sig)
        if not math.isfinite(loss):
            return 1e300
        if loss < best[0]:
            best[0], best[1] = loss, torch.as_tensor(np.array(v, dtype=np.float64))
        bar.set_postfix(best=f"{best[0]:.4g}")
        return loss

    x0 = logits.numpy()
    simplex = np.vstack([x0] + [x0 + step * e for e in np.eye(len(x0))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        minimize(f, x0, method="Nelder-Mead",
                 options={"maxfev": evals, "initial_simplex": simplex, "xatol": 1e-4, "fatol": 0.0})
    bar.close()
    return best[1], best[0], count[0]


def fit_s4s_alt(denoiser, noise: Tensor, solver: str = "ddim", nfe: int = 5, window: int = 3, grid: Grid = None,
                rounds: int = 3, grid_space: str = "rho", grid_evals: int = 60, grid_step: float = 0.5,
                teacher: str = "heun", teacher_nfe: int = 199, teacher_grid: Grid = None,
                targets: Tensor | None = None, distance: str | Callable = "l2", iters: int = 200,
                round_iters: int | None = None, lr: float = 3e-2, chunk: int | None = None,
                val_noise: Tensor | None = None, val_targets: Tensor | None = None, eval_every: int = 10,
                optimizer: str = "adam", lpips_weights: str | None = None, classifier: str | None = None,
                rho: float = 7.0, free_end: bool = True, progress: bool = False, **provenance) -> Correction:
    """S4S-Alt (Frankel et al. 2025): alternate S4S's coefficient fit (Adam, see :func:`fit_s4s`)
    with a derivative-free search of the time grid (:class:`MonotoneGrid` logits in ``grid_space``,
    Nelder–Mead with at most ``grid_evals`` student runs per round, initial simplex of size
    ``grid_step``): θ-fit (``iters`` Adam steps), then ``rounds`` × [grid search, θ-fit
    (``round_iters`` steps, default ``iters // 2``, warm-started)]. A grid is accepted only if it
    lowers the training loss. ``free_end``: from the second grid search on, the last positive σ is
    searched too (only σ_0 and the final σ = 0 stay), else it keeps the base grid's value. The
    learned grid (ending at σ = 0) is ``provenance["grid"]`` (``grid_learned`` = True); pass
    ``grid=grid_of(correction)`` to :func:`dode.sample`, or use :func:`sample_learned`.
    """
    start = time.perf_counter()
    form, spec, sigmas, plan, problem, mask, tinfo, dname = _setup_s4s(
        denoiser, noise, solver, nfe, window, grid, teacher, teacher_nfe, teacher_grid, targets, distance,
        lpips_weights, classifier, chunk)
    val = _val_pair(denoiser, val_noise, val_targets, teacher, teacher_nfe, teacher_grid)
    base = MonotoneGrid(denoiser, sigmas, grid_space, rho)  # validates the grid space and the base grid
    params = torch.zeros(nfe, len(mask[0]), dtype=torch.float64)
    round_iters = iters // 2 if round_iters is None else round_iters
    history, grid_runs = [], 0
    desc = f"fit s4s-alt {spec.name}@{nfe}"
    with torch.enable_grad():
        params, log = _optimise(problem, params, sigmas, iters, lr, mask, val, eval_every, progress, f"{desc} θ 0",
                                optimizer)
    history.append({"phase": "theta", "round": 0, "loss": log["loss_best"], "loss_init": log["loss_init"],
                    **({"val": log["val_best"]} if val else {})})
    loss0 = log["loss_init"]
    current = log["loss_best"]
    for r in range(1, rounds + 1):
        # each round re-bases the grid at the current one; the last positive σ joins from round 2 on,
        # once the coefficients have adapted to a grid with the base grid's end
        mg = MonotoneGrid(denoiser, sigmas, grid_space, rho, free_end and r > 1)
        if mg.n_free == 0:
            continue
        new_logits, new_loss, n = _nelder_mead(problem, params, mg, mg.init.clone(), current, grid_evals,
                                               grid_step, progress, f"{desc} grid {r}")
        grid_runs += n
        accepted = new_loss < current
        if accepted:
            sigmas, current = mg.sigmas(new_logits), new_loss
        history.append({"phase": "grid", "round": r, "loss": current, "accepted": bool(accepted),
                        "sigmas": [float(v) for v in sigmas]})
        if round_iters > 0:
            with torch.enable_grad():
                p2, log = _optimise(problem, params, sigmas, round_iters, lr, mask, val, eval_every, progress,
                                    f"{desc} θ {r}", optimizer)
            if val is not None or log["loss_best"] <= current:
                params, current = p2, log["loss_best"]
            history.append({"phase": "theta", "round": r, "loss": current, **({"val": log["val_best"]} if val else {})})
    learned = not torch.equal(sigmas, base.base)
    prov = {"method": "s4s_alt", "solver": spec.name, "nfe": nfe, "form": form, "window": window,
            "grid": [float(v) for v in sigmas], "grid_learned": True, "base_grid": _grid_record(grid, base.base),
            "base_sigmas": [float(v) for v in base.base], "grid_changed": learned, "sigmas": [float(v) for v in sigmas],
            "grid_space": grid_space, "free_end": bool(free_end), "rounds": rounds,
            "grid_evals": grid_evals, "batch": int(noise.shape[0]), "distance": dname, "iters": iters,
            "round_iters": round_iters, "lr": lr, **tinfo, "loss_init": loss0, "loss_best": current,
            "history": history, "student_runs": problem.runs, "grid_runs": grid_runs,
            "fit_seconds": time.perf_counter() - start, "dode_version": __version__, **provenance}
    return _finish(form, params, mask, prov)


# ===================================================================================== using fits
def grid_of(correction: Correction | None, default: Grid = None) -> Grid:
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


# ============================================================================ runner entry points
# Called by dode.runner.experiment.fit_stage as fn(denoiser, noise, point, progress, provenance) with the
# distill config in point["distill"] (conf/distill/iia.yaml, s4s.yaml, s4s_alt.yaml).
def fit_iia_point(denoiser, noise, point: dict, progress: bool, provenance: dict) -> Correction:
    d = point["distill"]
    return fit_iia(denoiser, noise, point["solver"]["name"], int(point["nfe"]),
                   substeps=int(d.get("substeps") or point["scale"]), form=d.get("form", "iia"),
                   grid=point["solver"].get("grid"), fine_solver=d.get("fine_solver"), progress=progress,
                   **provenance)


def _s4s_kwargs(d: dict, point: dict) -> dict:
    keys = ("window", "teacher", "teacher_nfe", "distance", "iters", "lr", "chunk", "optimizer", "lpips_weights",
            "classifier")
    kw = {k: d[k] for k in keys if d.get(k) is not None}
    return kw


def fit_s4s_point(denoiser, noise, point: dict, progress: bool, provenance: dict) -> Correction:
    d = point["distill"]
    return fit_s4s(denoiser, noise, point["solver"]["name"], int(point["nfe"]), grid=point["solver"].get("grid"),
                   progress=progress, **_s4s_kwargs(d, point), **provenance)


def fit_s4s_alt_point(denoiser, noise, point: dict, progress: bool, provenance: dict) -> Correction:
    d = point["distill"]
    keys = ("rounds", "grid_space", "grid_evals", "grid_step", "round_iters", "free_end")
    extra = {k: d[k] for k in keys if d.get(k) is not None}
    return fit_s4s_alt(denoiser, noise, point["solver"]["name"], int(point["nfe"]), grid=point["solver"].get("grid"),
                       progress=progress, **_s4s_kwargs(d, point), **extra, **provenance)
