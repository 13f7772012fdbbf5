"""The network definitions of dode.models.arch: published sizes, the official key names, and outputs
equal to an independent implementation."""
from __future__ import annotations

import torch
from omegaconf import OmegaConf

from dode.models.arch import ADMEncoderUNet, ADMUNet, DDPMUNet
from tiny_checkpoints import ADM_GUIDED, ADM_IMPROVED, CLF, CONF, tiny_adm


def test_full_size_architectures_have_the_published_sizes():
    def count(m):
        return sum(p.numel() for p in m.parameters())

    with torch.device("meta"):
        assert count(DDPMUNet()) == 35_746_307  # DDPM CIFAR-10: 35.7 M
        assert count(DDPMUNet(ch_mult=(1, 2, 2, 2, 4), resolution=64)) == 78_700_803
        lsun = OmegaConf.to_container(OmegaConf.load(CONF / "adm-lsun-bedroom256.yaml").architecture)
        lsun.pop("learn_sigma")
        assert count(ADMUNet(256, out_channels=6, **lsun)) == 552_814_086


def test_ddpm_unet_has_the_official_key_names():
    keys = set(DDPMUNet(ch=32, ch_mult=(1, 2), attn_resolutions=(8,), resolution=16).state_dict())
    for k in ("temb.dense.0.weight", "temb.dense.1.bias", "conv_in.weight", "down.0.block.0.norm1.weight",
              "down.0.block.1.conv2.bias", "down.0.downsample.conv.weight", "down.1.block.0.nin_shortcut.weight",
              "down.1.attn.0.q.weight", "down.1.attn.1.proj_out.bias", "mid.block_1.temb_proj.weight",
              "mid.attn_1.k.weight", "mid.block_2.norm2.bias", "up.1.block.2.conv1.weight",
              "up.1.upsample.conv.weight", "up.1.attn.2.v.bias", "up.0.block.0.nin_shortcut.weight",
              "norm_out.weight", "conv_out.bias"):
        assert k in keys, k
    assert not any(k.startswith("down.1.downsample") or k.startswith("up.0.upsample") for k in keys)


def _ddim_to_diffusers(key: str, levels: int) -> str:
    """Our (DDIM repository) key → the diffusers UNet2DModel key of the same weight."""
    res = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
           "nin_shortcut": "conv_shortcut"}
    att = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
    simple = {"temb.dense.0": "time_embedding.linear_1", "temb.dense.1": "time_embedding.linear_2",
              "norm_out": "conv_norm_out", "conv_in": "conv_in", "conv_out": "conv_out"}
    head, param = key.rsplit(".", 1)
    if head in simple:
        return f"{simple[head]}.{param}"
    p = head.split(".")
    if p[0] == "mid":
        blk = {"block_1": "resnets.0", "attn_1": "attentions.0", "block_2": "resnets.1"}[p[1]]
        table = att if p[1] == "attn_1" else res
        return f"mid_block.{blk}.{table[p[2]]}.{param}"
    side, level = p[0], int(p[1])
    idx = level if side == "down" else levels - 1 - level
    prefix = f"{side}_blocks.{idx}"
    if p[2] == "block":
        return f"{prefix}.resnets.{p[3]}.{res[p[4]]}.{param}"
    if p[2] == "attn":
        return f"{prefix}.attentions.{p[3]}.{att[p[4]]}.{param}"
    return f"{prefix}.{'downsamplers' if side == 'down' else 'upsamplers'}.0.conv.{param}"


def test_ddpm_unet_matches_diffusers_independent_implementation():
    """diffusers' UNet2DModel configured as DDPM (how google/ddpm-* were converted) is an independent
    implementation of the same network: with the same weights, outputs agree."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    ref = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                      down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                      attention_head_dim=None, norm_eps=1e-6, norm_num_groups=32, flip_sin_to_cos=False, freq_shift=1,
                      downsample_padding=0).eval()
    ours = DDPMUNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0, resolution=16).eval()
    theirs = ref.state_dict()
    mapped = {}
    for k, v in ours.state_dict().items():
        w = theirs[_ddim_to_diffusers(k, 2)]
        mapped[k] = w.reshape(v.shape)
    ours.load_state_dict(mapped)
    x = torch.randn(3, 3, 16, 16)
    t = torch.tensor([0.0, 411.0, 999.0])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t), ref(x, t).sample, rtol=1e-4, atol=1e-4)


def test_adm_has_the_official_key_names():
    keys = set(tiny_adm(ADM_GUIDED, num_classes=5).state_dict())
    for k in ("time_embed.0.weight", "time_embed.2.bias", "label_emb.weight", "input_blocks.0.0.weight",
              "input_blocks.1.0.in_layers.0.weight", "input_blocks.1.0.in_layers.2.weight",
              "input_blocks.1.0.emb_layers.1.weight", "input_blocks.1.0.out_layers.0.bias",
              "input_blocks.1.0.out_layers.3.weight", "input_blocks.1.1.qkv.weight", "input_blocks.1.1.proj_out.bias",
              "input_blocks.1.1.norm.weight", "input_blocks.2.0.in_layers.2.weight",  # ResBlock(down=True)
              "input_blocks.3.0.skip_connection.weight", "middle_block.0.emb_layers.1.weight",
              "middle_block.1.qkv.weight", "middle_block.2.out_layers.3.bias",
              "output_blocks.0.0.skip_connection.weight", "output_blocks.1.2.in_layers.2.weight",  # up=True
              "out.0.weight", "out.2.weight"):
        assert k in keys, k
    improved = set(tiny_adm(ADM_IMPROVED).state_dict())
    assert "input_blocks.2.0.op.weight" in improved and "output_blocks.1.2.conv.weight" in improved
    assert tiny_adm(ADM_GUIDED).state_dict()["input_blocks.1.1.qkv.weight"].shape == (96, 32, 1)
    clf = ADMEncoderUNet(16, **{k: v for k, v in CLF.items()})
    ck = clf.state_dict()
    assert ck["out.2.positional_embedding"].shape == (64, 8 * 8 + 1)
    assert ck["out.2.c_proj.weight"].shape == (7, 64, 1) and "out.2.qkv_proj.weight" in ck
