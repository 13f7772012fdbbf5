"""S4S's distances (dode.learn.distances): custom callables, features of a frozen network, LPIPS
from local weights only, and gradients through the FD-digits classifier."""
import pytest
import torch

from dode.errors import UserError
from dode.learn.distances import FeatureDistance, get_distance
from dode.learn.s4s import fit_s4s


def test_s4s_distances(models, tmp_path, mixture_noise):
    model, noise = models["edm"], mixture_noise(16, 13)
    calls = []

    def custom(x, y):
        calls.append(1)
        return (x - y).abs().mean()

    corr = fit_s4s(model, noise, "ddim", 3, iters=3, teacher_nfe=19, distance=custom)
    assert calls and corr.provenance["distance"] == "custom"
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 4, dtype=torch.float32))
    feat = FeatureDistance(net)
    y = mixture_noise(4, 14)
    assert float(feat(y, y).detach()) == 0.0 and float(feat(y + 0.1, y).detach()) > 0
    with pytest.raises(UserError, match="lpips_weights=None is not a file"):
        get_distance("lpips")
    with pytest.raises(UserError, match="is not a file"):
        get_distance("lpips", lpips_weights=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="valid: l2, fd_digits, lpips"):
        get_distance("ssim")


def test_fd_digits_distance_has_gradients():
    pytest.importorskip("cleanfid")
    try:
        dist, name = get_distance("fd_digits")
    except UserError as e:  # the classifier asset is not there
        pytest.skip(str(e))
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    loss = dist(x * 2 - 1, torch.zeros(3, 1, 8, 8, dtype=torch.float64))
    loss.backward()
    assert name == "fd_digits" and x.grad is not None and float(x.grad.abs().sum()) > 0
