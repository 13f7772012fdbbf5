"""S4S — "S4S: Solving for a Diffusion Model Solver", Frankel, Chen, Li, Koh, Ratliff & Oh, 2025 —
on the one model-call path: a base solver of :mod:`dode.core.solvers` plus per-evaluation θ_k that
enter through :meth:`dode.core.path.ModelPath.correct` (see :mod:`dode.learn`).

Learn the solver itself: with the forms ``s4s`` (w = 3), ``s4s2``, ``s4s4`` the features are the
last w data predictions, ``d̃_k = (1 + θ_{k,0}) d_k + θ_{k,1} d_{k−1} + … + θ_{k,w−1} d_{k−w+1}``,
so on DDIM (x_{i+1} = (σ_{i+1}/σ_i) x_i + (1 − σ_{i+1}/σ_i) d̃_i) the student is a linear multistep
solver in data-prediction form with free per-step coefficients, initialised at the base solver
(θ = 0; e.g. DPM-Solver++(2M) is θ_k = (1/(2r_k), −1/(2r_k)), r_k = h_{k−1}/h_k). With Heun as the
base solver the corrector stage gets its own coefficients (the predictor–corrector variant). The θ
are torch tensors optimised with Adam so that the student's final samples match a strong teacher's
on a batch of noises — data-free:

    min_θ  E_noise  dist(student_θ(noise), teacher(noise)),  dist = mean squared error by default

(or the FD-digits classifier's features, or LPIPS, or any callable), or the paper's relaxed objective
(``radius``: the student may start anywhere within a small ball around the teacher's noise,
:mod:`dode.learn.relaxed`). S4S-Alt (:mod:`dode.learn.s4s_alt`) also learns the time grid.

Data-parallel fits: each of P processes holds a contiguous share N_p of the B noises (and computes
its teacher's targets) and passes a ``reduce`` (:class:`Reduce`, a sum or max over the processes).
The loss is L = Σ_p Σ_{b∈N_p} dist_b / B, so every process weights its chunks by their size over the
global B, and the loss value and the gradients of θ (and of the grid σ) are summed over the
processes before each optimiser step: every process takes the same steps and ends with the same θ,
equal to the one-process fit up to the order of the float sums. The default ``reduce`` is
:func:`alone` (one process: the identity).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dode.version import __version__
from dode.core.denoisers import weights_digest
from dode.core.forms import Correction
from dode.core.path import ModelPath
from dode.core.sampling import run_solver, sample, solver_grid
from dode.core.protocols import GridSpec
from dode.core.solvers import Solver
from dode.errors import InvalidChoice, UserError
from dode.learn.distances import get_distance, per_sample_distances
from dode.learn.grids import grid_record
from dode.learn.record import feature_columns
from dode.learn.relaxed import RelaxedStarts, ld3_radius

__all__ = ["S4S_FORMS", "Reduce", "alone", "s4s_form", "teacher_samples", "S4SProblem", "validation_pair",
           "optimise", "fit_s4s"]

S4S_FORMS = {2: "s4s2", 3: "s4s", 4: "s4s4"}


class Reduce(Protocol):
    """``t`` summed (``op="sum"``) or maximised (``op="max"``) element-wise over the processes of a
    data-parallel fit, returned as a tensor of ``t``'s dtype and device on every process."""

    def __call__(self, t: Tensor, op: str = "sum") -> Tensor: ...


def alone(t: Tensor, op: str = "sum") -> Tensor:
    """The :class:`Reduce` of a fit in one process: ``t`` itself."""
    return t


def s4s_form(window: int) -> str:
    """The correction form of S4S on the last ``window`` data predictions."""
    if window not in S4S_FORMS:
        raise InvalidChoice(f"S4S windows are {', '.join(map(str, S4S_FORMS))} data predictions, not {window}")
    return S4S_FORMS[window]


def teacher_samples(denoiser, noise: Tensor, teacher: str = "heun", teacher_nfe: int = 199,
                    grid: GridSpec = None) -> Tensor:
    """Final samples of a strong ``teacher`` (solver name) with ``teacher_nfe`` evaluations on
    ``grid`` (default: the model's), from the same standard-normal ``noise`` (no gradients)."""
    with torch.no_grad():
        return sample(denoiser, noise, teacher, teacher_nfe, grid=grid)


@dataclass(eq=False)
class S4SProblem:
    """One S4S fit: the student (``spec`` with ``plan`` on the base grid ``sigmas``, the correction
    ``form`` and its ``mask``: 1 where a feature exists, nfe × window; form None: the base solver, no
    coefficients, as LD3), the teacher's final samples ``targets`` for ``noise``, the ``distance``, and
    the relaxed objective's ``starts`` (None: the plain objective); ``reduce`` sums over the processes
    of a data-parallel fit, each holding its share of ``noise`` (``batch``: B, all shares).
    :meth:`loss` runs the student (``runs`` counts)."""

    denoiser: Any
    noise: Tensor
    targets: Tensor
    spec: Solver
    sigmas: Tensor
    plan: list
    form: str | None
    mask: Tensor
    distance: Callable
    distance_name: str
    teacher_info: dict
    chunk: int | None = None
    starts: RelaxedStarts | None = None
    reduce: Reduce = alone
    batch: int = 0
    runs: int = 0

    @classmethod
    def setup(cls, denoiser, noise: Tensor, solver: str, nfe: int, window: int | None, grid: GridSpec, teacher: str,
              teacher_nfe: int, teacher_grid: GridSpec, targets: Tensor | None, distance: str | Callable,
              lpips_weights: str | None, classifier: str | None, chunk: int | None,
              radius: float | str | None = None, relax_step: float = 1.0, reduce: Reduce = alone) -> "S4SProblem":
        """The problem of :func:`fit_s4s` (``window`` None: no coefficients): the teacher runs here
        (on this process's share of the noise) unless ``targets`` are given; ``radius`` not None: the
        relaxed objective with that radius (``"ld3"``: LD3's default for the sample size and the
        number of steps); ``reduce``: a data-parallel fit's (:class:`Reduce`)."""
        if isinstance(radius, str) and radius != "ld3":
            raise InvalidChoice(f"radius must be a number, 'ld3' (LD3's default) or null, not {radius!r}")
        form = None if window is None else s4s_form(window)
        spec, sigmas, plan = solver_grid(denoiser, solver, nfe, grid)
        start = time.perf_counter()
        if targets is None:
            targets = teacher_samples(denoiser, noise, teacher, teacher_nfe, teacher_grid)
            tinfo = {"teacher": teacher, "teacher_nfe": int(teacher_nfe), "teacher_grid": grid_record(teacher_grid)}
        else:
            targets = torch.as_tensor(targets)
            if targets.shape != noise.shape:
                raise ValueError(f"targets have shape {tuple(targets.shape)}, the noise {tuple(noise.shape)}")
            tinfo = {"teacher": "given targets"}
        tinfo["teacher_seconds"] = time.perf_counter() - start
        if chunk and int(chunk) < len(noise) and getattr(denoiser, "model_kwargs", None):
            raise UserError("chunk splits the fit batch, but the model carries per-batch model_kwargs (class "
                            "labels); use chunk=null (or a smaller batch)")
        dist, dname = get_distance(distance, str(noise.device), classifier, lpips_weights)
        if form is None:
            mask = torch.zeros(nfe, 0, dtype=torch.float64)
        else:
            present = feature_columns(denoiser, spec, sigmas, plan, form)
            mask = torch.tensor([[float(c) for c in row] for row in present], dtype=torch.float64)
        if radius == "ld3":
            radius = ld3_radius(tuple(noise.shape[1:]), len(plan))
        starts = None if radius is None else RelaxedStarts(noise, float(radius), relax_step)
        return cls(denoiser, noise, targets.to(noise.dtype), spec, sigmas, plan, form, mask, dist, dname, tinfo,
                   chunk, starts, reduce, cls.count(reduce, noise))

    @staticmethod
    def count(reduce: Reduce, noise: Tensor) -> int:
        """The number of samples of ``noise`` over all processes."""
        return int(reduce(torch.tensor(float(len(noise)), dtype=torch.float64)))

    def correction(self, params: Tensor) -> Correction | None:
        """The student's correction with the rows of ``params`` as θ (tensors: gradients flow)."""
        return None if self.form is None else Correction(self.form, [list(row.unbind()) for row in params])

    def loss(self, params: Tensor, sigmas: Tensor, noise: Tensor | None = None, targets: Tensor | None = None,
             backward: bool = False) -> float:
        """dist(student, teacher) over the batch (in chunks of ``chunk``; gradients accumulated). On the
        training batch with the relaxed objective the student starts from the current starts, whose
        gradient and per-sample distances are recorded for :meth:`relax`. Data-parallel: each chunk
        weighted by its size over all processes' samples; the value and the gradients of the leaves
        ``params`` and ``sigmas`` (which must hold none before) summed over the processes."""
        relaxed = noise is None and self.starts is not None
        whole = self.batch if noise is None else self.count(self.reduce, noise)
        noise = (self.starts.leaf(backward) if relaxed else self.noise) if noise is None else noise
        targets = self.targets if targets is None else targets
        size = int(self.chunk or len(noise))
        total, each = 0.0, []
        with torch.set_grad_enabled(backward):
            for i in range(0, len(noise), size):
                n, y = noise[i:i + size], targets[i:i + size]
                path = ModelPath(self.denoiser, self.correction(params))
                x = run_solver(path, self.spec, n, sigmas, self.plan)
                part = self.distance(x, y) * (len(n) / whole)
                if relaxed:
                    with torch.no_grad():
                        each.append(per_sample_distances(self.distance, x.detach(), y))
                if backward:
                    part.backward()
                total += float(part.detach())
        if relaxed:
            self.starts.record(noise.grad if backward else None, torch.cat(each))
        if self.reduce is not alone:
            total = float(self.reduce(torch.tensor(total, dtype=torch.float64)))
            for leaf in (params, sigmas) if backward else ():
                if leaf.is_leaf and leaf.grad is not None:
                    leaf.grad = self.reduce(leaf.grad)
        self.runs += 1
        return total

    def distances(self, params: Tensor, sigmas: Tensor, noise: Tensor) -> Tensor:
        """Each sample's distance to its target when the student starts from ``noise`` (no gradients)."""
        size = int(self.chunk or len(noise))
        out = []
        with torch.no_grad():
            for i in range(0, len(noise), size):
                x = run_solver(ModelPath(self.denoiser, self.correction(params)), self.spec, noise[i:i + size],
                               sigmas, self.plan)
                out.append(per_sample_distances(self.distance, x, self.targets[i:i + size]))
        self.runs += 1
        return torch.cat(out)

    def relax(self, params: Tensor, sigmas: Tensor) -> None:
        """The relaxed objective's step after an optimiser step (to ``params`` on ``sigmas``): move each
        start along its gradient within the ball, kept where it lowers that sample's distance."""
        cand = None if self.starts is None else self.starts.candidate()
        if cand is not None:
            self.starts.accept(cand, self.distances(params, sigmas, cand))

    def relax_record(self) -> dict:
        """The relaxed objective in the provenance: radius, step, moves, the starts' largest offset."""
        if self.starts is None:
            return {"radius": None}
        moves = self.reduce(torch.tensor(float(self.starts.moves), dtype=torch.float64))
        return {"radius": self.starts.radius, "relax_step": self.starts.step, "relax_moves": int(moves),
                "relax_max_offset": float(self.reduce(self.starts.offsets().max(), "max"))}

    def initial_params(self, init: Correction | None = None) -> Tensor:
        """θ to start from, one row per evaluation: zeros (the base solver), or ``init``'s θ."""
        nfe, width = self.mask.shape
        params = torch.zeros(nfe, width, dtype=torch.float64)
        if init is not None:
            if init.form != self.form:
                raise ValueError(f"init has form {init.form!r}, the fit {self.form!r}")
            for k in range(min(nfe, len(init.theta))):
                row = [float(v) for v in init.theta[k]][:width]
                params[k, :len(row)] = torch.tensor(row, dtype=torch.float64)
        return params

    def result(self, params: Tensor, provenance: dict) -> Correction:
        """The fitted correction: float θ = ``params`` where a feature exists, else 0."""
        theta = (params.detach() * self.mask).tolist()
        return Correction(self.form, [[float(v) for v in row] for row in theta], provenance=provenance)


def validation_pair(denoiser, val_noise: Tensor | None, val_targets: Tensor | None, teacher: str, teacher_nfe: int,
                    teacher_grid: GridSpec) -> tuple[Tensor, Tensor] | None:
    """(held-out noise, its targets — the teacher run on it unless given), or None without noise."""
    if val_noise is None:
        return None
    if val_targets is None:
        val_targets = teacher_samples(denoiser, val_noise, teacher, teacher_nfe, teacher_grid)
    return val_noise, torch.as_tensor(val_targets).to(val_noise.dtype)


def optimise(problem: S4SProblem, params: Tensor, sigmas: Tensor, iters: int, lr: float,
             val: tuple[Tensor, Tensor] | None, eval_every: int, progress: bool, desc: str,
             optimizer: str = "adam") -> tuple[Tensor, dict]:
    """Minimise the S4S loss over ``params`` on the grid ``sigmas`` (entries where ``problem.mask``
    is 0 stay fixed).

    ``adam``: ``iters`` Adam steps with a cosine learning-rate decay from ``lr`` to ``lr/100``;
    ``lbfgs``: L-BFGS with strong-Wolfe line search, at most ``iters`` iterations (precise on small,
    ill-conditioned problems; ``lr`` is its initial step, 1 is usual). Returns the best parameters
    seen — by the loss on ``val`` = (noise, targets) when given (scored every ``eval_every`` Adam
    steps, and at the end), else by the training loss — and a log."""
    if optimizer not in ("adam", "lbfgs"):
        raise InvalidChoice(f"unknown optimizer {optimizer!r}; valid: adam, lbfgs")
    if optimizer == "lbfgs" and problem.starts is not None:
        raise UserError("the relaxed objective (radius) moves the starts between steps, which L-BFGS's line "
                        "search cannot follow; use optimizer=adam or radius=null")
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
        p.grad.mul_(problem.mask)
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
            problem.relax(p.detach(), sigmas)
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


def fit_s4s(denoiser, noise: Tensor, solver: str = "ddim", nfe: int = 5, window: int = 3, grid: GridSpec = None,
            teacher: str = "heun", teacher_nfe: int = 199, teacher_grid: GridSpec = None, targets: Tensor | None = None,
            distance: str | Callable = "l2", iters: int = 200, lr: float = 3e-2, chunk: int | None = None,
            val_noise: Tensor | None = None, val_targets: Tensor | None = None, eval_every: int = 10,
            init: Correction | None = None, optimizer: str = "adam", lpips_weights: str | None = None,
            classifier: str | None = None, radius: float | str | None = None, relax_step: float = 1.0,
            progress: bool = False, reduce: Reduce = alone, **provenance) -> Correction:
    """S4S (Frankel et al. 2025): learn the per-evaluation coefficients of ``solver`` on its last
    ``window`` data predictions (form ``s4s``/``s4s2``/``s4s4``) so that its final samples from
    ``noise`` match ``teacher``'s (``teacher_nfe`` evaluations; or the given ``targets``).

    Adam (``iters`` steps, learning rate ``lr`` with cosine decay, gradients through the model and the
    solver by autograd, in ``chunk``-sized pieces when memory is short) from θ = 0 (the base solver)
    or ``init`` (``optimizer="lbfgs"``: L-BFGS instead, for small problems solved precisely). Returns
    the best θ seen — by the loss on ``val_noise`` (held-out noise, teacher run on it unless
    ``val_targets``) when given, else by the training loss. ``distance``: ``"l2"``
    (mean squared error), ``"fd_digits"`` (digits-classifier features), ``"lpips"`` (with
    ``lpips_weights``) or a callable ``(x, y) -> batch-mean scalar``; ``radius``: the relaxed objective
    (:mod:`dode.learn.relaxed`, the student starts within that distance of each noise, ``"ld3"``: LD3's
    default radius; ``relax_step`` its step in units of the radius; None: the plain objective). Returns a
    :class:`~dode.core.forms.Correction` (float θ) with ``fit_seconds`` and the losses in its provenance.
    ``reduce``: a data-parallel fit (:class:`Reduce`; ``noise``, ``targets``, ``val_noise`` and
    ``val_targets`` are then this process's shares), the same θ on every process.
    """
    start = time.perf_counter()
    problem = S4SProblem.setup(denoiser, noise, solver, nfe, window, grid, teacher, teacher_nfe, teacher_grid,
                               targets, distance, lpips_weights, classifier, chunk, radius, relax_step, reduce)
    spec, sigmas, form = problem.spec, problem.sigmas, problem.form
    val = validation_pair(denoiser, val_noise, val_targets, teacher, teacher_nfe, teacher_grid)
    params = problem.initial_params(init)
    with torch.enable_grad():
        params, log = optimise(problem, params, sigmas, iters, lr, val, eval_every, progress,
                               f"fit s4s {spec.name}@{nfe}", optimizer)
    prov = {"method": "s4s", "solver": spec.name, "nfe": nfe, "form": form, "window": window,
            "grid": grid_record(grid, sigmas), "sigmas": [float(v) for v in sigmas],
            "model": weights_digest(denoiser), "batch": problem.batch,
            "distance": problem.distance_name, **problem.relax_record(), "iters": iters, "lr": lr,
            **problem.teacher_info, **log,
            "student_runs": problem.runs, "fit_seconds": time.perf_counter() - start, "dode_version": __version__,
            **provenance}
    return problem.result(params, prov)
