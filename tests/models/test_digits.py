"""The embedded digits dataset, its two diffusion models and the FD-digits classifier."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import dode
from dode.eval.data import digits_split_indices, from_uint8, load_dataset, to_uint8
from dode.errors import UserError
from dode.models import digits as nets

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED_NFE = (5, 10)  # docs/digits.md: the runner's default NFE on digits
SOLVERS_AT = {"ddim": (5, 10), "dpm3": (5, 10), "ipndm": (5, 10), "heun": (5, 9), "dpmpp3m": (5, 10)}


@pytest.fixture(scope="module")
def models():
    return {name: nets.load_digits_model(name) for name in nets.MODELS}


def test_dataset_shape_range_and_levels():
    d = load_dataset("digits")
    assert d.images.shape == (1797, 1, 8, 8) and d.images.dtype == torch.float32
    assert float(d.images.min()) == -1.0 and float(d.images.max()) == 1.0
    levels = torch.unique(d.images)
    assert len(levels) == 17 and torch.equal(levels, torch.arange(17, dtype=torch.float32) / 8 - 1)
    assert d.labels.shape == (1797,) and set(d.labels.tolist()) == set(range(10))
    assert (d.resolution, d.channels) == (8, 1)


def test_fixed_documented_split():
    tr, te = digits_split_indices("train"), digits_split_indices("test")
    h0, h1 = digits_split_indices("half0"), digits_split_indices("half1")
    assert (len(tr), len(te), len(h0), len(h1)) == (1497, 300, 898, 899)
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(1797))
    assert sorted(np.concatenate([h0, h1]).tolist()) == list(range(1797))
    # pinned: numpy.random.default_rng(0).permutation(1797) (docs/digits.md)
    assert np.array_equal(tr, np.random.default_rng(0).permutation(1797)[:1497])
    d = load_dataset("digits", "test")
    assert torch.equal(d.images, load_dataset("digits").images[torch.from_numpy(te)])
    with pytest.raises(UserError, match="unknown split"):
        load_dataset("digits", "val")
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset("mnist")


def test_uint8_round_trip():
    d = load_dataset("digits")
    u = to_uint8(d.images)
    assert u.shape == (1797, 8, 8, 1) and u.dtype == np.uint8
    assert np.array_equal(to_uint8(from_uint8(u)), u)
    assert u.min() == 0 and u.max() == 255
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 5.0, float("nan")]).reshape(1, 1, 2, 3)
    assert to_uint8(x).flatten().tolist() == [0, 0, 128, 255, 255, 0]
    assert from_uint8(np.full((1, 2, 2, 3), 255, np.uint8)).shape == (1, 3, 2, 2)
    with pytest.raises(ValueError):
        from_uint8(np.zeros((1, 2, 2, 3), np.float32))


def test_checkpoints_load_with_their_attributes(models):
    edm, ddpm = models["digits-edm"], models["digits-ddpm"]
    for den in (edm, ddpm):
        assert (den.num_classes, den.resolution, den.channels) == (0, 8, 1)
    assert edm.prediction == "x0" and (edm.sigma_min, edm.sigma_max) == (0.002, 80.0)
    assert edm.default_grid == "edm"
    assert ddpm.prediction == "eps" and ddpm.default_grid == "time_uniform" and ddpm.schedule.T == 1000
    for name in nets.MODELS + (nets.CLASSIFIER,):
        size = nets.asset_path(name).stat().st_size
        assert size < 2_000_000, (name, size)


def test_checkpoint_configs_and_loader_registry():
    from dode.models.checkpoints import load_checkpoint

    for name in nets.MODELS:
        cfg = yaml.safe_load((ROOT / "conf" / "checkpoint" / f"{name}.yaml").read_text())
        assert cfg["name"] == name and cfg["loader"] == "digits" and cfg["path"] is None
        assert (cfg["resolution"], cfg["channels"], cfg["num_classes"]) == (8, 1, 0)
        den = load_checkpoint(cfg)
        assert den.prediction == cfg["prediction"] and den.default_grid == cfg["default_grid"]
    ds = yaml.safe_load((ROOT / "conf" / "dataset" / "digits.yaml").read_text())
    assert (ds["name"], ds["resolution"], ds["channels"], ds["num_samples"]) == ("digits", 8, 1, 10000)
    with pytest.raises(UserError, match="train_digits.py"):
        nets.load_digits_model("digits-edm", "/nonexistent/digits-edm.pt")


def test_networks_are_batch_invariant_and_deterministic(models):
    """D(x)[:k] == D(x[:k]) bit for bit (batches are padded to MIN_ROWS rows, see docs/digits.md)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 1, 8, 8, generator=g)
    for den in models.values():
        for sigma in (0.05, 60.0):
            s = torch.full((300,), sigma, dtype=torch.float64)
            full = den(x * sigma, s)
            assert torch.isfinite(full).all()
            for k in (1, 7, 33):
                assert torch.equal(den(x[:k] * sigma, s[:k]), full[:k]), (den.name, sigma, k)
            assert torch.equal(den(x[150:] * sigma, s[150:]), full[150:])
        assert all(nets.batch_invariant(den, n=200, ks=(1, 5, 16, 40, 199)).values()), den.name
        assert torch.equal(nets.load_digits_model(den.name)(x, torch.ones(300, dtype=torch.float64)),
                           den(x, torch.ones(300, dtype=torch.float64)))


def test_samples_are_finite_at_every_documented_nfe(models):
    z = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for den in models.values():
        for solver, nfes in SOLVERS_AT.items():
            for nfe in nfes:
                x = dode.sample(den, z, solver=solver, nfe=nfe)
                assert x.shape == z.shape and torch.isfinite(x).all(), (den.name, solver, nfe)
                assert float(x.abs().max()) < 100, (den.name, solver, nfe)  # (Heun at NFE 5 overshoots)


def test_samples_look_like_digits(models):
    """A quick sanity check of the models (the full figures: scripts/digits_quality.py)."""
    clf = nets.load_classifier()
    z = torch.randn(200, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    for den in models.values():
        x = dode.sample(den, z, solver="dpm3", nfe=10)
        p = torch.softmax(clf(from_uint8(to_uint8(x))), 1)
        assert float((p.max(1).values >= 0.9).float().mean()) > 0.75, den.name
        assert len(torch.unique(p.argmax(1))) == 10, den.name


def test_classifier_held_out_accuracy():
    """Stated figure: 99.7 % (299 of 300) on the held-out test split."""
    clf = nets.load_classifier()
    te = load_dataset("digits", "test")
    with torch.no_grad():
        acc = float((clf(from_uint8(te.uint8())).argmax(1) == te.labels).float().mean())
    assert acc >= 0.99


@pytest.mark.slow
def test_reference_samplers_finite(models):
    """The reference-quality samplers of docs/digits.md: 200-step Heun and 1000-step DDIM."""
    z = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(dode.sample(models["digits-edm"], z, solver="heun", nfe=399)).all()
    assert torch.isfinite(dode.sample(models["digits-ddpm"], z, solver="ddim", nfe=1000)).all()
