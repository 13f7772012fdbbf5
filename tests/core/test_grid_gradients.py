"""Differentiable grids: every solver takes a σ grid that requires gradients, the gradient of its
samples with respect to every σ matches central finite differences, and the values are those of the
float grid."""
import pytest
import torch

from dode.core.path import ModelPath
from dode.core.sampling import run_solver, solver_grid
from dode.core.solvers import SOLVERS

# (solver, NFE, grid): each solver on a grid its plan runs on; VP grids avoid integer training steps,
# where σ ↦ τ(σ) has a kink (log ᾱ is piecewise linear in τ) and no derivative exists
CASES = [(name, 5, None) for name in SOLVERS] + [("dpm3", 6, "logsnr"), ("deis3", 6, "logsnr")]


def _run(model, name, sigmas, plan, noise):
    return run_solver(ModelPath(model), SOLVERS[name], noise, sigmas, plan)


def _grid(model, kind, name, nfe, grid):
    spec, sigmas, plan = solver_grid(model, name, nfe, grid)
    if kind == "vp":  # move every positive σ off the training steps
        k = torch.arange(len(sigmas), dtype=torch.float64)
        sigmas = sigmas * (1 + 0.013 * torch.cos(k))
    return sigmas, plan


@pytest.mark.parametrize("kind", ["edm", "vp"])
@pytest.mark.parametrize("name,nfe,grid", CASES)
def test_sample_gradient_wrt_every_sigma_matches_finite_differences(models, mixture_noise, kind, name, nfe, grid):
    model = models[kind]
    sigmas, plan = _grid(model, kind, name, nfe, grid)
    noise = mixture_noise(3, 5)
    weights = torch.randn(3, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    sig = sigmas.clone().requires_grad_(True)
    x = _run(model, name, sig, plan, noise)
    with torch.no_grad():  # the differentiable path computes the float path's values
        torch.testing.assert_close(x.detach(), _run(model, name, sigmas, plan, noise), rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad((x * weights).sum(), sig)
    free = [i for i in range(len(sigmas)) if sigmas[i] > 0]
    fd = torch.zeros(len(sigmas), dtype=torch.float64)
    for i in free:
        h = 1e-4 * float(sigmas[i])
        up, down = sigmas.clone(), sigmas.clone()
        up[i] += h
        down[i] -= h
        with torch.no_grad():
            fd[i] = ((_run(model, name, up, plan, noise) - _run(model, name, down, plan, noise)) * weights).sum() / (2 * h)
    assert float(fd[free].abs().max()) > 1e-3  # the samples do depend on the grid
    torch.testing.assert_close(grad[free], fd[free], rtol=1e-5, atol=1e-7 * float(fd.abs().max()))
