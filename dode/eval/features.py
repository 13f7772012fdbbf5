"""Feature extraction of the two metrics, per FID mode.

* ``fd_digits`` — the 64 penultimate features of the digits classifier (``dode/assets/
  digits-classifier.pt``) on 8×8 images mapped to ``x / 127.5 − 1`` (no resize; no modes).
* ``fid`` — 2,048 Inception pool features after the resize of the FID mode (:mod:`dode.eval.resize`):
  ``clean`` and ``legacy_tensorflow`` through NVIDIA's FID Inception TorchScript (``(x − 128)/128``),
  ``legacy_pytorch`` through pytorch-fid's port (``2·x/255 − 1``, weights from a local file).
  Grey images are repeated to RGB first (as clean-fid's ``convert('RGB')`` and EDM's ``fid.py`` do).

Extractors take float32 NCHW images in [0, 255] (clean-fid's convention); every sample's features are
independent of the batch it is in.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterator

import numpy as np
import torch

from dode.errors import InvalidChoice
from dode.eval.inception import load_pytorch_fid_inception, load_torchscript_inception, pytorch_fid_weights_path
from dode.eval.resize import check_mode, resize_workers, resized_batches, uint8_batches

METRICS = ("fd_digits", "fid")


def check_metric(name: str) -> str:
    """``name`` if it is one of :data:`METRICS`; otherwise an :class:`InvalidChoice` listing them."""
    if name not in METRICS:
        raise InvalidChoice(f"unknown metric {name!r}; valid metrics: {', '.join(METRICS)}")
    return name


class DigitsFeatures(torch.nn.Module):
    """The digits classifier's penultimate features of ``[0, 255]`` NCHW images (8×8, 1 channel)."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 3:  # an RGB copy of a grey image (e.g. read from a file): take one channel
            x = x[:, :1]
        return self.classifier.features(x.to(torch.float32) / 127.5 - 1)


@lru_cache(maxsize=None)
def _extractor(name: str, device: str, classifier: str | None, weights: str | None) -> torch.nn.Module:
    if name == "fd_digits":
        from dode.models.digits import load_classifier

        return DigitsFeatures(load_classifier(classifier)).to(device).eval()
    if weights is not None:
        return load_pytorch_fid_inception(weights, device)
    return load_torchscript_inception(device)


def feature_extractor(name: str, device: str = "cpu", classifier: str | None = None, mode: str = "clean",
                      inception_weights: str | None = None) -> torch.nn.Module:
    """The feature network of metric ``name`` (cached): NCHW float in [0, 255] → ``(N, d)``; for
    ``fid`` the network of FID mode ``mode`` (``inception_weights``: pytorch-fid's weights file of
    ``legacy_pytorch``). The images must already have the mode's size (299×299 for Inception)."""
    check_metric(name)
    if name == "fid" and check_mode(mode) == "legacy_pytorch":
        # the weights file, resolved (None: torch hub's cache), keys pytorch-fid's network in the cache
        return _extractor(name, str(device), None, str(pytorch_fid_weights_path(inception_weights)))
    return _extractor(name, str(device), classifier, None)


def _as_uint8_nhwc(images) -> np.ndarray:
    a = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if a.ndim != 4 or a.dtype != np.uint8:
        raise ValueError(f"metrics take uint8 images (N, H, W, C); got {a.dtype} of shape {a.shape} "
                         "(convert model samples with dode.eval.data.to_uint8)")
    return a


def feature_batches(name: str, images, batch_size: int = 250, device: str = "cpu", mode: str = "clean",
                    classifier: str | None = None, inception_weights: str | None = None,
                    progress: bool = False, workers: int | None = None, **_) -> Iterator[torch.Tensor]:
    """The features of uint8 images ``(N, H, W, C)``, ``batch_size`` at a time, as tensors on
    ``device`` (float32 ``(n, d)``, d = 64 for ``fd_digits``, 2048 for ``fid``): for ``fid``, grey
    images are repeated to RGB, resized by FID mode ``mode`` (:func:`dode.eval.resize.resized_batches`;
    ``clean`` in ``workers`` processes, default :func:`~dode.eval.resize.resize_workers`, pipelined with
    the network; the same values as in one process) and passed through its network. Each batch goes to
    the device from pinned memory (on a GPU)."""
    images = _as_uint8_nhwc(images)
    model = feature_extractor(name, device, classifier, mode, inception_weights)
    if name == "fid" and images.shape[3] == 1:
        images = np.repeat(images, 3, axis=3)
    pin = str(device).startswith("cuda")
    if name == "fid":
        batches = resized_batches(images, batch_size, mode, device, resize_workers() if workers is None else workers,
                                  pin)
    else:
        batches = (b.to(torch.float32) for b in uint8_batches(images, batch_size, device, pin))
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"{name} features", unit="batch", total=-(-len(images) // batch_size))
    for batch in batches:
        with torch.no_grad():
            yield model(batch).detach().to(torch.float32)


def extract_features(name: str, images, batch_size: int = 250, device: str = "cpu", mode: str = "clean",
                     classifier: str | None = None, inception_weights: str | None = None,
                     progress: bool = False, workers: int | None = None, **_) -> np.ndarray:
    """Features ``(N, d)`` (float32) of uint8 images ``(N, H, W, C)``: :func:`feature_batches`
    gathered on the CPU."""
    feats = [f.cpu().numpy() for f in feature_batches(name, images, batch_size, device, mode, classifier,
                                                      inception_weights, progress, workers)]
    if not feats:
        raise ValueError("no images to extract features from")
    return np.concatenate(feats).astype(np.float32)
