"""dode: learned few-step ODE solvers of diffusion models (D-ODE, IIA, S4S) on one model-call path.

>>> import torch, dode
>>> from dode.core.oracle import GaussianMixture
>>> model = GaussianMixture(torch.randn(4, 2), stds=[0.3] * 4)
>>> noise = torch.randn(100, 2, dtype=torch.float64)
>>> lam = dode.fit_lambdas(model, noise, solver="ddim", nfe=5, scale=10)
>>> x = dode.sample(model, torch.randn(8, 2, dtype=torch.float64), solver="ddim", nfe=5, lambdas=lam)

The public names are imported on first use, so that ``import dode.<part>`` of a part that needs no
torch (the config tree, the report's queries) does not pay for it.
"""
from __future__ import annotations

import importlib
from typing import Any

from dode.version import __version__

_PUBLIC = {"sample": "dode.core.sampling", "trajectory": "dode.core.sampling", "fit_lambdas": "dode.learn.dode",
           "fit_correction": "dode.learn.dode", "Correction": "dode.core.forms", "SOLVERS": "dode.core.solvers",
           "export": "dode.integrations.export"}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'dode' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
