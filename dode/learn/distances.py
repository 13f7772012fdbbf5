"""Distances between the student's and the teacher's final samples, for S4S's objective: mean
squared error, the squared distance of a frozen network's features (FD-digits classifier), LPIPS.

Each is a batch mean of per-sample distances; :func:`per_sample_distances` gives the per-sample
values (the relaxed objective of :mod:`dode.learn.relaxed` moves each sample's start on its own)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from dode.errors import InvalidChoice, UserError

__all__ = ["mse_distance", "FeatureDistance", "lpips_distance", "get_distance", "per_sample_distances"]


def mse_distance(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error (the batch mean of per-sample mean squared differences)."""
    return (x - y).pow(2).mean()


mse_distance.per_sample = lambda x, y: (x - y).pow(2).flatten(1).mean(1)  # type: ignore[attr-defined]


def per_sample_distances(distance: Callable, x: Tensor, y: Tensor) -> Tensor:
    """The distance of each sample, shape ``(batch,)``: the distance's own ``per_sample`` when it has
    one (l2, features, LPIPS), else the batch-mean callable applied to one sample at a time."""
    own = getattr(distance, "per_sample", None)
    if own is not None:
        return own(x, y)
    return torch.stack([torch.as_tensor(distance(x[i:i + 1], y[i:i + 1])).reshape(()) for i in range(len(x))])


class FeatureDistance:
    """Mean squared distance between per-sample features of a frozen network on [−1, 1] images:
    ``mean_b ‖f(x_b) − f(y_b)‖²``, the network fed ``(x + 1)·127.5`` (clean-fid's [0, 255] input).

    ``FeatureDistance.metric("fd_digits")`` uses the digits classifier of :mod:`dode.eval.metrics` (the
    FD-digits feature network). The target's features are cached (the teacher is fixed)."""

    def __init__(self, net: Callable, name: str = "features"):
        self.net, self.name = net, name
        self._cache: dict = {}

    @classmethod
    def metric(cls, metric: str = "fd_digits", device: str = "cpu", classifier: str | None = None):
        try:
            from dode.eval.metrics import feature_extractor
        except ImportError as e:  # pragma: no cover - dode.eval.metrics is part of the package
            raise UserError(f"distance={metric!r} needs dode.eval.metrics: {e}") from None
        if metric != "fd_digits":
            raise InvalidChoice(f"a differentiable feature distance exists for 'fd_digits' only, not {metric!r} "
                                "(Inception FID needs a non-differentiable resize)")
        net = feature_extractor(metric, device, classifier)
        for p in net.parameters():
            p.requires_grad_(False)
        return cls(net, metric)

    def features(self, x: Tensor) -> Tensor:
        return self.net((x.float() + 1) * 127.5).flatten(1)

    def per_sample(self, x: Tensor, y: Tensor) -> Tensor:
        """‖f(x_b) − f(y_b)‖² for each sample b."""
        key = (y.data_ptr(), tuple(y.shape), y._version)
        if key not in self._cache:
            if len(self._cache) >= 256:
                self._cache.clear()
            with torch.no_grad():
                self._cache[key] = self.features(y)
        return (self.features(x) - self._cache[key]).pow(2).sum(1)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return self.per_sample(x, y).mean()


def lpips_distance(weights: str | Path | None, net: str = "vgg", resize: int | None = 224) -> Callable:
    """LPIPS (Zhang et al. 2018) as an S4S distance, from *local* weights only (nothing is
    downloaded): ``weights`` is a ``torch.save``-d full state dict of ``lpips.LPIPS(net=net)``
    (backbone and linear layers). Images in [−1, 1] are upsampled bilinearly to ``resize`` first
    (as LD3 and S4S do for 32×32 images). Needs ``pip install lpips``."""
    if not weights or not Path(weights).is_file():
        raise UserError(f"distance='lpips' needs local LPIPS weights: lpips_weights={weights!r} is not a file. "
                        "Save a full state dict once where the weights can be downloaded (`torch.save(lpips.LPIPS("
                        f"net='{net}').state_dict(), 'lpips_{net}.pt')`) and pass its path, or use distance='l2'")
    try:
        import lpips  # type: ignore
    except ImportError:
        raise UserError("distance='lpips' needs the lpips package: pip install lpips") from None
    model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def per_sample(x: Tensor, y: Tensor) -> Tensor:
        x, y = x.float(), y.float()
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        if resize and x.shape[-1] != resize:
            up = lambda t: torch.nn.functional.interpolate(t, size=(resize, resize), mode="bilinear",  # noqa: E731
                                                           align_corners=False)
            x, y = up(x), up(y)
        return model.to(x.device)(x, y).flatten()

    def dist(x: Tensor, y: Tensor) -> Tensor:
        return per_sample(x, y).mean()

    dist.name = f"lpips-{net}"  # type: ignore[attr-defined]
    dist.per_sample = per_sample  # type: ignore[attr-defined]
    return dist


def get_distance(distance: str | Callable = "l2", device: str = "cpu", classifier: str | None = None,
                 lpips_weights: str | None = None) -> tuple[Callable, str]:
    """(callable, name) for ``distance``: ``"l2"``, ``"fd_digits"`` (classifier features), ``"lpips"``
    (with ``lpips_weights``) or any callable ``(x, y) -> scalar`` that is a batch mean."""
    if callable(distance):
        return distance, getattr(distance, "name", getattr(distance, "__name__", "custom"))
    if distance in ("l2", "mse"):
        return mse_distance, "l2"
    if distance == "fd_digits":
        return FeatureDistance.metric("fd_digits", device, classifier), "fd_digits"
    if distance == "lpips":
        return lpips_distance(lpips_weights), "lpips"
    raise InvalidChoice(f"unknown distance {distance!r}; valid: l2, fd_digits, lpips, or a callable")

