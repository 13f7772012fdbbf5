"""Tiny EDM networks for the EDM pickle tests: their configurations, deterministic weights and inputs,
and a writer of EDM's persistent pickle format that needs no EDM repository.

``python tests/models/edm_tiny.py --edm PATH`` (PATH: a checkout of github.com/NVlabs/edm) computes
the outputs of EDM's own ``training/networks.py`` for :data:`CONFIGS` with :func:`fill` weights on
:func:`inputs`, and writes them to ``tests/models/data/edm_reference.pt`` (the outside reference of
``test_edm_networks.py``; nothing of EDM is stored).
"""
from __future__ import annotations

import argparse
import math
import pickle
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

REFERENCE = Path(__file__).resolve().parent / "data" / "edm_reference.pt"
BATCH = 4

# name → (class name, constructor keyword arguments); each one exercises other branches of EDM's code
CONFIGS = {
    "vp-ddpmpp": ("VPPrecond", dict(img_resolution=16, img_channels=3, label_dim=10, model_type="SongUNet",
                                    embedding_type="positional", encoder_type="standard", decoder_type="standard",
                                    channel_mult_noise=1, resample_filter=[1, 1], model_channels=16,
                                    channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.1,
                                    augment_dim=9)),
    "ve-ncsnpp": ("VEPrecond", dict(img_resolution=16, img_channels=3, label_dim=0, model_type="SongUNet",
                                    embedding_type="fourier", encoder_type="residual", decoder_type="standard",
                                    channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=16,
                                    channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.1)),
    "edm-songunet-skip": ("EDMPrecond", dict(img_resolution=16, img_channels=3, label_dim=0, model_type="SongUNet",
                                             encoder_type="skip", decoder_type="skip", model_channels=16,
                                             channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[4])),
    "edm-adm": ("EDMPrecond", dict(img_resolution=16, img_channels=3, label_dim=10, model_type="DhariwalUNet",
                                   model_channels=64, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8],
                                   dropout=0.1)),
    "iddpm-adm": ("iDDPMPrecond", dict(img_resolution=8, img_channels=3, label_dim=0, model_type="DhariwalUNet",
                                       model_channels=64, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[4])),
}


def fill(net: nn.Module) -> nn.Module:
    """Give every parameter (and the Fourier ``freqs`` buffers) deterministic values
    ``sin(0.7 k + 1.3 i + 0.1)`` (k: element, i: rank of the name), scaled by √(3/fan_in) for weights."""
    tensors = dict(net.named_parameters())
    tensors.update((n, b) for n, b in net.named_buffers() if n.endswith("freqs"))
    with torch.no_grad():
        for i, name in enumerate(sorted(tensors)):
            t = tensors[name]
            k = torch.arange(t.numel(), dtype=torch.float64)
            v = torch.sin(0.7 * k + 1.3 * i + 0.1).reshape(t.shape)
            scale = 16.0 if name.endswith("freqs") else math.sqrt(3 * t.shape[0] / t.numel()) if t.ndim > 1 else 0.2
            t.copy_(v * scale)
    return net


def inputs(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(x, σ, integer class labels or None)`` for config ``name``: deterministic, batch :data:`BATCH`."""
    kw = CONFIGS[name][1]
    r, c = kw["img_resolution"], kw["img_channels"]
    k = torch.arange(BATCH * c * r * r, dtype=torch.float64)
    x = (torch.sin(0.37 * k) + 0.5 * torch.cos(0.11 * k)).reshape(BATCH, c, r, r).float()
    sigma = torch.tensor([0.002, 0.3, 5.0, 80.0])
    labels = torch.tensor([1, 9, 4, 0]) if kw["label_dim"] else None
    return x, sigma, labels


def onehot(labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return None if labels is None else torch.nn.functional.one_hot(labels, n).float()


# ------------------------------------------------------------------------------- EDM's pickle format
# The source that EDM-format test pickles carry: run by the code-executing (trust_pickle) loader, it
# defines every class the pickle names from dode's own modules, plus two training-only classes.
MODULE_SRC = """
from torch_utils import persistence
from dode.models.arch.edm_layers import Conv2d, FourierEmbedding, GroupNorm, Linear, PositionalEmbedding, UNetBlock
from dode.models.arch.edm_networks import DhariwalUNet, EDMPrecond, SongUNet, VEPrecond, VPPrecond, iDDPMPrecond


class EDMLoss:
    pass


class AugmentPipe:
    pass
"""


class Persistent:
    """Pickles as ``torch_utils.persistence._reconstruct_persistent_obj(meta)``, as EDM's classes do."""

    def __init__(self, class_name: str, state: dict, module_src: str = MODULE_SRC):
        self.meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)

    def __reduce__(self):
        # the format's function, from the stand-in module registered while write_pickle runs
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,)


def as_pickled(module: nn.Module, init_kwargs: dict | None = None):
    """``module`` as EDM pickles it: its ``__dict__`` (children converted alike) with the recorded
    constructor arguments; ``skip_scale`` as a numpy float, as EDM's blocks hold it."""
    state = dict(module.__dict__)
    state["_modules"] = OrderedDict((k, None if v is None else as_pickled(v)) for k, v in module._modules.items())
    if isinstance(module, nn.ModuleDict):  # a plain torch object: pickled as its class and __dict__
        plain = nn.ModuleDict.__new__(nn.ModuleDict)
        plain.__dict__.update(state)
        return plain
    if "skip_scale" in state:
        state["skip_scale"] = np.float64(state["skip_scale"])
    state["_init_args"], state["_init_kwargs"] = (), dict(init_kwargs or {})
    return Persistent(type(module).__name__, state)


def write_pickle(path: Path, data: dict) -> Path:
    """Pickle ``data`` (values may be :class:`Persistent`) with EDM's module names registered."""
    from dode.models.arch import edm_compat

    with edm_compat.compat_modules(), open(path, "wb") as f:
        pickle.dump(data, f)
    return path


def write_edm_pickle(path: Path, net: nn.Module, init_kwargs: dict) -> Path:
    """An EDM network pickle of ``net`` laid out as EDM's training snapshots are."""
    from dode.models.arch.edm_compat import EasyDict

    loss = Persistent("EDMLoss", dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5, _init_args=(), _init_kwargs={}))
    augment = Persistent("AugmentPipe", dict(p=0.12, xflip=1e8, _init_args=(), _init_kwargs=dict(p=0.12)))
    data = dict(ema=as_pickled(net, init_kwargs), loss_fn=loss, augment_pipe=augment,
                dataset_kwargs=EasyDict(path="datasets/x.zip", use_labels=bool(init_kwargs.get("label_dim"))))
    return write_pickle(path, data)


def make_reference(edm: Path, out: Path = REFERENCE) -> None:
    """Run EDM's own networks (from the checkout ``edm``) on the tiny configs and save their outputs."""
    sys.path.insert(0, str(edm))
    from training import networks  # EDM's module, from the checkout

    ref = {}
    for name, (cls, kwargs) in CONFIGS.items():
        net = fill(getattr(networks, cls)(**kwargs)).eval()
        x, sigma, labels = inputs(name)
        with torch.no_grad():
            ref[name] = net(x, sigma, onehot(labels, kwargs["label_dim"]))
        print(f"{name}: {cls}, {sum(p.numel() for p in net.parameters())} parameters, |D| max {ref[name].abs().max():.3f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ref, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edm", type=Path, required=True, help="a checkout of github.com/NVlabs/edm")
    make_reference(parser.parse_args().edm)
