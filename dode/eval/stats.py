"""Gaussian statistics of features, the Fréchet distance, and reference statistics files.

A statistics file is a ``.npz`` with ``mu`` (d,) and ``sigma`` (d, d) — the layout of EDM's
fid-refs, pytorch-fid and clean-fid, whose files are accepted as they are. Files made by
``make-stats`` also record ``metric``, ``mode`` (the FID mode of their features), ``dataset``,
``source`` and ``num_images``. Comparing features of one FID mode with statistics that record another
is refused; a file that records no mode (a publisher's) is accepted and the mode is *assumed*.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from dode.errors import UserError
from dode.eval.features import check_metric, extract_features, feature_batches
from dode.eval.resize import check_mode

STATS_ENV = "DODE_STATS_DIR"


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (``N − 1`` normalisation) of features ``(N, d)``, in float64, as clean-fid
    and EDM compute them."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"need at least two feature vectors (N, d), got shape {feats.shape}")
    return np.mean(feats, axis=0), np.cov(feats, rowvar=False)


@dataclass(frozen=True)
class FeatureMoments:
    """Sums of features in float64 — count ``n``, ``total`` = Σ x (d,), ``outer`` = Σ x xᵀ (d, d) —
    that add over parts of a sample set (batches, processes) and give its mean and covariance."""
    count: int
    total: np.ndarray
    outer: np.ndarray

    @classmethod
    def zeros(cls, dim: int) -> "FeatureMoments":
        return cls(0, np.zeros(dim), np.zeros((dim, dim)))

    def __add__(self, other: "FeatureMoments") -> "FeatureMoments":
        return FeatureMoments(self.count + other.count, self.total + other.total, self.outer + other.outer)

    def pack(self) -> np.ndarray:
        """``[n, Σx, Σxxᵀ]`` as one float64 vector (for one all-reduce)."""
        return np.concatenate([[float(self.count)], self.total, self.outer.ravel()])

    @classmethod
    def unpack(cls, v: np.ndarray, dim: int) -> "FeatureMoments":
        v = np.asarray(v, dtype=np.float64)
        return cls(int(round(v[0])), v[1:1 + dim].copy(), v[1 + dim:].reshape(dim, dim).copy())

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """μ = Σx / n and Σ = (Σxxᵀ − n μμᵀ) / (n − 1) (the ``N − 1`` covariance of :func:`feature_stats`)."""
        if self.count < 2:
            raise ValueError(f"need at least two feature vectors, got {self.count}")
        mu = self.total / self.count
        sigma = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return mu, (sigma + sigma.T) / 2


def feature_moments(name: str, images, **cfg) -> FeatureMoments:
    """:class:`FeatureMoments` of the features of uint8 images (arguments of
    :func:`~dode.eval.features.extract_features`), accumulated batch by batch in float64 on the
    features' device (the CPU for MPS, which has no float64)."""
    import torch

    acc = None
    for f in feature_batches(name, images, **cfg):
        f = (f.cpu() if f.device.type == "mps" else f).to(torch.float64)
        part = (f.shape[0], f.sum(0), f.T @ f)
        acc = part if acc is None else (acc[0] + part[0], acc[1] + part[1], acc[2] + part[2])
    if acc is None:
        raise ValueError("no images to extract features from")
    return FeatureMoments(int(acc[0]), acc[1].cpu().numpy(), acc[2].cpu().numpy())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """clean-fid's Fréchet distance ``|μ₁ − μ₂|² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½)`` between two Gaussians."""
    from cleanfid.fid import frechet_distance as fd

    return float(fd(mu1, sigma1, mu2, sigma2))


@dataclass(frozen=True)
class ReferenceStats:
    """Reference statistics: ``mu``, ``sigma``, the FID ``mode`` they record (None: none recorded, or
    not an FID reference) and the file they came from (None: computed here)."""
    mu: np.ndarray
    sigma: np.ndarray
    mode: str | None = None
    path: Path | None = None


def default_stats_path(dataset: str, name: str = "fid", mode: str | None = "clean") -> Path:
    """Where ``make-stats`` writes (and ``fid`` looks for) a dataset's reference statistics:
    ``$DODE_STATS_DIR/<dataset>_<metric>_<mode>.npz`` (``<dataset>_<metric>.npz`` when ``mode`` is
    None, as for FD-digits), ``stats/`` under the working folder by default."""
    stem = f"{dataset}_{name}" + (f"_{mode}" if mode else "")
    return Path(os.environ.get(STATS_ENV, "stats")) / f"{stem}.npz"


def read_stats(path: str | Path) -> ReferenceStats:
    """The statistics in a ``.npz`` (keys ``mu``, ``sigma``; ``mode`` if recorded); a missing or
    malformed file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"reference statistics {path} not found; make them from real images with "
                        f"`python -m dode.eval.metrics make-stats --name <dataset> --source <image folder, "
                        f"zip/tar archive or .npy/.npz of uint8 images> --out {path}`, or point "
                        "ref_stats at a published .npz (EDM fid-refs, pytorch-fid, clean-fid: keys mu, sigma) "
                        "computed in the same FID mode")
    try:
        with np.load(path) as z:
            mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
            mode = str(z["mode"]) if "mode" in z.files else None
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise UserError(f"{path} is not a statistics file with arrays 'mu' and 'sigma' ({e})") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise UserError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
    return ReferenceStats(mu, sigma, mode, path)


def load_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``mu`` and ``sigma`` of :func:`read_stats`."""
    ref = read_stats(path)
    return ref.mu, ref.sigma


@lru_cache(maxsize=8)
def _digits_reference(split: str, device: str, classifier: str | None):
    from dode.eval.data import load_dataset

    feats = extract_features("fd_digits", load_dataset("digits", split).uint8(), device=device,
                             classifier=classifier)
    return feature_stats(feats)


def reference(name: str, ref_stats: str | Path | None = None, dataset: str | None = None,
              ref_split: str = "all", device: str = "cpu", classifier: str | None = None,
              mode: str = "clean", **_) -> ReferenceStats:
    """Reference statistics of metric ``name``: the file ``ref_stats`` if given; otherwise the real
    digits (split ``ref_split``) for ``fd_digits``, or :func:`default_stats_path` of ``dataset`` and
    ``mode`` for ``fid``. For ``fid``, a file that records an FID mode other than ``mode`` is a
    :class:`UserError` naming both."""
    check_metric(name)
    if name == "fd_digits":
        if ref_stats:
            return read_stats(ref_stats)
        mu, sigma = _digits_reference(ref_split, str(device), classifier)
        return ReferenceStats(mu.copy(), sigma.copy())
    mode = check_mode(mode)
    if not ref_stats and not dataset:
        raise UserError("Inception FID needs reference statistics: set ref_stats to a .npz, or give "
                        "the dataset name and make its statistics with `python -m dode.eval.metrics make-stats`")
    ref = read_stats(ref_stats or default_stats_path(dataset, name, mode))
    if ref.mode is not None and ref.mode != mode:
        raise UserError(f"reference statistics {ref.path} were computed in FID mode {ref.mode!r}, but the "
                        f"metric runs in mode {mode!r}: FIDs across modes are not comparable; set "
                        f"eval.mode={ref.mode} or use statistics made with `make-stats --mode {mode}`")
    return ref


def reference_stats(name: str, **cfg) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of :func:`reference` (same arguments and checks)."""
    ref = reference(name, **cfg)
    return ref.mu, ref.sigma
