"""Reading real images for reference statistics: folders, archives, CIFAR python batches, arrays."""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from dode.errors import UserError

IMAGE_EXTENSIONS = {"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"}


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data — dicts, lists, bytes, numbers and numpy arrays — and refuses every other
    class a pickle names, so no code in a data file ever runs (CIFAR's python batches are pickles)."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, and a data file may hold only arrays, "
                                         "lists, dicts, bytes and numbers")
        return super().find_class(module, name)


def load_data_pickle(file, what: str):
    """The data in a pickle ``file`` through :class:`ArraysOnlyUnpickler` (bytes keys kept); a refused
    or broken file is a UserError naming ``what``."""
    try:
        return ArraysOnlyUnpickler(file, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise UserError(f"{what}: not a plain-data pickle ({e}); refused, nothing in it was run") from None


def _cifar_batches(tar: tarfile.TarFile, split: str) -> np.ndarray | None:
    """The images of a CIFAR-10/100 *python* archive (``cifar-10-python.tar.gz``), or None."""
    names = [m for m in tar.getmembers() if m.isfile()]
    want = ("data_batch_", "train") if split == "train" else ("test_batch", "test")
    batches = sorted((m for m in names if os.path.basename(m.name).startswith(want)), key=lambda m: m.name)
    if not batches or not any(os.path.basename(m.name) in ("batches.meta", "meta") for m in names):
        return None
    arrays = []
    for m in batches:
        d = load_data_pickle(tar.extractfile(m), f"{tar.name}: {m.name}")
        arrays.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.concatenate(arrays)


def read_images(source: str | Path, split: str = "train", limit: int | None = None) -> np.ndarray:
    """uint8 images ``(N, H, W, 3)`` from a folder (recursive), a ``.zip`` or ``.tar[.gz]`` of image
    files, a CIFAR python archive (split ``train`` or ``test``), or a ``.npy``/``.npz`` array of uint8
    images ``(N, H, W, C)``. Files are taken in sorted order; ``limit`` keeps the first ``limit``."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"image source {source} not found (a folder, .zip, .tar[.gz] or .npy/.npz)")
    is_image = lambda n: n.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS  # noqa: E731
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and is_image(p.name))[:limit]
        imgs = [_decode(p.read_bytes()) for p in files]
    elif source.suffix == ".zip":
        with zipfile.ZipFile(source) as z:
            files = sorted(n for n in z.namelist() if is_image(n))[:limit]
            imgs = [_decode(z.read(n)) for n in files]
    elif source.suffix in (".npy", ".npz"):
        arr = np.load(source)
        if isinstance(arr, np.lib.npyio.NpzFile):
            keys = [k for k in arr.files if arr[k].ndim == 4]
            if not keys:
                raise UserError(f"{source} holds no 4-D image array")
            arr = arr[keys[0]]
        arr = np.asarray(arr)
        if arr.ndim != 4 or arr.dtype != np.uint8:
            raise UserError(f"{source}: expected uint8 images (N, H, W, C), got {arr.dtype} {arr.shape}")
        return arr[:limit]
    elif tarfile.is_tarfile(source):
        with tarfile.open(source) as tar:
            cifar = _cifar_batches(tar, split)
            if cifar is not None:
                return cifar[:limit]
            members = sorted((m for m in tar.getmembers() if m.isfile() and is_image(m.name)),
                             key=lambda m: m.name)[:limit]
            imgs = [_decode(tar.extractfile(m).read()) for m in members]
    else:
        raise UserError(f"cannot read images from {source}: give a folder, .zip, .tar[.gz] or .npy/.npz")
    if not imgs:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {source}")
    shapes = {im.shape for im in imgs}
    if len(shapes) != 1:
        raise UserError(f"images in {source} have different sizes {sorted(shapes)[:3]}…; resize them first")
    return np.stack(imgs)
