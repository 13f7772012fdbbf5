"""The checkpoint configs and the loader registry (dode.models.checkpoints)."""
from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from dode.models.checkpoints import CheckpointError, load_checkpoint
from tiny_checkpoints import CONF, MINE


def test_configs_state_what_a_user_needs():
    assert len(MINE) >= 11
    for path in MINE:
        c = OmegaConf.to_container(OmegaConf.load(path))
        assert c["name"] == path.stem
        for key in ("loader", "file", "path", "md5", "resolution", "channels", "num_classes", "prediction",
                    "default_grid", "source", "description"):
            assert key in c, (path.name, key)
        assert c["md5"] is None or re.fullmatch(r"[0-9a-f]{32}", c["md5"])
        assert c["prediction"] in ("eps", "x0")
        assert c["source"], path.name
        if c["loader"] not in ("edm", "diffusers_sd", "ldm_compvis"):  # SD folders and LDM config.yaml: own β
            assert c["schedule"]["kind"] in ("linear", "cosine")
    assert OmegaConf.load(CONF / "ddpm-cifar10.yaml").md5 == "1fa350b952534ae442b1d5235cce5cd3"
    assert OmegaConf.load(CONF / "adm-imagenet64-uncond.yaml").schedule.T == 4000
    assert OmegaConf.load(CONF / "adm-imagenet128-cond.yaml").classifier.scale == 1.25


def test_unknown_loader_lists_known_ones():
    with pytest.raises(CheckpointError, match="known: .*adm.*ddpm.*diffusers.*diffusers_sd.*edm"):
        load_checkpoint({"name": "x", "loader": "nope"})
