"""The relaxed objective of LD3 (Tong et al., "Learning to Discretize Denoising Diffusion ODEs",
ICLR 2025), which S4S (Frankel et al. 2025) adopts: the student need not map the teacher's noise n_b
to the teacher's sample y_b, only some start within a small ball around it,

    min_ξ  mean_b  min_{‖n'_b − n_b‖ ≤ r}  dist(student_ξ(n'_b), y_b),

with r the ``radius`` in the standard-normal noise (x_T = scale · n, :func:`dode.core.sampling.prior_scale`),
‖·‖ the Euclidean norm over the whole sample. r = 0 is the plain objective. As LD3's code does, the
inner minimum is tracked by one step per optimiser step: the starts move along their gradient (here
a normalised step of length ``step · r``, so the step does not depend on the distance's scale; LD3
takes a fixed-rate SGD step), are projected back onto the ball, and a sample's move is kept only if
its distance under the updated parameters is below its distance before the update.
:func:`ld3_radius` is LD3's default radius.
"""
from __future__ import annotations

import torch
from torch import Tensor

from dode.core.denoisers import per_sample

__all__ = ["ld3_radius", "RelaxedStarts"]


def ld3_radius(shape: tuple, steps: int) -> float:
    """LD3's default ball radius for samples of ``shape`` and a solver with ``steps`` steps:
    0.001 · dim / steps² (its code's ``prior_bound``; e.g. 0.03072 for CIFAR-10 at 10 steps)."""
    dim = 1
    for n in shape:
        dim *= int(n)
    return 0.001 * dim / steps**2


class RelaxedStarts:
    """The student's starts n' for the teacher's noise n (``origin``), kept within ``radius``.

    :meth:`leaf` gives the starts for one loss evaluation (requiring gradients when the loss is
    differentiated); :meth:`record` keeps their gradient and per-sample distances; :meth:`candidate`
    is the projected step; :meth:`accept` keeps the moves that lowered a sample's distance."""

    def __init__(self, noise: Tensor, radius: float, step: float = 1.0):
        if not radius >= 0:
            raise ValueError(f"the relaxed objective's radius must be ≥ 0, got {radius}")
        self.origin = noise
        self.starts = noise.clone()
        self.radius, self.step = float(radius), float(step)
        self.grad: Tensor | None = None
        self.before: Tensor | None = None
        self.moves = 0  # accepted moves of one sample's start, over the fit

    def leaf(self, backward: bool) -> Tensor:
        return self.starts.clone().requires_grad_(backward)

    def record(self, grad: Tensor | None, distances: Tensor) -> None:
        """The gradient of the loss with respect to the starts and each sample's distance there."""
        self.grad, self.before = grad, distances

    def project(self, starts: Tensor) -> Tensor:
        """The nearest points of the ball ‖n' − n‖ ≤ r (each sample its own ball)."""
        diff = starts - self.origin
        norm = diff.flatten(1).norm(dim=1)
        scale = torch.where(norm > self.radius, self.radius / norm.clamp_min(1e-300), torch.ones_like(norm))
        return self.origin + per_sample(scale, diff).to(diff.dtype) * diff

    def candidate(self) -> Tensor | None:
        """The starts after one normalised gradient step of length ``step · radius``, projected; None
        before a gradient is recorded."""
        if self.grad is None:
            return None
        norm = self.grad.flatten(1).norm(dim=1).clamp_min(1e-300)
        move = per_sample(self.step * self.radius / norm, self.grad).to(self.grad.dtype) * self.grad
        return self.project(self.starts - move)

    def accept(self, candidate: Tensor, distances: Tensor) -> int:
        """Keep the candidate start of every sample whose ``distances`` are below those recorded;
        returns how many moved."""
        better = distances < self.before
        self.starts = torch.where(per_sample(better, candidate), candidate, self.starts)
        self.grad = None
        moved = int(better.sum())
        self.moves += moved
        return moved

    def offsets(self) -> Tensor:
        """‖n'_b − n_b‖ for each sample."""
        return (self.starts - self.origin).flatten(1).norm(dim=1)
