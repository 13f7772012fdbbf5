"""The resize of each FID mode: uint8 images ``(N, C, H, W)`` → float32 ``(N, C, 299, 299)`` in [0, 255].

* ``clean`` — clean-fid's ``build_resizer("clean")``: PIL bicubic (with PIL's antialiasing) of each
  channel as a float32 image, no quantisation, clipped to [0, 255].
* ``legacy_tensorflow`` — TF1's ``resize_bilinear`` with ``align_corners=False`` and
  ``half_pixel_centers=False`` (what NVIDIA's full Inception TorchScript, used by EDM's ``fid.py``,
  does inside): output pixel ``i`` reads source coordinate ``s = i · (H_in / 299)``, taps
  ``⌊s⌋`` and ``min(⌈s⌉, H_in − 1)`` with weight ``s − ⌊s⌋``; rows and columns alike. Every
  quantity is float32, as in TF1's CPU kernel (scale ``float(H_in) / float(299)``, ``s`` in float32,
  ``top = tl + (tr − tl)·wx``, ``bottom = bl + (br − bl)·wx``, ``out = top + (bottom − top)·wy``).
* ``legacy_pytorch`` — pytorch-fid's ``F.interpolate(mode="bilinear", align_corners=False)`` (half
  pixel centres, no antialiasing), on [0, 255] as clean-fid's ``legacy_pytorch`` mode does.

The two bilinear resizes are tensor arithmetic and run on the features' device; ``clean`` is PIL on
the CPU, one image at a time, so :func:`resized_batches` can run it in ``workers`` processes (a torch
``DataLoader`` over the batches, tensors returned through shared memory), pipelined with the feature
extraction: the same function on the same bytes, so the values are identical to the serial path.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from dode.errors import InvalidChoice

MODES = ("clean", "legacy_tensorflow", "legacy_pytorch")
SIZE = 299  # Inception's input side


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`; otherwise an :class:`InvalidChoice` listing them."""
    if mode not in MODES:
        raise InvalidChoice(f"unknown FID mode {mode!r}; valid modes: {', '.join(MODES)}")
    return mode


def _tf1_taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower and upper source index and weight of each output index (TF1 legacy scaler, float32)."""
    scale = torch.tensor(n_in, dtype=torch.float32) / torch.tensor(n_out, dtype=torch.float32)
    src = torch.arange(n_out, dtype=torch.float32) * scale
    low = torch.floor(src)
    return low.long().clamp(min=0), torch.ceil(src).long().clamp(max=n_in - 1), src - low


def tf1_resize_bilinear(images: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """TF1 ``resize_bilinear(align_corners=False, half_pixel_centers=False)`` of ``(N, C, H, W)`` images
    to ``size × size``, in float32 (see the module docstring for the mapping)."""
    x = images.to(torch.float32)
    y0, y1, wy = (t.to(x.device) for t in _tf1_taps(x.shape[2], size))
    x0, x1, wx = (t.to(x.device) for t in _tf1_taps(x.shape[3], size))
    top, bottom = x[:, :, y0], x[:, :, y1]
    top = top[..., x0] + (top[..., x1] - top[..., x0]) * wx
    bottom = bottom[..., x0] + (bottom[..., x1] - bottom[..., x0]) * wx
    return top + (bottom - top) * wy[:, None]


def torch_resize_bilinear(images: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """pytorch-fid's resize: ``F.interpolate`` bilinear, ``align_corners=False``, float32 [0, 255]."""
    return F.interpolate(images.to(torch.float32), size=(size, size), mode="bilinear", align_corners=False)


def pil_resize_hwc(images: np.ndarray, size: int = SIZE) -> torch.Tensor:
    """clean-fid's "clean" resize of uint8 ``(N, H, W, C)`` images, each by PIL bicubic on float32
    channels clipped to [0, 255], as float32 ``(N, C, size, size)`` on the CPU."""
    from cleanfid.resize import make_resizer

    fn = make_resizer("PIL", False, "bicubic", (size, size))
    out = np.stack([fn(img) for img in images]).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def pil_resize_bicubic(images: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """clean-fid's "clean" resize of each ``(N, C, H, W)`` image (:func:`pil_resize_hwc`), on ``images``' device."""
    return pil_resize_hwc(images.detach().cpu().numpy().transpose(0, 2, 3, 1), size).to(images.device)


class CleanBatches(torch.utils.data.Dataset):
    """Item i: batch i (``batch_size`` images) of uint8 ``(N, H, W, C)`` images, resized by the
    ``clean`` mode (:func:`pil_resize_hwc`); what a ``DataLoader`` worker computes."""

    def __init__(self, images: np.ndarray, batch_size: int):
        self.images, self.batch_size = images, int(batch_size)

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __getitem__(self, i: int) -> torch.Tensor:
        return pil_resize_hwc(self.images[i * self.batch_size:(i + 1) * self.batch_size])


def resize_workers(processes: int = 1) -> int:
    """Worker processes for the ``clean`` resize of one of ``processes`` processes sharing this
    machine's usable cores: its share of them less one (the feature extraction's), at most 8; 0
    (resize in this process) when that leaves none."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores // max(1, processes) - 1))


def resized_batches(images: np.ndarray, batch_size: int, mode: str, device: str = "cpu", workers: int = 0,
                    pin: bool = False) -> Iterator[torch.Tensor]:
    """uint8 ``(N, H, W, 3)`` images, ``batch_size`` at a time, resized by FID mode ``mode`` to
    float32 ``(n, 3, 299, 299)`` on ``device`` (``pin``: copied from pinned memory, not blocking).
    ``clean`` with ``workers`` > 0: resized in that many ``DataLoader`` worker processes, up to two
    batches each ahead of the consumer; otherwise batch by batch here (bilinear modes on ``device``)."""
    if check_mode(mode) == "clean" and workers > 0:
        loader = torch.utils.data.DataLoader(CleanBatches(images, batch_size), batch_size=None, num_workers=workers,
                                             pin_memory=pin, prefetch_factor=2)
        for batch in loader:
            yield batch.to(device, non_blocking=pin)
        return
    resize = batch_resizer(mode)
    for batch in uint8_batches(images, batch_size, device, pin):
        yield resize(batch)


def uint8_batches(images: np.ndarray, batch_size: int, device: str = "cpu",
                  pin: bool = False) -> Iterator[torch.Tensor]:
    """uint8 ``(N, H, W, C)`` images as ``(n, C, H, W)`` batches on ``device`` (``pin``: copied from
    pinned memory, not blocking)."""
    for i in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size].transpose(0, 3, 1, 2)))
        if pin:
            batch = batch.pin_memory()
        yield batch.to(device, non_blocking=pin)


def batch_resizer(mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The resize of FID mode ``mode``: uint8 ``(N, 3, H, W)`` → float32 ``(N, 3, 299, 299)``."""
    return {"clean": pil_resize_bicubic, "legacy_tensorflow": tf1_resize_bilinear,
            "legacy_pytorch": torch_resize_bilinear}[check_mode(mode)]
