"""dode: learned few-step ODE solvers of diffusion models (D-ODE, IIA, S4S) on one model-call path.

>>> import torch, dode
>>> from dode.core.oracle import GaussianMixture
>>> model = GaussianMixture(torch.randn(4, 2), stds=[0.3] * 4)
>>> noise = torch.randn(100, 2, dtype=torch.float64)
>>> lam = dode.fit_lambdas(model, noise, solver="ddim", nfe=5, scale=10)
>>> x = dode.sample(model, torch.randn(8, 2, dtype=torch.float64), solver="ddim", nfe=5, lambdas=lam)
"""
from dode.core.forms import Correction
from dode.core.sampling import sample, trajectory
from dode.core.solvers import SOLVERS
from dode.learn.dode import fit_correction, fit_lambdas
from dode.version import __version__

__all__ = ["sample", "trajectory", "fit_lambdas", "fit_correction", "Correction", "SOLVERS", "__version__"]
