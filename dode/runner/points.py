"""Points: what one configuration of ``dode-run`` runs and its checks (its model: :mod:`dode.runner.loading`).

A :class:`Point` is one sampler configuration — dataset, checkpoint, solver, NFE, correction with
its K, B and fit seed, the evaluation seeds and sizes — built from a composed Hydra config by
:func:`build_points`. The config nodes (``dataset``, ``checkpoint``, ``eval``, ``solver``,
``distill``) stay plain dicts: they are open user configs. Every point is checked before any work
starts: cheap checks (:func:`check_point`), the files it needs (:func:`check_files`) and, once the
model is loaded, the grid and K·N ≤ T (:func:`check_with_model`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from dode.core.protocols import Preset
from dode.errors import InvalidChoice, UserError
from dode.runner.config import config_dir, group_option, without_group
from dode.runner.methods import Method, method_of
from dode.runner.options import DTYPES
from dode.runner.precision import DEFAULTS, check_precision
from dode.runner.seeds import BLOCK, FIT_BLOCK, MAX_FIT_SEED

# config keys that describe a `_target_` model or metric rather than being its arguments
META_KEYS = {"label", "description", "doc", "_doc", "source", "name", "loader", "channels", "resolution",
             "num_classes", "class_label"}


@dataclass(frozen=True)
class Choices:
    """The option chosen in each config group: the names in run folders and runs.csv."""

    dataset: str
    checkpoint: str
    eval: str
    solver: str
    distill: str


@dataclass(frozen=True)
class Point:
    """One configuration of ``dode-run``. The field order is the order of ``point`` in run.json."""

    dataset: dict
    checkpoint: dict
    eval: dict
    solver: dict
    scale: int  # K
    batch: int  # B
    fit_seed: int
    num_samples: int  # per evaluation seed
    batch_size: int
    shard_size: int
    dtype: str
    results_dir: str
    progress: bool
    seeds: tuple[int, ...]  # evaluation seeds
    choices: Choices
    nfe: int
    distill: dict
    precision: str = "fp32"  # network precision and speed options (dode.runner.precision)
    compile: bool = False
    channels_last: bool = False

    def speed(self) -> dict:
        """The network options of :func:`dode.runner.precision.precision_mode`."""
        return {"precision": self.precision, "compile": self.compile, "channels_last": self.channels_last}

    def to_dict(self) -> dict:
        """The point as plain JSON-able data (as stored in run.json)."""
        return dataclasses.asdict(self)

    @property
    def grid(self) -> Preset | torch.Tensor:
        """The solver's sampling protocol: ``solver.protocol`` (``paper``: the authors' grids,
        ``dode``: dode's own) with ``solver.grid``/``endpoint``/``inner`` where set
        (:mod:`dode.core.protocols`); ``solver.grid`` a list of σ (e.g. a published "Align Your Steps"
        schedule): that explicit grid, as a float64 tensor."""
        s = self.solver
        if isinstance(s.get("grid"), (list, tuple)):
            return explicit_grid(s, self.choices.solver)
        try:
            return Preset(str(s.get("protocol") or "paper"), s.get("grid"), s.get("endpoint"), s.get("inner"))
        except InvalidChoice as e:
            raise UserError(f"solver={self.choices.solver}: {e}") from None

    @property
    def method(self) -> Method:
        """The registered method of the distill config (:mod:`dode.runner.methods`)."""
        return method_of(self.distill)

    @property
    def fits(self) -> bool:
        """Whether K, B and the fit seed matter (a fitted correction)."""
        return self.method.fits

    def torch_dtype(self) -> torch.dtype:
        """The dtype of noise and solver state: float32 or float64."""
        if self.dtype not in DTYPES:
            raise UserError(f"dtype must be {' or '.join(DTYPES)}, got {self.dtype!r}")
        return getattr(torch, self.dtype)

    def metric_name(self) -> str:
        """The metric of :mod:`dode.eval.metrics`: ``eval.metric``, else ``eval.name``, else the option."""
        return str(self.eval.get("metric") or self.eval.get("name") or self.choices.eval)

    def metric_kwargs(self, device: str) -> dict:
        """Keyword arguments of the metric: the eval config without its meta keys, the dataset name and
        the device (``auto``: the run's)."""
        kw = {k: v for k, v in self.eval.items() if k not in META_KEYS and k != "metric"}
        kw.setdefault("dataset", self.dataset.get("name", self.choices.dataset))
        if kw.get("device") in (None, "auto"):
            kw["device"] = device
        return kw


def explicit_grid(solver: dict, option: str) -> torch.Tensor:
    """``solver.grid`` given as a list of σ: at least two numbers, strictly decreasing, the last ≥ 0;
    ``endpoint`` and ``inner`` must then be unset (the list says where sampling ends)."""
    values = solver["grid"]
    where = f"solver={option}: solver.grid as a list of σ"
    if len(values) < 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise UserError(f"{where} needs at least two numbers, got {list(values)!r}")
    sig = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if not bool((sig[1:] < sig[:-1]).all()) or float(sig[-1]) < 0 or not bool(torch.isfinite(sig).all()):
        raise UserError(f"{where} must be strictly decreasing, finite and end at σ ≥ 0, got {list(values)!r}")
    for key in ("endpoint", "inner"):
        if solver.get(key) is not None:
            raise UserError(f"{where} cannot take solver.{key}={solver[key]} (the list is the grid)")
    return sig


def check_grid_length(point: Point) -> None:
    """An explicit ``solver.grid`` holds one σ per step plus the end (singlestep DPM-Solver: one per
    evaluation, or one per step with stages placed at logSNR r)."""
    from dode.core.solvers import get_solver

    grid = point.grid
    if not isinstance(grid, torch.Tensor):
        return
    spec = get_solver(point.solver["name"])
    plan = spec.plan(point.nfe, float(grid[-1]) == 0)
    fits = spec.explicit_intervals(plan)
    if len(grid) - 1 not in fits:
        need = " or ".join(str(n + 1) for n in sorted(fits))
        raise UserError(f"solver={point.choices.solver} nfe={point.nfe}: solver.grid lists {len(grid)} σ "
                        f"({len(grid) - 1} steps), but this solver at NFE {point.nfe} needs {need} σ "
                        f"(plan {plan}, ending at σ {'= 0' if float(grid[-1]) == 0 else '> 0'})")


# ------------------------------------------------------------------------------------------ building
POINT_KEYS = ("dataset", "checkpoint", "eval", "solver", "scale", "batch", "fit_seed", "num_samples", "batch_size",
              "shard_size", "dtype", "results_dir", "progress")
SPEED_KEYS = ("precision", "compile", "channels_last")
INT_KEYS = ("scale", "batch", "fit_seed", "num_samples", "batch_size", "shard_size")


def _integer(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        what = "integers (one or a list, e.g. seeds=[0,1,2])" if key == "seeds" else "an integer"
        raise UserError(f"{key} must be {what}, got {value!r}")
    return value


def build_points(cfg, choices: dict, none_distill: dict | None = None, with_files: bool = True) -> list[Point]:
    """The points of a ``dode-run`` config: every NFE of ``nfe``, the base solver first when
    ``compare_base`` and a correction is chosen. ``with_files``: also check that the checkpoint and
    the metric's reference statistics exist (:func:`check_files`)."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    nfes = c["nfe"] if isinstance(c["nfe"], list) else [c["nfe"]]
    seeds = c["seeds"] if isinstance(c["seeds"], list) else [c["seeds"]]
    if not nfes or not seeds:
        raise UserError("nfe and seeds must not be empty")
    base = {k: c[k] for k in POINT_KEYS}
    base.update({k: c[k] for k in SPEED_KEYS if k in c})
    check_precision(*(base.get(k, DEFAULTS[k]) for k in SPEED_KEYS))
    base.update({k: _integer(k, c[k]) for k in INT_KEYS}, seeds=tuple(_integer("seeds", s) for s in seeds),
                results_dir=str(c["results_dir"]), progress=bool(c["progress"]), dtype=str(c["dtype"]))
    names = {g: str(choices.get(g)) for g in ("dataset", "checkpoint", "eval", "solver", "distill")}
    distills = [(names["distill"], c["distill"])]
    if c.get("compare_base") and c["distill"].get("kind", "none") != "none":
        distills.insert(0, ("none", none_distill or {"name": "none", "kind": "none", "label": "{solver}"}))
    points = []
    for nfe in nfes:
        if isinstance(nfe, bool) or not isinstance(nfe, int):
            raise UserError(f"nfe must be an integer or a list of integers, got {nfe!r}")
        for name, d in distills:
            p = Point(**base, choices=Choices(**{**names, "distill": name}), nfe=nfe, distill=d)
            check_point(p)
            points.append(p)
    if with_files:
        check_files(points[0])
    return points


def points_from_overrides(overrides: list[str], with_files: bool = True) -> list[Point]:
    """The points ``dode-run <overrides>`` runs (one job of a sweep), composed from the config tree by
    the runner's own code; ``with_files=False`` skips the checks that need the checkpoint and the
    reference statistics on this machine."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
        none = compose("config", overrides=without_group(list(overrides), "distill") + ["distill=none"]).distill
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra/")}
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra")
    return build_points(plain, choices, OmegaConf.to_container(none, resolve=True), with_files)


# ---------------------------------------------------------------------------------------- checks
def check_point(point: Point) -> None:
    """Cheap checks before any process starts (names, NFE of the solver, seeds, sizes)."""
    from dode.core.solvers import get_solver

    point.grid  # noqa: B018 - raises a UserError for an unknown protocol, grid, endpoint or inner rule
    try:
        get_solver(point.solver["name"]).plan(point.nfe, True)
    except ValueError as e:
        raise UserError(f"solver={point.choices.solver} nfe={point.nfe}: {e}") from None
    check_grid_length(point)
    method = method_of(point.distill)
    if method.check is not None:
        try:
            method.check(point.distill)
        except UserError as e:
            raise UserError(f"distill={point.choices.distill}: {e}") from None
    check_compatible(point)
    for s in point.seeds:
        if not (0 <= s < FIT_BLOCK):
            raise UserError(f"evaluation seeds must be integers in [0, {FIT_BLOCK}), got {s}")
    if not (0 <= point.fit_seed <= MAX_FIT_SEED):
        raise UserError(f"fit_seed must be in [0, {MAX_FIT_SEED}], got {point.fit_seed}")
    for key in ("num_samples", "batch"):
        if not (1 <= getattr(point, key) <= BLOCK):
            raise UserError(f"{key} must be in [1, {BLOCK}] (samples per seed block), got {getattr(point, key)}")
    for key in ("scale", "batch", "batch_size", "shard_size"):
        if getattr(point, key) < 1:
            raise UserError(f"{key} must be a positive integer, got {getattr(point, key)}")


def _shape(node: dict) -> tuple[int, int] | None:
    c, r = node.get("channels"), node.get("resolution")
    return (int(c), int(r)) if c and r else None


def _fmt(shape: tuple[int, int]) -> str:
    return f"{shape[0]}×{shape[1]}×{shape[1]}"


def fitting_checkpoints(shape: tuple[int, int]) -> list[str]:
    """The options of ``conf/checkpoint`` whose images have ``(channels, resolution)`` ``shape``."""
    names = sorted(p.stem for p in (config_dir() / "checkpoint").glob("*.yaml"))
    return [n for n in names if _shape(group_option("checkpoint", n)) == shape]


# the metrics whose features need one image size: fd_digits scores 8×8 grey digits with its classifier
METRIC_SHAPES = {"fd_digits": (1, 8)}


def check_compatible(point: Point) -> None:
    """The checkpoint's images fit the dataset (channels and resolution; classes where the dataset
    config states ``num_classes``) and the metric (:data:`METRIC_SHAPES`), before any work."""
    ck, ds, c = point.checkpoint, point.dataset, point.choices
    model, data = _shape(ck), _shape(ds)
    if model and data and model != data:
        fits = fitting_checkpoints(data)
        raise UserError(f"checkpoint {c.checkpoint} makes {_fmt(model)} images (channels×height×width) but dataset "
                        f"{c.dataset} has {_fmt(data)}: its samples cannot be compared with {c.dataset}. Checkpoints "
                        f"of {_fmt(data)} images: {', '.join(fits) or 'none in conf/checkpoint'} (or choose the "
                        "dataset of that checkpoint)")
    n_model, n_data = ck.get("num_classes"), ds.get("num_classes")
    if n_model and n_data and int(n_model) != int(n_data):
        raise UserError(f"checkpoint {c.checkpoint} is conditioned on {n_model} classes but dataset {c.dataset} has "
                        f"{n_data}: choose a checkpoint of {c.dataset}")
    need = METRIC_SHAPES.get(point.metric_name()) if "_target_" not in point.eval else None
    have = model or data
    if need and have and have != need:
        raise UserError(f"eval={c.eval} scores {_fmt(need)} images but checkpoint {c.checkpoint} makes {_fmt(have)} "
                        f"ones; use an eval for {c.dataset} (eval=fid50k) or a checkpoint of {_fmt(need)} images")


def check_eval(point: Point) -> None:
    """Fail before sampling when the metric's reference statistics (CLIP score: its weights) are missing."""
    if "_target_" in point.eval:
        return
    from dode.eval import metrics

    if point.metric_name() == "clip_score":  # the weights folder, and prompts to score against
        from dode.eval.clip import clip_folder

        if not point.dataset.get("captions"):
            raise UserError(f"eval={point.choices.eval} (CLIP score) scores each image against its prompt: "
                            f"choose a dataset with captions (dataset=coco)")
        clip_folder(point.eval.get("clip_weights"))
        return
    name = metrics.check_metric(point.metric_name())
    if name != "fd_digits":  # FD-digits computes its reference from the embedded set
        metrics.reference_stats(name, **point.metric_kwargs("cpu"))


def check_files(point: Point) -> None:
    """Before any process starts: the checkpoint file(s) and the metric's reference statistics exist.
    Every missing piece is reported at once, each saying where to get it and where to put it."""
    problems = []
    ck = point.checkpoint
    if "_target_" not in ck:
        from dode.models.checkpoints import resolve_file

        parts = [(ck, "checkpoint")]
        for key in ("classifier", "ldm_config"):  # a second file of the model
            if isinstance(ck.get(key), dict):
                parts.append(({"name": ck.get("name"), **ck[key]}, f"checkpoint.{key}"))
        for cfg, key in parts:
            if cfg.get("file") or cfg.get("path"):
                try:
                    resolve_file(cfg, key)
                except UserError as e:
                    problems.append(str(e))
    if point.dataset.get("captions"):
        from dode.eval.prompts import resolve_captions

        try:
            resolve_captions(point.dataset["captions"])
        except UserError as e:
            problems.append(str(e))
    try:
        check_eval(point)
    except UserError as e:
        problems.append(str(e))
    if problems:
        raise UserError("\n\n".join(problems))


def check_with_model(point: Point, denoiser) -> None:
    """Checks that need the model: the grid fits the schedule and K·N ≤ T for the teacher."""
    from dode.core.sampling import solver_grid
    from dode.core.schedules import schedule_of
    from dode.learn import student_points

    name, nfe, ck = point.solver["name"], point.nfe, point.choices.checkpoint
    configured = _shape(point.checkpoint) or _shape(point.dataset)
    loaded = (getattr(denoiser, "channels", None), getattr(denoiser, "resolution", None))
    if configured and all(isinstance(v, int) and v > 0 for v in loaded) and tuple(loaded) != configured:
        raise UserError(f"the file of checkpoint {ck} holds a model of {_fmt(loaded)} images, but its config (or "
                        f"the dataset {point.choices.dataset}) says {_fmt(configured)}: is it the right file?")
    texts, captions = hasattr(denoiser, "set_prompts"), bool(point.dataset.get("captions"))
    if texts != captions:
        raise UserError(f"checkpoint {ck} is a text-to-image model: choose a dataset with captions (dataset=coco)"
                        if texts else f"dataset {point.choices.dataset} has captions but checkpoint {ck} takes no "
                        "text: choose a text-to-image checkpoint (e.g. checkpoint=sd-v1-5)")
    try:
        spec, sigmas, plan = solver_grid(denoiser, name, nfe, point.grid)
    except ValueError as e:
        raise UserError(f"solver={name} nfe={nfe} on checkpoint {ck}: {e}") from None
    sched = schedule_of(denoiser)
    if point.fits and getattr(sched, "discrete", False):
        n = len(student_points(denoiser, spec, sigmas, plan)[1]) - 1
        k = point.scale
        if k * n > sched.T:
            raise UserError(
                f"scale={k} is impossible for {name} at nfe={nfe} on {ck}: the teacher refines each of the {n} "
                f"student intervals K times, K·N = {k}·{n} = {k * n} steps, but the model has only "
                f"T = {sched.T} timesteps. Use scale ≤ {sched.T // n} (or a smaller nfe).")
