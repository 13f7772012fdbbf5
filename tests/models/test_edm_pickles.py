"""EDM network pickles: what the default loader refuses (anything that is not EDM's networks, before it
runs), and the code-executing path of ``checkpoint.trust_pickle=true`` (dode.models.arch.edm_compat) on
pickles written here in EDM's persistent format from a stand-in of EDM's modules (then removed, as on
a machine without EDM)."""
from __future__ import annotations

import copy
import os
import pickle
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dode.models.checkpoints import CheckpointError, load_checkpoint
from edm_tiny import Persistent, write_pickle
from tiny_checkpoints import cfg_from


# A stand-in for EDM's torch_utils.persistence, written for this test: the same pickle format
# (a call to torch_utils.persistence._reconstruct_persistent_obj(meta) with the module's source).
FAKE_PERSISTENCE = '''
import copy, inspect, sys
_version = 6
_decorators = set()

def persistent_class(orig_class):
    if orig_class in _decorators:
        return orig_class
    src = inspect.getsource(sys.modules[orig_class.__module__])

    class Decorator(orig_class):
        _orig_module_src = src
        _orig_class_name = orig_class.__name__

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)

        def __reduce__(self):
            fields = list(super().__reduce__())
            fields += [None] * max(3 - len(fields), 0)
            if fields[0] is not _reconstruct_persistent_obj:
                meta = dict(type="class", version=_version, module_src=self._orig_module_src,
                            class_name=self._orig_class_name, state=fields[2])
                fields[0], fields[1], fields[2] = _reconstruct_persistent_obj, (meta,), None
            return tuple(fields)

    Decorator.__name__ = orig_class.__name__
    Decorator.__module__ = orig_class.__module__
    _decorators.add(Decorator)
    return Decorator

def _reconstruct_persistent_obj(meta):
    raise RuntimeError("the test writer cannot read pickles")
'''

FAKE_DNNLIB_UTIL = '''
class EasyDict(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name)
    def __setattr__(self, name, value):
        self[name] = value
'''

# A tiny EDM-style network module: EDM preconditioning (Karras et al. 2022, Table 1) around a small
# conv net, one-hot class labels, plus an augmentation-pipe-like class that uses torch_utils.misc.
NET_SOURCE = '''
import numpy as np
import torch
from torch_utils import persistence
from torch_utils import misc


@persistence.persistent_class
class TinyNet(torch.nn.Module):
    def __init__(self, img_channels, label_dim, width=16):
        super().__init__()
        self.map_noise = torch.nn.Linear(1, width)
        self.map_label = torch.nn.Linear(label_dim, width, bias=False) if label_dim else None
        self.conv_in = torch.nn.Conv2d(img_channels, width, 3, padding=1)
        self.conv_out = torch.nn.Conv2d(width, img_channels, 3, padding=1)

    def forward(self, x, noise_labels, class_labels):
        emb = self.map_noise(noise_labels.reshape(-1, 1))
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels)
        return self.conv_out(torch.nn.functional.silu(self.conv_in(x) + emb[:, :, None, None]))


@persistence.persistent_class
class EDMPrecond(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim=0, use_fp16=False, sigma_data=0.5, **kwargs):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16, self.sigma_data = use_fp16, sigma_data
        self.sigma_min, self.sigma_max = 0, float("inf")
        self.model = TinyNet(img_channels, label_dim, **kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        F_x = self.model(c_in * x, c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return c_skip * x + c_out * F_x.to(torch.float32)


@persistence.persistent_class
class AugmentLike:
    def __init__(self, p=0.12):
        self.p = float(p)

    def eye(self):
        return misc.constant(np.eye(3))
'''


def _write_edm_pickle(tmp_path: Path, label_dim: int, x, sigma, labels, resolution: int = 8):
    """Build the network from real source files with the test's own persistence module, pickle it in
    EDM's format, compute the live original's output D(x, σ, one-hot labels), then remove every trace
    of the source (files, sys.path, sys.modules). Returns the pickle path and that output."""
    src = tmp_path / "edm_src"
    for rel, text in {"torch_utils/__init__.py": "", "torch_utils/persistence.py": FAKE_PERSISTENCE,
                      "torch_utils/misc.py": "import torch\ndef constant(v, **kw):\n    return torch.as_tensor(v)\n",
                      "dnnlib/__init__.py": "from .util import EasyDict\n", "dnnlib/util.py": FAKE_DNNLIB_UTIL,
                      "edm_training/__init__.py": "", "edm_training/networks.py": NET_SOURCE}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(textwrap.dedent(text))
    names = ("torch_utils", "torch_utils.persistence", "torch_utils.misc", "dnnlib", "dnnlib.util",
             "edm_training", "edm_training.networks")
    assert not any(n in sys.modules for n in names)
    sys.path.insert(0, str(src))
    try:
        import dnnlib  # the test's stand-in, from src
        from edm_training import networks

        torch.manual_seed(0)
        net = networks.EDMPrecond(img_resolution=resolution, img_channels=3, label_dim=label_dim, width=16).eval()
        data = dict(ema=net, augment_pipe=networks.AugmentLike(),
                    dataset_kwargs=dnnlib.EasyDict(path="datasets/x.zip", use_labels=bool(label_dim)))
        f = tmp_path / "net.pkl"
        with open(f, "wb") as fh:
            pickle.dump(data, fh)
        onehot = torch.nn.functional.one_hot(labels, label_dim).float() if labels is not None else None
        with torch.no_grad():
            want = net(x, sigma.float(), onehot)
    finally:
        sys.path.remove(str(src))
        for n in names:
            sys.modules.pop(n, None)
    shutil.rmtree(src)
    raw = f.read_bytes()
    assert b"torch_utils.persistence" in raw and b"_reconstruct_persistent_obj" in raw and b"dnnlib.util" in raw
    return f, want


@pytest.mark.parametrize("name,label_dim", [("edm-cifar10-32x32-cond-vp", 10), ("edm-ffhq-64x64-uncond-vp", 0)])
def test_edm_persistent_pickle_with_trust_pickle(tmp_path, name, label_dim):
    """A network dode does not implement (TinyNet, made of torch.nn layers): refused by default, without
    running its code; loaded by running it with trust_pickle=true."""
    x = torch.randn(3, 3, 8, 8)
    sigma = torch.tensor([0.002, 1.0, 80.0], dtype=torch.float64)
    labels = torch.tensor([1, 9, 4]) if label_dim else None
    f, want = _write_edm_pickle(tmp_path, label_dim, x, sigma, labels)
    with pytest.raises(CheckpointError, match="names torch.nn.modules.linear.Linear.*nothing was run.*trust_pickle=true"):
        load_checkpoint(cfg_from(name, path=str(f), resolution=8))
    with pytest.raises(CheckpointError, match="trust_pickle must be true or false, got 'yes'"):
        load_checkpoint(cfg_from(name, path=str(f), resolution=8, trust_pickle="yes"))
    den = load_checkpoint(cfg_from(name, path=str(f), resolution=8, trust_pickle=True))
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules  # registered only while loading
    assert (den.num_classes, den.resolution, den.channels, den.prediction) == (label_dim, 8, 3, "x0")
    assert den.default_grid == "edm" and (den.sigma_min, den.sigma_max) == (0.002, 80.0)
    if label_dim:
        den.model_kwargs["class_labels"] = labels
    with torch.no_grad():
        torch.testing.assert_close(den(x, sigma), want, rtol=0, atol=0)
        torch.testing.assert_close(copy.deepcopy(den)(x, sigma), want, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="num_classes"):  # the file is not what the config says
        load_checkpoint(cfg_from(name, path=str(f), resolution=8, num_classes=label_dim + 3, trust_pickle=True))


def test_edm_compat_round_trip_and_module_restore(tmp_path):
    """dode's own persistent_class writes the same format it reads; real modules are put back."""
    from dode.models.arch import edm_compat

    sentinel = object()
    sys.modules["dnnlib"] = sentinel  # pretend a real dnnlib is imported
    try:
        with edm_compat.compat_modules():
            assert sys.modules["dnnlib"] is not sentinel
            from torch_utils import persistence
            assert persistence.persistent_class is edm_compat.persistent_class
            mod = edm_compat.module_from_source(textwrap.dedent(NET_SOURCE))
            net = mod.EDMPrecond(img_resolution=8, img_channels=3, width=16)
            blob = pickle.dumps(dict(ema=net))
        assert sys.modules["dnnlib"] is sentinel
    finally:
        sys.modules.pop("dnnlib", None)
    back = edm_compat.load_persistent_pickle(__import__("io").BytesIO(blob))["ema"]
    x, s = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        torch.testing.assert_close(back(x, s), net(x, s), rtol=0, atol=0)
    assert back.init_kwargs.width == 16


def test_edm_pickle_needing_missing_names_fails_clearly(tmp_path):
    blob = b"\x80\x04\x95\x1b\x00\x00\x00\x00\x00\x00\x00\x8c\x0ftorch_utils.ops\x94\x8c\x04gone\x94\x93\x94."
    f = tmp_path / "bad.pkl"
    f.write_bytes(blob)
    with pytest.raises(CheckpointError, match="torch_utils.ops.gone"):
        load_checkpoint(cfg_from("edm-cifar10-32x32-uncond-vp", path=str(f)))
    f.write_bytes(pickle.dumps({"ema": 3}))
    with pytest.raises(CheckpointError, match="not an EDM network pickle"):
        load_checkpoint(cfg_from("edm-cifar10-32x32-uncond-vp", path=str(f)))


# ------------------------------------------------------------------------ what the default refuses
class Payload:
    """Unpickled, runs ``fn(*args)``: what a malicious pickle does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _storage_payload(cmd: str):
    """A 'tensor storage' whose bytes are a torch.save file that runs ``cmd``."""
    buf = __import__("io").BytesIO()
    torch.save(Payload(os.system, cmd), buf, _use_new_zipfile_serialization=False)
    return Payload(torch.storage._load_from_bytes, buf.getvalue())


@pytest.mark.parametrize("make,named", [
    (lambda cmd: {"ema": Payload(os.system, cmd)}, f"{os.system.__module__}.system"),
    (lambda cmd: {"ema": Payload(eval, f"__import__('os').system({cmd!r})")}, "builtins.eval"),
    (lambda cmd: {"ema": Persistent("EDMPrecond", {"_init_kwargs": Payload(os.system, cmd)})},
     f"{os.system.__module__}.system"),
    (lambda cmd: {"ema": Persistent("EDMPrecond", {"w": _storage_payload(cmd)})}, "not plain tensor data"),
    (lambda cmd: {"ema": Persistent("TinyNet", {"src": cmd})}, "persistent class 'TinyNet', which is not one of EDM's"),
])
def test_a_malicious_pickle_is_refused_before_its_payload_runs(tmp_path, make, named):
    marker = tmp_path / "PWNED"
    f = write_pickle(tmp_path / "evil.pkl", make(f"touch {marker}"))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(cfg_from("edm-cifar10-32x32-uncond-vp", path=str(f)))
    msg = str(e.value)
    assert named in msg and str(f) in msg and "\n" not in msg, msg
    assert "weights_only=False" not in msg
    assert not marker.exists()


def test_the_source_a_pickle_carries_runs_only_with_trust_pickle(tmp_path):
    marker = tmp_path / "RAN"
    src = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
    f = write_pickle(tmp_path / "src.pkl", {"ema": Persistent("EDMPrecond", {}, module_src=src)})
    with pytest.raises(CheckpointError, match="cannot build EDMPrecond"):
        load_checkpoint(cfg_from("edm-cifar10-32x32-uncond-vp", path=str(f)))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="defines no class 'EDMPrecond'"):
        load_checkpoint(cfg_from("edm-cifar10-32x32-uncond-vp", path=str(f), trust_pickle=True))
    assert marker.exists()  # the old path runs the file's code: hence the opt-in


EDM2_SOURCE = '''
import torch
from torch_utils import persistence


@persistence.persistent_class
class MPFourier(torch.nn.Module):
    def __init__(self, num_channels):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels))


@persistence.persistent_class
class Precond(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.emb = MPFourier(8)
'''


def test_an_edm2_pickle_is_refused_by_both_paths(tmp_path):
    from dode.models.arch import edm_compat

    with edm_compat.compat_modules():
        net = edm_compat.module_from_source(EDM2_SOURCE).Precond(img_resolution=32, img_channels=3, label_dim=0)
        f = tmp_path / "edm2.pkl"
        f.write_bytes(pickle.dumps(dict(ema=net)))
    for trust in (False, True):
        with pytest.raises(CheckpointError, match="EDM2 layout not supported; .*(MPFourier|Precond)"):
            load_checkpoint(cfg_from("edm-cifar10-32x32-uncond-vp", path=str(f), trust_pickle=trust))
