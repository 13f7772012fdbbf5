"""dode's EDM networks against EDM's own code, and EDM pickles read without running code against the
code-executing loader (``checkpoint.trust_pickle=true``) on the same files.

The outside reference, ``data/edm_reference.pt``, holds the outputs of NVlabs/edm's ``training/networks.py``
(commit 008a4e5) for the tiny configurations of :mod:`edm_tiny` with its deterministic weights and
inputs; it was written by ``python tests/models/edm_tiny.py --edm <checkout>``."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dode.models.arch import edm_compat
from dode.models.arch.edm_networks import PRECONDS
from dode.models.checkpoints import CheckpointError, load_checkpoint
from edm_tiny import CONFIGS, REFERENCE, as_pickled, fill, inputs, onehot, write_edm_pickle, write_pickle
from tiny_checkpoints import cfg_from


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(REFERENCE, weights_only=True)


def _net(name: str) -> torch.nn.Module:
    cls, kwargs = CONFIGS[name]
    return fill(PRECONDS[cls](**kwargs)).eval()


def _cfg(name: str, path, **over):
    kw = CONFIGS[name][1]
    return cfg_from("edm-cifar10-32x32-cond-vp", path=str(path), resolution=kw["img_resolution"],
                    num_classes=kw["label_dim"], **over)


def _denoise(den, name: str) -> torch.Tensor:
    x, sigma, labels = inputs(name)
    if labels is not None:
        den.model_kwargs["class_labels"] = labels
    with torch.no_grad():
        return den(x, sigma)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_networks_equal_edm_on_the_same_weights(reference, name):
    """VP/VE/EDM/iDDPM preconditioning; DDPM++, NCSN++ (Fourier, residual encoder), skip encoder and
    decoder; ADM with several attention heads."""
    x, sigma, labels = inputs(name)
    with torch.no_grad():
        out = _net(name)(x, sigma, onehot(labels, CONFIGS[name][1]["label_dim"]))
    torch.testing.assert_close(out, reference[name], rtol=1e-5, atol=1e-5)
    assert reference[name].abs().mean() > 0.3  # the network's output matters (not D ≈ x)


@pytest.mark.parametrize("name", ["vp-ddpmpp", "ve-ncsnpp", "edm-adm", "iddpm-adm"])
def test_restricted_loader_equals_code_executing_loader(tmp_path, reference, name):
    """The same pickle read without running code and by running the code it carries (the old path)."""
    f = write_edm_pickle(tmp_path / "net.pkl", _net(name), CONFIGS[name][1])
    safe = load_checkpoint(_cfg(name, f))
    trusted = load_checkpoint(_cfg(name, f, trust_pickle=True))
    assert type(safe.net.net) is PRECONDS[CONFIGS[name][0]]  # dode's class, not one made from the file
    assert edm_compat.is_persistent(trusted.net.net)  # built by the pickle's own module source
    out = _denoise(safe, name)
    torch.testing.assert_close(out, _denoise(trusted, name), rtol=0, atol=1e-6)
    torch.testing.assert_close(out, reference[name], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_denoise(copy.deepcopy(safe), name), out, rtol=0, atol=0)


def test_the_restricted_loader_keeps_the_rest_of_the_pickle_as_data(tmp_path):
    from dode.models.arch.edm_pickle import Record, load_edm_pickle

    data = load_edm_pickle(write_edm_pickle(tmp_path / "net.pkl", _net("edm-adm"), CONFIGS["edm-adm"][1]))
    assert isinstance(data["loss_fn"], Record) and data["loss_fn"].class_name == "EDMLoss"
    assert data["loss_fn"].state["P_std"] == 1.2 and data["augment_pipe"].state["p"] == 0.12
    assert data["dataset_kwargs"] == {"path": "datasets/x.zip", "use_labels": True}


def _tampered(tmp_path, name: str, edit) -> str:
    """A pickle of config ``name`` after ``edit(state of ema, state of ema.model)``; the load error."""
    net = _net(name)
    obj = as_pickled(net, CONFIGS[name][1])
    edit(obj.meta["state"], obj.meta["state"]["_modules"]["model"].meta["state"])
    f = write_pickle(tmp_path / "bad.pkl", dict(ema=obj))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(_cfg(name, f))
    return str(e.value)


def _block(model_state: dict, key: str = "16x16_block0"):
    return model_state["_modules"]["enc"].__dict__["_modules"][key].meta["state"]


@pytest.mark.parametrize("edit,words", [
    (lambda top, model: _block(model).update(num_heads=2), ["ema.model.enc.16x16_block0", "num_heads=2"]),
    (lambda top, model: top.update(sigma_min=0.5), ["ema (VPPrecond)", "sigma_min=0.5"]),
    (lambda top, model: _block(model)["_modules"]["conv0"].meta["state"]["_parameters"].pop("bias"),
     ["ema.model.enc.16x16_block0.conv0", "tensors"]),
    (lambda top, model: _block(model)["_modules"]["conv1"].meta["state"]["_parameters"].update(
        weight=torch.zeros(3, 3, 3, 3)), ["conv1.weight", "(3, 3, 3, 3)"]),
    (lambda top, model: _block(model)["_modules"].update(extra=_block(model)["_modules"]["norm0"]), ["extra"]),
    (lambda top, model: top["_init_kwargs"].update(channel_mult=[1, 2, 2]), ["submodules"]),
    (lambda top, model: top["_init_kwargs"].update(wrong_key=1), ["cannot build VPPrecond", "wrong_key"]),
    (lambda top, model: top["_init_kwargs"].update(model_type="Other"), ["model_type='Other'", "SongUNet"]),
])
def test_a_pickle_that_does_not_fit_dodes_network_is_refused(tmp_path, edit, words):
    msg = _tampered(tmp_path, "vp-ddpmpp", edit)
    for w in words:
        assert w in msg, (w, msg)


EDM_WRITER = """
import pickle, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import dnnlib
from training import augment, loss, networks
from edm_tiny import CONFIGS, fill

for name, (cls, kwargs) in CONFIGS.items():
    net = fill(dnnlib.util.construct_class_by_name(class_name=f"training.networks.{cls}", **kwargs)).eval()
    data = dict(ema=net, loss_fn=loss.EDMLoss(), augment_pipe=augment.AugmentPipe(p=0.12, xflip=1e8),
                dataset_kwargs=dict(dnnlib.EasyDict(path="x.zip", use_labels=True)))
    with open(f"{sys.argv[3]}/{name}.pkl", "wb") as f:
        pickle.dump(data, f)
"""


@pytest.mark.skipif(not os.environ.get("DODE_EDM_SOURCE"), reason="set DODE_EDM_SOURCE to a checkout of NVlabs/edm")
def test_pickles_written_by_edm_itself(tmp_path, reference):
    """Pickles written by EDM's own code (in another process, from the checkout $DODE_EDM_SOURCE), read
    here without running that code, give EDM's outputs, as the code-executing path does."""
    here = Path(__file__).resolve().parent
    subprocess.run([sys.executable, "-c", EDM_WRITER, os.environ["DODE_EDM_SOURCE"], str(here), str(tmp_path)],
                   check=True)
    for name in CONFIGS:
        safe = load_checkpoint(_cfg(name, tmp_path / f"{name}.pkl"))
        trusted = load_checkpoint(_cfg(name, tmp_path / f"{name}.pkl", trust_pickle=True))
        out = _denoise(safe, name)
        torch.testing.assert_close(out, reference[name], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out, _denoise(trusted, name), rtol=1e-5, atol=1e-5)
