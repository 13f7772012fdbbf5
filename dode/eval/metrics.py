"""Offline sample-quality metrics: Fréchet distances between Gaussian fits of features.

* ``fd_digits`` — **FD-digits**, never called FID: the 64 penultimate features of the digits
  classifier shipped in ``dode/assets/digits-classifier.pt``; images stay 8×8. Reference: the real
  ``digits`` set (all 1,797 images), computed on the fly.
* ``fid`` — Inception FID in one of three FID modes (``eval.mode``, :data:`MODES`):
  ``clean`` (clean-fid: PIL bicubic on float32, NVIDIA's FID Inception), ``legacy_tensorflow``
  (EDM's ``fid.py``: TF1 bilinear resize of the raw uint8 images, the same Inception) and
  ``legacy_pytorch`` (pytorch-fid: torch bilinear resize, pytorch-fid's weights from a local file,
  ``eval.inception_weights``). Reference statistics: ``make-stats`` (which records the mode) or a
  publisher's ``.npz`` (keys ``mu``, ``sigma``); statistics recording another mode are refused.

Nothing is downloaded. Images are uint8 ``(N, H, W, C)`` (see :func:`dode.eval.data.to_uint8`). Parts:
:mod:`~dode.eval.resize` (the modes' resizes), :mod:`~dode.eval.inception` (the networks),
:mod:`~dode.eval.features` (extraction), :mod:`~dode.eval.stats` (statistics, reference files),
:mod:`~dode.eval.images` (reading real images); this module scores and runs ``make-stats``::

    python -m dode.eval.metrics make-stats --name cifar10 --source cifar-10-python.tar.gz --mode legacy_tensorflow
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dode.errors import UserError
from dode.eval.features import METRICS, DigitsFeatures, check_metric, extract_features, feature_extractor
from dode.eval.images import IMAGE_EXTENSIONS, read_images
from dode.eval.inception import INCEPTION_ENV, InceptionFeatures, inception_path
from dode.eval.resize import MODES, check_mode
from dode.eval.stats import (STATS_ENV, FeatureMoments, ReferenceStats, default_stats_path, feature_moments,
                             feature_stats, frechet_distance, load_stats, read_stats, reference, reference_stats)

__all__ = ["METRICS", "MODES", "INCEPTION_ENV", "STATS_ENV", "IMAGE_EXTENSIONS", "DigitsFeatures",
           "InceptionFeatures", "FeatureMoments", "MetricResult", "ReferenceStats", "check_metric", "check_mode",
           "compute_metric", "default_stats_path", "evaluate_features", "evaluate_moments", "evaluate_stats",
           "extract_features", "feature_extractor", "feature_moments", "feature_stats", "frechet_distance",
           "inception_path", "load_stats", "main", "make_stats", "read_images",
           "read_stats", "reference", "reference_stats", "score_features"]


@dataclass(frozen=True)
class MetricResult:
    """One metric value with the statistics of the samples. ``mode``: the FID mode (None for
    FD-digits); ``mode_assumed``: the reference statistics record no mode, so they were taken to be
    in ``mode`` (a publisher's file)."""
    value: float
    mu: np.ndarray
    sigma: np.ndarray
    feature_dim: int
    mode: str | None = None
    mode_assumed: bool = False

    def as_dict(self) -> dict:
        """``value``, ``mu``, ``sigma``, ``feature_dim``, and for FID ``mode`` and ``mode_assumed``."""
        out = {"value": self.value, "mu": self.mu, "sigma": self.sigma, "feature_dim": self.feature_dim}
        if self.mode is not None:
            out.update(mode=self.mode, mode_assumed=self.mode_assumed)
        return out


def evaluate_features(name: str, feats: np.ndarray, **cfg) -> MetricResult:
    """The metric from already extracted features (``cfg`` as for :func:`compute_metric`)."""
    return evaluate_stats(name, *feature_stats(feats), **cfg)


def evaluate_moments(name: str, moments: FeatureMoments, **cfg) -> MetricResult:
    """The metric from feature moments summed over parts of the samples (:func:`feature_moments`,
    e.g. all-reduced over processes); ``cfg`` as for :func:`compute_metric`."""
    return evaluate_stats(name, *moments.stats(), **cfg)


def evaluate_stats(name: str, mu: np.ndarray, sigma: np.ndarray, **cfg) -> MetricResult:
    """The metric of samples with feature mean ``mu`` and covariance ``sigma``."""
    ref = reference(name, **cfg)
    if ref.mu.shape != mu.shape:
        raise UserError(f"reference statistics have {len(ref.mu)} features but {name} gives {len(mu)}")
    mode = check_mode(cfg.get("mode", "clean")) if name == "fid" else None
    return MetricResult(frechet_distance(mu, sigma, ref.mu, ref.sigma), mu, sigma, int(mu.shape[0]), mode,
                        mode is not None and ref.mode is None)


def score_features(name: str, feats: np.ndarray, **cfg) -> float:
    """The value of :func:`evaluate_features`."""
    return evaluate_features(name, feats, **cfg).value


def compute_metric(name: str, images, /, **cfg) -> float:
    """Metric ``name`` (``fd_digits`` | ``fid``) of uint8 images ``(N, H, W, C)`` against its reference.

    ``cfg`` (e.g. a ``conf/eval`` group, extra keys ignored): ``ref_stats`` (a ``.npz`` path; null:
    the real digits for ``fd_digits``, ``default_stats_path(dataset, "fid", mode)`` for ``fid``),
    ``dataset``, ``ref_split`` (digits split, default ``all``), ``batch_size``, ``device``, ``mode``
    (FID mode, default ``clean``), ``inception_weights`` (``legacy_pytorch``), ``classifier``
    (another classifier checkpoint for FD-digits).
    """
    check_metric(name)
    cfg = {k: v for k, v in cfg.items() if k not in ("name", "metric")}
    # fail on a missing or other-mode reference before spending time on features
    reference(name, **cfg)
    return score_features(name, extract_features(name, images, **cfg), **cfg)


def _premade(src: Path) -> bool:
    if src.suffix != ".npz" or not src.is_file():
        return False
    with np.load(src) as z:
        return "mu" in z.files and "sigma" in z.files


def make_stats(name: str, source: str | Path, out: str | Path | None = None, metric: str = "fid",
               split: str = "train", limit: int | None = None, batch_size: int = 100,
               device: str = "cpu", progress: bool = True, mode: str | None = None,
               inception_weights: str | None = None) -> Path:
    """Write reference statistics (``.npz``: ``mu``, ``sigma``, plus ``metric``, ``mode`` for FID,
    ``dataset``, ``source``, ``num_images``) of the real images in ``source`` for dataset ``name``, in
    FID mode ``mode`` (default ``clean``; FD-digits has none). A ``.npz`` that already holds
    ``mu``/``sigma`` is checked and copied: its recorded mode is kept (another ``mode`` is refused); a
    publisher's file records none, so ``mode`` must say which it is. Returns the written path (default
    :func:`default_stats_path`)."""
    check_metric(metric)
    src = Path(source)
    if metric == "fd_digits" and mode is not None:
        raise UserError("FD-digits has no FID mode (its images are not resized): leave --mode out")
    premade = read_stats(src) if _premade(src) else None
    if metric == "fid":
        if premade is not None and premade.mode is not None:
            if mode is not None and check_mode(mode) != premade.mode:
                raise UserError(f"{src} records FID mode {premade.mode!r}, not {mode!r}")
            mode = premade.mode
        elif premade is not None and mode is None:
            raise UserError(f"{src} records no FID mode: say which mode it was computed in with --mode "
                            f"({', '.join(MODES)}; EDM's fid-refs: legacy_tensorflow, pytorch-fid's: "
                            "legacy_pytorch, clean-fid's: the mode in its file name)")
        mode = check_mode(mode or "clean")
    out = Path(out) if out else default_stats_path(name, metric, mode)
    if premade is not None:
        mu, sigma, n = premade.mu, premade.sigma, -1
    else:
        images = read_images(src, split=split, limit=limit)
        feats = extract_features(metric, images, batch_size=batch_size, device=device, progress=progress,
                                 mode=mode or "clean", inception_weights=inception_weights)
        mu, sigma = feature_stats(feats)
        n = len(feats)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    recorded = {"mode": mode} if mode else {}
    np.savez_compressed(tmp, mu=mu, sigma=sigma, num_images=n, metric=metric, dataset=name, source=str(src),
                        **recorded)
    tmp.replace(out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dode.eval.metrics", description="Offline metrics of dode.")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-stats", help="reference statistics of real images (.npz: mu, sigma, mode)")
    m.add_argument("--name", required=True, help="dataset name, e.g. cifar10")
    m.add_argument("--source", required=True,
                   help="image folder, .zip/.tar[.gz] of images, CIFAR python archive, .npy/.npz of "
                        "uint8 images (N,H,W,C), or a pre-made .npz with mu and sigma")
    m.add_argument("--out", default=None, help="output .npz (default: $DODE_STATS_DIR or stats/)")
    m.add_argument("--metric", default="fid", choices=METRICS)
    m.add_argument("--mode", default=None, choices=MODES,
                   help="FID mode of the features (default clean; required for a publisher's .npz)")
    m.add_argument("--inception-weights", default=None,
                   help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (mode legacy_pytorch)")
    m.add_argument("--split", default="train", help="split of a CIFAR python archive (train | test)")
    m.add_argument("--limit", type=int, default=None, help="use the first N images only")
    m.add_argument("--batch-size", type=int, default=100)
    m.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    try:
        out = make_stats(a.name, a.source, a.out, a.metric, a.split, a.limit, a.batch_size, a.device,
                         mode=a.mode, inception_weights=a.inception_weights)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
