"""Fixtures shared by the test files."""
import pytest
import torch

from dode.core.oracle import GaussianMixture
from dode.core.schedules import DiscreteVPSchedule


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small batches on a shared 2-core machine: one intra-op thread avoids hand-off costs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models():
    """A 4-component Gaussian mixture on 1×3×3 images: as an x0 model (EDM/VE) and as an ε model (VP)."""
    torch.manual_seed(0)
    gm = GaussianMixture(torch.randn(4, 1, 3, 3), stds=[0.5, 0.6, 0.7, 0.8])
    return {"edm": gm, "vp": gm.as_vp(DiscreteVPSchedule.linear())}


@pytest.fixture(scope="session")
def mixture_noise():
    """``mixture_noise(n, seed)``: n standard-normal float64 noises for the ``models`` mixture
    (1×3×3), from their own seed."""
    def draw(n: int, seed: int) -> torch.Tensor:
        return torch.randn(n, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))

    return draw
