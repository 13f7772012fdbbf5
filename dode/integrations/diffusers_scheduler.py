"""A diffusers scheduler that runs a dode solver, with its learned correction, inside a pipeline.

diffusers drives sampling one model evaluation at a time: ``step(model_output, t, sample)`` gets the
network's output at ``sample`` and returns the input of the next evaluation. A dode solver is one loop
over the whole grid. :class:`DodeScheduler` joins them by replay: at each ``step`` it re-runs the solver
from the first state, serving the network outputs received so far, through the same
:class:`~dode.core.denoisers.VPDenoiser` and :class:`~dode.core.path.ModelPath` as ``dode.sample``, and
stops at the first evaluation it has no output for; that evaluation's network input is ``prev_sample``
and its network time is the next entry of ``timesteps``. No model evaluation is repeated; the solver's
arithmetic is O(NFE²) in all. Every solver and every correction form of dode works unchanged.

The scheduler's whole state is its config (``scheduler_config.json``, written by :func:`dode.export`):
solver, NFE, the σ grid, the model's ᾱ table, the prediction type and the correction.
Discrete-time VP models only (DDPM-type ``UNet2DModel``\\ s; ``x_T ~ N(0, I)``, ``init_noise_sigma`` 1).
"""
from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from torch import Tensor

from dode.core.denoisers import VPDenoiser
from dode.core.forms import Correction
from dode.core.path import ModelPath
from dode.core.sampling import run_solver, solver_grid
from dode.core.schedules import DiscreteVPSchedule

PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


class _Pending(Exception):
    """The solver asked for a network output not received yet: its input ``x`` and time ``t``."""

    def __init__(self, x: Tensor, t: Tensor):
        super().__init__()
        self.x, self.t = x, t


class _Replay:
    """A stand-in network: the outputs received so far in order, then :class:`_Pending` (``dry``:
    zeros at every call, recording the times, to list the timesteps)."""

    def __init__(self, outputs: list[Tensor], dry: bool = False):
        self.outputs, self.dry, self.times, self.calls = outputs, dry, [], 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        k, self.calls = self.calls, self.calls + 1
        if self.dry:
            self.times.append(float(t.reshape(-1)[0]))
            return torch.zeros_like(x)
        if k == len(self.outputs):
            raise _Pending(x, t)
        return self.outputs[k].to(x.dtype)


class DodeScheduler(SchedulerMixin, ConfigMixin):
    """A dode solver (``solver`` at ``nfe`` on the grid ``sigmas``, optionally with a fitted
    ``correction``, :meth:`dode.core.forms.Correction.to_dict`) as a diffusers scheduler for a
    discrete-time VP model with ᾱ table ``alphas_cumprod``. ``timesteps`` are the network times of the
    solver's evaluations (training-step units, fractional off the integer grid). Made by
    :func:`dode.export`; loaded with ``DodeScheduler.from_pretrained(folder)``."""

    order = 1
    config_name = "scheduler_config.json"

    @register_to_config
    def __init__(self, solver: str = "ddim", nfe: int = 10, sigmas: list | None = None,
                 alphas_cumprod: list | None = None, prediction_type: str = "epsilon",
                 correction: dict | None = None, num_train_timesteps: int | None = None):
        if not sigmas or not alphas_cumprod:
            raise ValueError("DodeScheduler needs the σ grid and the model's alphas_cumprod: make it with dode.export")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}")
        self.schedule = DiscreteVPSchedule(torch.tensor(alphas_cumprod, dtype=torch.float64))
        self.correction = None if correction is None else Correction.from_dict(correction)
        den = self._denoiser(_Replay([], dry=True))
        self.spec, self.sigmas, self.plan = solver_grid(den, solver, nfe, torch.tensor(sigmas, dtype=torch.float64))
        self.init_noise_sigma = 1.0
        self.num_inference_steps = nfe
        self.timesteps = self._times()
        self._outputs: list[Tensor] = []
        self._start: Tensor | None = None

    def _denoiser(self, net: _Replay) -> VPDenoiser:
        return VPDenoiser(net, self.schedule, PREDICTION_TYPES[self.config.prediction_type])

    def _run(self, net: _Replay, start: Tensor) -> Tensor:
        path = ModelPath(self._denoiser(net), self.correction)
        with torch.no_grad():
            return run_solver(path, self.spec, start, self.sigmas, self.plan)

    def _times(self) -> Tensor:
        net = _Replay([], dry=True)
        self._run(net, torch.zeros(1, 1))
        return torch.tensor(net.times, dtype=torch.float32)

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      **kwargs) -> None:
        """Starts a new sample; the timesteps are fixed by the export (``num_inference_steps`` must
        be None or its NFE)."""
        if num_inference_steps not in (None, self.config.nfe):
            raise ValueError(f"this DodeScheduler runs {self.config.solver} at exactly NFE {self.config.nfe} "
                             f"(fitted there); got num_inference_steps={num_inference_steps}")
        self.timesteps = self.timesteps.to(device) if device is not None else self.timesteps
        self._outputs, self._start = [], None

    def scale_model_input(self, sample: Tensor, *args, **kwargs) -> Tensor:
        return sample

    def step(self, model_output: Tensor, timestep, sample: Tensor, return_dict: bool = True,
             **kwargs) -> SchedulerOutput | tuple:
        """The network output at ``sample`` → the input of the next evaluation (after the last
        one: the solver's final state, as ``dode.sample`` returns it)."""
        if len(self._outputs) == self.config.nfe:
            raise ValueError(f"DodeScheduler.step called more than NFE = {self.config.nfe} times; "
                             f"call set_timesteps before each sample")
        if self._start is None:
            self._start = sample
        self._outputs.append(model_output)
        try:
            prev = self._run(_Replay(self._outputs), self._start)
        except _Pending as p:
            prev = p.x
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def __len__(self) -> int:
        return len(self.config.alphas_cumprod)
