"""The one registry of correction methods: distill ``kind`` → how its correction is fitted and loaded.

Every ``conf/distill/<name>.yaml`` names a ``kind``; :data:`METHODS` maps it to a :class:`Method`:

* ``fit(denoiser, noise, point, progress, provenance)`` — called once per run folder by the fit
  stage (rank 0, or every rank of a ``parallel`` method; gradients enabled) with the ``B`` fit
  noises; it calls the public API of :mod:`dode.learn` with keyword arguments taken from the distill
  config (``point.distill``) and the point (solver, NFE, K), and returns a correction with
  ``save(path)``;
* ``load(path)`` — reads ``lambdas.json`` back as what :func:`dode.sample` takes as ``lambdas``;
* ``fits`` — whether K, B and the fit seed matter: the fit batch is drawn, and they enter the run
  hash and the folder name (``-K<K>-B<B>``);
* ``check(distill)`` — optional: refuses options of the distill config that cannot work (a
  :class:`~dode.errors.UserError`), before any point of the job runs;
* ``parallel`` — the fit is data-parallel (S4S, S4S-Alt, LD3): with several processes every rank
  calls ``fit`` with its even contiguous share of the ``B`` noises and ``reduce=``
  :meth:`~dode.runner.distributed.Context.all_reduce` (:class:`dode.learn.s4s.Reduce`), and rank 0
  saves the result, the same on every rank.

A new learned method is its form (:mod:`dode.core`), its fit (one file in ``dode/learn/``), ONE
``@register("<kind>")`` function here, and its ``conf/distill/<name>.yaml`` with ``kind: <kind>``.
A distill config may instead name its own ``fit: package.module:function`` (and ``load:``,
``fits:``), which override the entry of its kind (and need no registration).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from torch import Tensor

from dode.core.forms import Correction
from dode.core.protocols import GridSpec, Preset
from dode.errors import InvalidChoice, UserError
from dode.learn import (fit_amed, fit_authors, fit_correction, fit_gits, fit_iia, fit_ld3, fit_pas, fit_s4s,
                        fit_s4s_alt)
from dode.learn.s4s import Reduce, alone

if TYPE_CHECKING:
    from dode.runner.points import Point

FitFunction = Callable[[Any, Tensor, "Point", bool, dict], Any]
CheckFunction = Callable[[dict], None]


@dataclass(frozen=True)
class Method:
    """How a correction of one distill kind is fitted and loaded (see the module docstring)."""

    fit: FitFunction | None
    load: Callable[[str | Path], Any] | None = Correction.load
    fits: bool = True
    check: CheckFunction | None = None
    parallel: bool = False


METHODS: dict[str, Method] = {"none": Method(None, None, fits=False)}


def register(kind: str, fits: bool = True, load: Callable[[str | Path], Any] = Correction.load,
             check: CheckFunction | None = None, parallel: bool = False) -> Callable[[FitFunction], FitFunction]:
    """Decorator: the fit function of distill ``kind`` (one registration per method; ``parallel``: it
    takes ``reduce`` and fits data-parallel)."""
    def add(fit: FitFunction) -> FitFunction:
        METHODS[kind] = Method(fit, load, fits, check, parallel)
        return fit
    return add


def numbers(*keys: str, integer: bool = False, optional: bool = False) -> CheckFunction:
    """A check: the distill options ``keys`` are numbers (integers ≥ 1 for ``integer``; null allowed
    when ``optional``)."""
    def check(distill: dict) -> None:
        for key in keys:
            v = distill.get(key)
            if v is None and optional:
                continue
            ok = not isinstance(v, bool) and (isinstance(v, int) and v >= 1 if integer else isinstance(v, (int, float)))
            if not ok:
                what = "an integer ≥ 1" + (" or null" if optional else "") if integer else "a number"
                raise UserError(f"distill.{key} must be {what}, got {v!r}")
    return check


def import_ref(ref: str) -> Any:
    """The object named ``package.module:attribute[.attribute…]``."""
    module, _, attr = ref.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise UserError(f"distill config names {ref!r}, which cannot be imported: {e}") from None
    return obj


def method_of(distill: dict) -> Method:
    """The :class:`Method` of a distill config: its kind's entry, overridden by the config's own
    ``fit``/``load`` (``module:function`` strings) and ``fits`` (a fit of its own is not data-parallel)."""
    kind = distill.get("kind", "none")
    if kind not in METHODS and not distill.get("fit"):
        raise UserError(f"distill kind {kind!r} is not registered; valid kinds: {', '.join(METHODS)} "
                        "(or give the distill config `fit: module:function`)")
    base = METHODS.get(kind, Method(None))
    if not any(key in distill for key in ("fit", "load", "fits")):
        return base
    fit, load = distill.get("fit", base.fit), distill.get("load", base.load)
    return Method(import_ref(fit) if isinstance(fit, str) else fit, import_ref(load) if isinstance(load, str) else load,
                  bool(distill.get("fits", base.fits)), base.check, base.parallel and "fit" not in distill)


def options(distill: dict, keys: tuple[str, ...]) -> dict:
    """The entries ``keys`` of a distill config that are set (not null): keyword arguments of a fit."""
    return {k: distill[k] for k in keys if distill.get(k) is not None}


S4S_OPTIONS = ("window", "teacher", "teacher_nfe", "distance", "iters", "lr", "chunk", "optimizer", "lpips_weights",
               "classifier", "radius", "relax_step")
S4S_ALT_OPTIONS = ("rounds", "grid_space", "grid_search", "grid_iters", "grid_lr", "grid_evals", "grid_step",
                   "round_iters", "free_end")
AMED_OPTIONS = ("teacher", "iters", "lr", "scale_dir", "guard")
PAS_OPTIONS = ("form", "loss", "tol", "first_tol", "teacher")
LD3_OPTIONS = ("teacher", "teacher_nfe", "distance", "iters", "lr", "chunk", "lpips_weights", "classifier", "radius",
               "relax_step", "grid_space", "free_end")
GITS_OPTIONS = ("fine", "teacher", "coeff", "metric", "guard")


# ------------------------------------------------------------------------------- registered methods
VARIANTS = ("aligned", "authors")


def check_variant(distill: dict) -> None:
    if distill.get("variant", "aligned") not in VARIANTS:
        raise UserError(f"distill.variant must be one of {', '.join(VARIANTS)}, got {distill.get('variant')!r}")


@register("dode", check=check_variant)
def fit_dode(denoiser, noise: Tensor, point: Point, progress: bool, provenance: dict) -> Correction:
    """D-ODE and its appendix forms (``form``): :func:`dode.learn.fit_correction` against a K×
    (``scale``) finer ``teacher`` (null: the solver's default) on the student's own grid, or with
    ``variant: authors`` against the authors' code's targets (:func:`dode.learn.fit_authors`)."""
    d = point.distill
    if d.get("variant", "aligned") == "authors":
        return fit_authors(denoiser, noise, point.solver["name"], point.nfe, point.scale, d.get("form", "dode"),
                           grid=point.grid, progress=progress, **provenance)
    return fit_correction(denoiser, noise, point.solver["name"], point.nfe, point.scale, d.get("form", "dode"),
                          grid=point.grid, teacher=d.get("teacher"), progress=progress, **provenance)


@register("fixed", fits=False, check=numbers("lam"))
def fixed_correction(denoiser, noise: Tensor, point: Point, progress: bool, provenance: dict) -> Correction:
    """One λ (``lam``) shared by every evaluation (Fixed-D-ODE, lookahead): nothing to fit."""
    d = point.distill
    return Correction.fixed(d.get("form", "dode"), float(d["lam"]), point.nfe, fit_seconds=0.0, **provenance)


@register("iia", check=numbers("substeps", integer=True, optional=True))
def fit_iia_method(denoiser, noise: Tensor, point: Point, progress: bool, provenance: dict) -> Correction:
    """IIA / BIIA (``form``): :func:`dode.learn.fit_iia` with M = ``substeps`` fine sub-steps per
    student step (null: K, the run's ``scale``) of ``fine_solver`` (null: the student's own)."""
    d = point.distill
    return fit_iia(denoiser, noise, point.solver["name"], point.nfe, substeps=int(d.get("substeps") or point.scale),
                   form=d.get("form", "iia"), grid=point.grid, fine_solver=d.get("fine_solver"),
                   progress=progress, **provenance)


@register("s4s", parallel=True)
def fit_s4s_method(denoiser, noise: Tensor, point: Point, progress: bool, provenance: dict,
                   reduce: Reduce = alone) -> Correction:
    """S4S: :func:`dode.learn.fit_s4s` with the set :data:`S4S_OPTIONS` of the distill config."""
    return fit_s4s(denoiser, noise, point.solver["name"], point.nfe, grid=point.grid, progress=progress,
                   reduce=reduce, **options(point.distill, S4S_OPTIONS), **provenance)


def _init_preset(init: Any, solver: dict) -> Preset:
    """The protocol of ``solver`` with the spacing ``init`` (a :class:`UserError` naming distill.init_grid
    and the valid spacings for an unknown one)."""
    try:
        return Preset(str(solver.get("protocol") or "paper"), str(init), solver.get("endpoint"), solver.get("inner"))
    except InvalidChoice as e:
        raise UserError(f"distill.init_grid={init!r}: {e}") from None


def start_grid(point: Point) -> GridSpec:
    """The grid a grid search starts from: the distill config's ``init_grid`` spacing (e.g. ``dmn``) on
    the run's protocol when the run sets no ``solver.grid`` of its own; else (or with ``init_grid:
    null``) the run's grid."""
    init = point.distill.get("init_grid")
    if init is None or point.solver.get("grid") is not None:
        return point.grid
    return _init_preset(init, point.solver)


def check_init_grid(distill: dict) -> None:
    """A check: ``init_grid`` is null or a grid spacing (refused before any work)."""
    if distill.get("init_grid") is not None:
        _init_preset(distill["init_grid"], {})


@register("s4s_alt", parallel=True, check=check_init_grid)
def fit_s4s_alt_method(denoiser, noise: Tensor, point: Point, progress: bool, provenance: dict,
                       reduce: Reduce = alone) -> Correction:
    """S4S-Alt: :func:`dode.learn.fit_s4s_alt` from :func:`start_grid` with the set :data:`S4S_OPTIONS`
    and :data:`S4S_ALT_OPTIONS` of the distill config; the learned grid is in the provenance."""
    return fit_s4s_alt(denoiser, noise, point.solver["name"], point.nfe, grid=start_grid(point),
                       progress=progress, reduce=reduce, **options(point.distill, S4S_OPTIONS),
                       **options(point.distill, S4S_ALT_OPTIONS), **provenance)


@register("ld3", parallel=True)
def fit_ld3_method(denoiser, noise: Tensor, point: Point, progress: bool, provenance: dict,
                   reduce: Reduce = alone) -> Correction:
    """LD3: :func:`dode.learn.fit_ld3` (the base solver's grid only) with the set :data:`LD3_OPTIONS`
    of the distill config; the learned grid is in the provenance."""
    return fit_ld3(denoiser, noise, point.solver["name"], point.nfe, grid=point.grid, progress=progress,
                   reduce=reduce, **options(point.distill, LD3_OPTIONS), **provenance)


@register("gits", check=numbers("fine", integer=True))
def fit_gits_method(denoiser, noise: Tensor, point: Point, progress: bool, provenance: dict) -> Correction:
    """GITS: :func:`dode.learn.fit_gits` (the base solver's grid chosen by dynamic programming over a
    fine grid from the ``batch`` warm-up noises) with the set :data:`GITS_OPTIONS` of the distill
    config; the grid is in the provenance."""
    return fit_gits(denoiser, noise, point.solver["name"], point.nfe, grid=point.grid, progress=progress,
                    **options(point.distill, GITS_OPTIONS), **provenance)


@register("amed", check=numbers("iters", integer=True, optional=True))
def fit_amed_method(denoiser, noise: Tensor, point: Point, progress: bool, provenance: dict) -> Correction:
    """AMED-Plugin: :func:`dode.learn.fit_amed` against ``teacher`` on the base grid refined K× (the run's
    ``scale``) with the set :data:`AMED_OPTIONS` of the distill config; the grid with the inserted times
    and the AFS are in lambdas.json."""
    return fit_amed(denoiser, noise, point.solver["name"], point.nfe, grid=point.grid, scale=point.scale,
                    progress=progress, **options(point.distill, AMED_OPTIONS), **provenance)


@register("pas", check=numbers("tol", "first_tol"))
def fit_pas_method(denoiser, noise: Tensor, point: Point, progress: bool, provenance: dict) -> Correction:
    """PAS: :func:`dode.learn.fit_pas` with the set :data:`PAS_OPTIONS` of the distill config against
    its ``teacher`` on the student's grid refined K (the run's ``scale``) times."""
    return fit_pas(denoiser, noise, point.solver["name"], point.nfe, scale=point.scale, grid=point.grid,
                   progress=progress, **options(point.distill, PAS_OPTIONS), **provenance)
