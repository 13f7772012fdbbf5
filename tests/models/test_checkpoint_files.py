"""Checkpoint files (dode.models.files) through load_checkpoint: a missing file says where to get it
and where to put it, checksums are verified, and a state dict that does not fit is refused."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dode.errors import UserError
from dode.models.checkpoints import CheckpointError, load_checkpoint
from tiny_checkpoints import ADM_GUIDED, ADM_IMPROVED, MINE, cfg_from, md5, tiny_adm, tiny_ddpm


def test_missing_file_says_where_to_get_it_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DODE_CHECKPOINT_DIR", str(tmp_path))
    for path in MINE:
        cfg = OmegaConf.load(path)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(cfg)
        msg = str(info.value)
        assert isinstance(info.value, UserError)
        assert Path(cfg.file).name in msg and "checkpoint.path=" in msg and str(tmp_path) in msg, msg
        assert any(s.split()[0] in msg for s in cfg.source)
    cfg = cfg_from("ddpm-cifar10", path=str(tmp_path / "elsewhere.ckpt"))
    with pytest.raises(CheckpointError, match=r"checkpoint.path=.*elsewhere.ckpt does not exist"):
        load_checkpoint(cfg)


def test_missing_classifier_names_its_own_key(tmp_path):
    net = tiny_adm(ADM_GUIDED, num_classes=7)
    f = tmp_path / "128x128_diffusion.pt"
    torch.save(net.state_dict(), f)
    cfg = cfg_from("adm-imagenet128-cond", path=str(f), resolution=16, num_classes=7, architecture=ADM_GUIDED)
    cfg.classifier.path = str(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="checkpoint.classifier.path="):
        load_checkpoint(cfg)


def test_checksum_mismatch(tmp_path):
    net, arch = tiny_ddpm()
    f = tmp_path / "model-790000.ckpt"
    torch.save(net.state_dict(), f)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(cfg_from("ddpm-cifar10", path=str(f), resolution=16, architecture=arch))
    msg = str(info.value)
    assert "md5" in msg and "1fa350b952534ae442b1d5235cce5cd3" in msg and md5(f) in msg and str(f) in msg
    assert "checkpoint.md5=null" in msg
    load_checkpoint(cfg_from("ddpm-cifar10", path=str(f), resolution=16, architecture=arch, md5=None))


def test_state_dict_that_does_not_fit(tmp_path):
    net, arch = tiny_ddpm()
    f = tmp_path / "ckpt.pth"
    torch.save(net.state_dict(), f)
    wrong = dict(arch, ch_mult=[1, 2, 2])
    with pytest.raises(CheckpointError, match=r"ckpt.pth does not fit the DDPM U-Net.*missing keys"):
        load_checkpoint(cfg_from("ddpm-celeba64", path=str(f), resolution=16, architecture=wrong))
    g = tmp_path / "imagenet64_uncond_100M_1500K.pt"
    torch.save(tiny_adm(ADM_IMPROVED).state_dict(), g)
    with pytest.raises(CheckpointError, match=r"127 shape mismatches \(e.g. time_embed.0.weight: file \(128, 32\) vs model \(256, 64\)"):
        load_checkpoint(cfg_from("adm-imagenet64-uncond", path=str(g), resolution=16,
                                 architecture=dict(ADM_IMPROVED, model_channels=64)))
    f.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read .*ckpt.pth"):
        load_checkpoint(cfg_from("ddpm-celeba64", path=str(f), resolution=16, architecture=arch))
