"""``dode.export``: a solver with its fitted correction and grid as a diffusers scheduler.

The export is one small JSON file, ``<folder>/scheduler_config.json``, the config of
:class:`dode.integrations.diffusers_scheduler.DodeScheduler`; in a diffusers pipeline::

    pipe.scheduler = DodeScheduler.from_pretrained(folder)
    images = pipe(num_inference_steps=nfe, ...)

gives the samples of ``dode.sample(denoiser, noise, solver, nfe, lambdas, grid)`` for the pipeline's
noise. Discrete-time VP models (DDPM-type diffusers ``UNet2DModel``) only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch import Tensor

from dode.core.denoisers import native_prediction
from dode.core.forms import Correction
from dode.core.protocols import GridSpec
from dode.core.sampling import checked, solver_grid
from dode.core.schedules import schedule_of
from dode.learn.grids import grid_of

_DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def export(folder: str | Path, denoiser, solver: str, nfe: int,
           lambdas: Correction | Sequence[float] | Tensor | None = None, grid: GridSpec = None) -> Path:
    """Write ``solver`` at ``nfe`` on ``grid`` (as in :func:`dode.sample`; a correction's learned grid
    wins), with the correction ``lambdas`` (refused when fitted for another solver, NFE, grid or
    model, or when it starts with AMED's analytical first step), for ``denoiser`` as
    ``<folder>/scheduler_config.json``; returns that path."""
    try:
        from dode.integrations.diffusers_scheduler import DodeScheduler
    except ImportError as e:
        raise ImportError("dode.export writes a diffusers scheduler: it needs the 'diffusers' package "
                          "(pip install diffusers)") from e
    schedule = schedule_of(denoiser)
    if not schedule.discrete:
        raise ValueError(f"dode.export supports discrete-time VP models (diffusers DDPM-type UNets); this "
                         f"model has a continuous {type(schedule).__name__}")
    correction = lambdas if isinstance(lambdas, Correction) else None
    if getattr(correction, "afs", None) is not None:
        raise ValueError("this correction starts with an analytical first step (AMED-Plugin's AFS at an odd NFE): "
                         "it moves x_T before the first network call, which a diffusers pipeline's loop cannot "
                         "do (it calls the network on x_T). Fit AMED-Plugin at an even NFE (no AFS) to export it, "
                         "or sample it with dode.learn.sample_learned")
    spec, sigmas, plan = solver_grid(denoiser, solver, nfe, grid_of(correction, grid))
    correction = checked(lambdas, spec, nfe, sigmas, denoiser)
    prediction = getattr(denoiser, "output", None) or native_prediction(denoiser)
    scheduler = DodeScheduler(solver=spec.name, nfe=int(nfe), sigmas=[float(s) for s in sigmas],
                              alphas_cumprod=schedule.alphas_cumprod.tolist(),
                              prediction_type=_DIFFUSERS_PREDICTION[prediction],
                              correction=None if correction is None else correction.to_dict(),
                              num_train_timesteps=schedule.T)
    scheduler.save_pretrained(str(folder))
    return Path(folder) / DodeScheduler.config_name
