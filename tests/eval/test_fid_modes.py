"""FID modes by name: legacy_tensorflow against an independent TF1 resize_bilinear, legacy_pytorch
against clean-fid's pipeline, reference statistics that record (or do not record) a mode."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dode.errors import InvalidChoice, UserError
from dode.eval import metrics
from dode.eval.data import load_dataset
from dode.eval.resize import tf1_resize_bilinear


def tf1_resize_reference(images: np.ndarray, out: int = 299) -> np.ndarray:
    """TF1 ``resize_bilinear(align_corners=False, half_pixel_centers=False)`` of uint8 ``(N, H, W, C)``,
    written from TF's documented mapping, one output pixel at a time, in float32 as TF1's CPU kernel:
    scale = in/out, source s = i·scale, taps ⌊s⌋ and min(⌈s⌉, in − 1), weight s − ⌊s⌋, rows and
    columns interpolated as top/bottom lerps."""
    def taps(n_in):
        scale = np.float32(n_in) / np.float32(out)
        rows = []
        for i in range(out):
            s = np.float32(i) * scale
            lo = int(np.floor(s))
            rows.append((lo, min(int(np.ceil(s)), n_in - 1), np.float32(s - np.float32(lo))))
        return rows

    src = images.astype(np.float32)
    res = np.empty((len(images), out, out, images.shape[3]), np.float32)
    xs = taps(images.shape[2])
    for y, (y0, y1, wy) in enumerate(taps(images.shape[1])):
        for x, (x0, x1, wx) in enumerate(xs):
            top = src[:, y0, x0] + (src[:, y0, x1] - src[:, y0, x0]) * wx
            bottom = src[:, y1, x0] + (src[:, y1, x1] - src[:, y1, x0]) * wx
            res[:, y, x] = top + (bottom - top) * wy
    return res


@lru_cache(maxsize=None)
def _images(kind: str) -> np.ndarray:
    """Real uint8 digits (8×8, grey as RGB) and random images of a few sizes, up- and down-sizing."""
    rng = np.random.default_rng(3)
    if kind == "digits":
        return np.repeat(load_dataset("digits", "test").uint8()[:3], 3, axis=3)
    h, w = {"32x32": (32, 32), "20x48": (20, 48), "320x310": (320, 310), "24x333": (24, 333)}[kind]
    return rng.integers(0, 256, size=(2, h, w, 3), dtype=np.uint8)


SIZES = ("digits", "32x32", "20x48", "320x310", "24x333")


@pytest.mark.parametrize("kind", SIZES)
def test_tf1_resize_equals_the_reference(kind):
    imgs = _images(kind)
    ours = tf1_resize_bilinear(torch.from_numpy(imgs).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert ours.dtype == np.float32 and ours.shape[1:3] == (299, 299)
    np.testing.assert_array_equal(ours, tf1_resize_reference(imgs))


@pytest.mark.parametrize("kind", ("digits", "20x48", "320x310"))
def test_tf1_resize_is_nvidia_torchscript_grid_sample(kind):
    """NVIDIA's full TorchScript resizes with affine_grid + grid_sample (border padding) shifted so
    that output i reads i·W/299: the same map up to the float32 rounding of its normalised grid
    coordinates (≈ 1e-4 pixel, times neighbour differences up to 255: < 0.05 of a grey level; a
    half-pixel-centre map would differ by tens)."""
    x = torch.from_numpy(_images(kind)).permute(0, 3, 1, 2).to(torch.float32)
    n, c, h, w = x.shape
    theta = torch.eye(2, 3).repeat(n, 1, 1)
    theta[:, 0, 2] += 1 / w - 1 / 299
    theta[:, 1, 2] += 1 / h - 1 / 299
    grid = F.affine_grid(theta, [n, c, 299, 299], align_corners=False)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    np.testing.assert_allclose(tf1_resize_bilinear(x).numpy(), ref.numpy(), rtol=0, atol=0.05)


def test_legacy_tensorflow_features_equal_inception_of_the_reference_resize():
    imgs = [_images(k) for k in ("digits", "32x32", "20x48", "320x310")]
    net = metrics.feature_extractor("fid", mode="legacy_tensorflow")
    for batch in imgs:
        ours = metrics.extract_features("fid", batch, mode="legacy_tensorflow", batch_size=2)
        x = torch.from_numpy(tf1_resize_reference(batch).transpose(0, 3, 1, 2).copy())
        with torch.no_grad():
            ref = net.body((x - 128) / 128).reshape(len(batch), 2048).numpy()
        assert ours.shape == (len(batch), 2048) and float(np.abs(ref).max()) > 0.1
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
    grey = load_dataset("digits", "test").uint8()[:3]  # (N, 8, 8, 1): repeated to RGB as EDM does
    np.testing.assert_array_equal(metrics.extract_features("fid", grey, mode="legacy_tensorflow"),
                                  metrics.extract_features("fid", imgs[0], mode="legacy_tensorflow"))


def _random_pytorch_fid_weights(path):
    from dode.eval.inception import build_pytorch_fid_inception

    torch.manual_seed(0)
    net = build_pytorch_fid_inception()
    for mod in net.modules():  # keep activations O(1) through the depth
        if isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return net.state_dict()


@pytest.mark.filterwarnings("ignore::UserWarning")  # clean-fid passes torchvision the old `pretrained`
def test_legacy_pytorch_equals_clean_fid_pipeline_with_the_same_weights(tmp_path, monkeypatch):
    import cleanfid.inception_pytorch as ip
    from cleanfid.resize import build_resizer

    state = _random_pytorch_fid_weights(tmp_path / "w.pth")
    monkeypatch.setattr(ip, "load_state_dict_from_url", lambda *a, **k: state)  # clean-fid's own net, local
    ref_net = ip.InceptionV3(output_blocks=[3], resize_input=False).eval()
    imgs = _images("20x48")
    resize = build_resizer("legacy_pytorch")
    x = torch.from_numpy(np.stack([resize(im) for im in imgs]).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        ref = ref_net(x / 255)[0].reshape(len(imgs), 2048).numpy()
    ours = metrics.extract_features("fid", imgs, mode="legacy_pytorch", inception_weights=str(tmp_path / "w.pth"))
    assert float(np.abs(ref).max()) > 0.1
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_legacy_pytorch_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    missing = tmp_path / "pt_inception.pth"
    with pytest.raises(UserError, match="pytorch-fid") as e:
        metrics.extract_features("fid", _images("32x32"), mode="legacy_pytorch", inception_weights=str(missing))
    assert str(missing) in str(e.value) and "https://github.com/mseitzer/pytorch-fid" in str(e.value)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # null: torch hub's cache, here empty
    with pytest.raises(UserError, match="pt_inception-2015-12-05-6726825d.pth"):
        metrics.feature_extractor("fid", mode="legacy_pytorch")
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match="state dict"):
        metrics.feature_extractor("fid", mode="legacy_pytorch", inception_weights=str(bad))


def test_unknown_mode_lists_the_valid_ones(tmp_path):
    with pytest.raises(InvalidChoice, match="clean, legacy_tensorflow, legacy_pytorch"):
        metrics.compute_metric("fid", _images("32x32"), mode="tensorflow", dataset="cifar10")
    with pytest.raises(InvalidChoice, match="valid modes"):
        metrics.extract_features("fid", _images("32x32"), mode="tf1")


def _gaussian(seed, d=8, n=50):
    feats = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return feats, *metrics.feature_stats(feats)


def test_publisher_npz_loads_and_the_mode_is_assumed(tmp_path):
    feats, mu, sigma = _gaussian(0)
    path = tmp_path / "cifar10-32x32.npz"  # EDM fid-refs / pytorch-fid / clean-fid layout: mu, sigma only
    np.savez(path, mu=mu, sigma=sigma)
    ref = metrics.reference("fid", ref_stats=str(path), mode="legacy_tensorflow")
    assert ref.mode is None and ref.path == path
    np.testing.assert_array_equal(ref.sigma, sigma)
    res = metrics.evaluate_features("fid", feats, ref_stats=str(path), mode="legacy_tensorflow")
    assert res.value == pytest.approx(0.0, abs=1e-6) and res.feature_dim == 8
    assert res.as_dict()["mode"] == "legacy_tensorflow" and res.as_dict()["mode_assumed"] is True
    # FD-digits results carry no mode (their stored metric files are unchanged)
    digits = metrics.evaluate_features("fd_digits", metrics.extract_features(
        "fd_digits", load_dataset("digits", "half0").uint8()))
    assert digits.mode is None and set(digits.as_dict()) == {"value", "mu", "sigma", "feature_dim"}


def test_mode_mismatch_is_refused_naming_both(tmp_path, monkeypatch):
    feats, mu, sigma = _gaussian(1)
    path = tmp_path / "ref.npz"
    np.savez(path, mu=mu, sigma=sigma, mode="clean")
    res = metrics.evaluate_features("fid", feats, ref_stats=str(path))  # clean vs clean: fine, not assumed
    assert res.mode == "clean" and res.mode_assumed is False
    with pytest.raises(UserError, match="'clean'.*'legacy_tensorflow'"):
        metrics.compute_metric("fid", _images("32x32"), ref_stats=str(path), mode="legacy_tensorflow")
    # the default statistics file has the mode in its name
    monkeypatch.setenv(metrics.STATS_ENV, str(tmp_path))
    with pytest.raises(UserError, match="cifar10_fid_legacy_tensorflow.npz"):
        metrics.reference_stats("fid", dataset="cifar10", mode="legacy_tensorflow")


def test_make_stats_records_the_mode_and_copies_publisher_files(tmp_path):
    _, mu, sigma = _gaussian(2)
    pub = tmp_path / "fid_stats_cifar10_train.npz"
    np.savez(pub, mu=mu, sigma=sigma)
    with pytest.raises(UserError, match="--mode"):
        metrics.make_stats("cifar10", pub, tmp_path / "a.npz")
    out = metrics.make_stats("cifar10", pub, tmp_path / "a.npz", mode="legacy_pytorch")
    assert metrics.read_stats(out).mode == "legacy_pytorch"
    with pytest.raises(UserError, match="'legacy_pytorch', not 'clean'"):
        metrics.make_stats("cifar10", out, tmp_path / "b.npz", mode="clean")
    assert metrics.read_stats(metrics.make_stats("cifar10", out, tmp_path / "b.npz")).mode == "legacy_pytorch"
    assert metrics.main(["make-stats", "--name", "cifar10", "--source", str(pub), "--mode", "legacy_tensorflow",
                         "--out", str(tmp_path / "c.npz")]) == 0
    assert metrics.read_stats(tmp_path / "c.npz").mode == "legacy_tensorflow"
    imgs = tmp_path / "imgs.npy"
    np.save(imgs, load_dataset("digits", "test").uint8()[:20])
    with pytest.raises(UserError, match="no FID mode"):
        metrics.make_stats("digits", imgs, tmp_path / "d.npz", metric="fd_digits", mode="clean")
    assert metrics.read_stats(metrics.make_stats("digits", imgs, tmp_path / "d.npz", metric="fd_digits")).mode is None


@pytest.mark.slow
def test_legacy_tensorflow_fid_end_to_end(tmp_path):
    """make-stats in legacy_tensorflow mode, then FID of the same images ≈ 0, refused in clean mode."""
    imgs = _images("32x32").repeat(6, axis=0)
    imgs[2:] = np.random.default_rng(4).integers(0, 256, size=imgs[2:].shape, dtype=np.uint8)
    np.save(tmp_path / "imgs.npy", imgs)
    out = metrics.make_stats("toy", tmp_path / "imgs.npy", tmp_path / "toy.npz", mode="legacy_tensorflow",
                             progress=False)
    assert metrics.compute_metric("fid", imgs, ref_stats=str(out), mode="legacy_tensorflow") == \
        pytest.approx(0.0, abs=1e-2)
    with pytest.raises(UserError, match="legacy_tensorflow"):
        metrics.compute_metric("fid", imgs, ref_stats=str(out))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_feature_moments_of_fid_equal_the_statistics_of_all_features(tmp_path):
    """The runner's route (float64 moments summed batch by batch, as over processes) gives μ, Σ and
    the FID of np.mean / np.cov on all features at once, in FID mode legacy_pytorch."""
    _random_pytorch_fid_weights(tmp_path / "w.pth")
    imgs = np.random.default_rng(5).integers(0, 256, size=(5, 20, 48, 3), dtype=np.uint8)
    cfg = {"mode": "legacy_pytorch", "inception_weights": str(tmp_path / "w.pth"), "batch_size": 2}
    feats = metrics.extract_features("fid", imgs, **cfg)
    mom = metrics.feature_moments("fid", imgs[:3], **cfg) + metrics.feature_moments("fid", imgs[3:], **cfg)
    mu, sigma = mom.stats()
    ref_mu, ref_sigma = metrics.feature_stats(feats)
    assert mom.count == len(imgs) and float(np.abs(ref_sigma).max()) > 1e-3
    np.testing.assert_allclose(mu, ref_mu, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-7, atol=1e-9 * float(np.abs(ref_sigma).max()))


def test_clean_resize_in_worker_processes_is_byte_identical_to_the_serial_path(monkeypatch):
    """The clean mode's PIL resize in DataLoader workers gives the bytes of the serial resize of every
    batch (a ragged last one too), and the same features in the same order."""
    from dode.eval import features
    from dode.eval.resize import pil_resize_bicubic, resized_batches

    imgs = np.concatenate([_images("32x32"), _images("32x32")[::-1], _images("32x32")[:1]])  # 5 images
    serial = [pil_resize_bicubic(torch.from_numpy(np.ascontiguousarray(imgs[i:i + 2].transpose(0, 3, 1, 2))))
              for i in range(0, 5, 2)]
    pooled = list(resized_batches(imgs, 2, "clean", workers=2))
    assert [b.shape[0] for b in pooled] == [2, 2, 1] and serial[0].dtype == pooled[0].dtype == torch.float32
    assert all(a.numpy().tobytes() == b.numpy().tobytes() for a, b in zip(serial, pooled))
    assert float(serial[0].std()) > 1.0  # real content, not zeros

    monkeypatch.setattr(features, "feature_extractor", lambda *a, **k: lambda x: x.mean(dim=(2, 3)) + x[:, :, 7, 9])
    one, two = (np.concatenate([f.numpy() for f in features.feature_batches("fid", imgs, 2, workers=w)])
                for w in (0, 2))
    assert one.shape == (5, 3) and one.tobytes() == two.tobytes()
