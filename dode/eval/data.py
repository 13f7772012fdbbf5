"""Datasets and the image conversions the whole project shares.

Images travel in two forms:

* model space — float tensors ``(N, C, H, W)`` in ``[−1, 1]`` (what networks and solvers see);
* uint8 arrays ``(N, H, W, C)`` in ``[0, 255]`` (what metrics, image files and grids see).

:func:`to_uint8` and :func:`from_uint8` convert between them. ``to_uint8`` maps ``x`` to
``round((x + 1) · 127.5)`` clipped to [0, 255]; ``from_uint8`` maps ``u`` to ``u / 127.5 − 1``, so
``to_uint8(from_uint8(u)) == u`` exactly.

The embedded dataset ``digits`` is scikit-learn's bundled copy of the UCI optical handwritten digits
(``sklearn.datasets.load_digits``; 1,797 grayscale 8×8 images, pixel values 0…16, ten classes, no
download). It is scaled to model space by ``x = v / 8 − 1`` and shaped ``(N, 1, 8, 8)``.

Fixed split (documented in ``docs/digits.md``): ``perm = numpy.random.default_rng(0).permutation(1797)``;

* ``train`` — ``perm[:1497]`` (1,497 images): trains both diffusion models and the classifier;
* ``test``  — ``perm[1497:]`` (300 images): held out, for the classifier's accuracy;
* ``all``   — all 1,797 images in scikit-learn's order: the reference set of FD-digits;
* ``half0`` / ``half1`` — ``perm[:898]`` / ``perm[898:]``: two disjoint halves of the real set, whose
  FD-digits to each other is the floor a generative model is compared with.

New datasets register a loader with :func:`register_dataset`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from dode.errors import InvalidChoice

DIGITS_SEED = 0
DIGITS_SIZE = 1797
DIGITS_TRAIN = 1497
SPLITS = ("train", "test", "all", "half0", "half1")


@dataclass(frozen=True)
class Dataset:
    """Images in model space plus labels (``None`` for unlabelled data)."""

    name: str
    split: str
    images: Tensor  # (N, C, H, W) float32 in [−1, 1]
    labels: Tensor | None  # (N,) int64
    indices: np.ndarray  # positions in the source dataset

    def __len__(self) -> int:
        return len(self.images)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def uint8(self) -> np.ndarray:
        """The images as uint8 ``(N, H, W, C)`` (what the metrics take)."""
        return to_uint8(self.images)


_REGISTRY: dict[str, Callable[[str], Dataset]] = {}


def register_dataset(name: str):
    """Decorator: register ``fn(split) -> Dataset`` under ``name``."""

    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


def load_dataset(name: str, split: str = "all") -> Dataset:
    """The dataset ``name`` (``digits``, …), split ``split`` (see the module docstring)."""
    if name not in _REGISTRY:
        raise InvalidChoice(f"unknown dataset {name!r}; valid datasets: {', '.join(dataset_names())}")
    return _REGISTRY[name](split)


def digits_split_indices(split: str) -> np.ndarray:
    """Indices into scikit-learn's ``load_digits`` order for a split of ``digits``."""
    perm = np.random.default_rng(DIGITS_SEED).permutation(DIGITS_SIZE)
    half = DIGITS_SIZE // 2
    table = {
        "train": perm[:DIGITS_TRAIN],
        "test": perm[DIGITS_TRAIN:],
        "all": np.arange(DIGITS_SIZE),
        "half0": perm[:half],
        "half1": perm[half:],
    }
    if split not in table:
        raise InvalidChoice(f"unknown split {split!r} of digits; valid splits: {', '.join(SPLITS)}")
    return table[split]


_DIGITS_CACHE: dict = {}


def _digits_arrays():
    if not _DIGITS_CACHE:
        from sklearn.datasets import load_digits

        d = load_digits()
        if d.images.shape != (DIGITS_SIZE, 8, 8):
            raise RuntimeError(f"unexpected load_digits shape {d.images.shape}")
        _DIGITS_CACHE["x"] = torch.from_numpy(d.images.astype(np.float32) / 8 - 1).reshape(-1, 1, 8, 8)
        _DIGITS_CACHE["y"] = torch.from_numpy(d.target.astype(np.int64))
    return _DIGITS_CACHE["x"], _DIGITS_CACHE["y"]


@register_dataset("digits")
def load_digits_dataset(split: str = "all") -> Dataset:
    """The embedded 8×8 digits (see the module docstring), model space, shape (N, 1, 8, 8)."""
    idx = digits_split_indices(split)
    x, y = _digits_arrays()
    t = torch.from_numpy(idx)
    return Dataset("digits", split, x[t].clone(), y[t].clone(), idx)


def to_uint8(x: Tensor | np.ndarray) -> np.ndarray:
    """Model-space images ``(N, C, H, W)`` in [−1, 1] → uint8 ``(N, H, W, C)``.

    ``round((x + 1) · 127.5)`` clipped to [0, 255] (non-finite values become 0, then clipped),
    computed in float64 where ``x`` lives (IEEE-exact operations: the same bytes on every device;
    MPS has no float64, so it is done on the CPU there); only the uint8 images are copied back.
    """
    t = torch.as_tensor(x).detach()
    if t.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(t.shape)}")
    if t.device.type == "mps":
        t = t.cpu()
    t = torch.nan_to_num(t.to(torch.float64), nan=-1.0, posinf=1.0, neginf=-1.0)
    u = torch.round((t + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    return u.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def from_uint8(u: np.ndarray | Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 images ``(N, H, W, C)`` → model space ``(N, C, H, W)`` in [−1, 1]: ``u / 127.5 − 1``."""
    a = torch.as_tensor(np.asarray(u))
    if a.ndim != 4:
        raise ValueError(f"expected images (N, H, W, C), got shape {tuple(a.shape)}")
    if a.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {a.dtype}")
    return (a.permute(0, 3, 1, 2).to(torch.float64) / 127.5 - 1).to(dtype).contiguous()
