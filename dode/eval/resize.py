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
"""
from __future__ import annotations

from typing import Callable

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


def pil_resize_bicubic(images: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """clean-fid's "clean" resize of each image (PIL bicubic on float32 channels, clipped to [0, 255])."""
    from cleanfid.resize import make_resizer

    fn = make_resizer("PIL", False, "bicubic", (size, size))
    hwc = images.detach().cpu().numpy().transpose(0, 2, 3, 1)
    out = np.stack([fn(img) for img in hwc]).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(images.device)


def batch_resizer(mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The resize of FID mode ``mode``: uint8 ``(N, 3, H, W)`` → float32 ``(N, 3, 299, 299)``."""
    return {"clean": pil_resize_bicubic, "legacy_tensorflow": tf1_resize_bilinear,
            "legacy_pytorch": torch_resize_bilinear}[check_mode(mode)]
