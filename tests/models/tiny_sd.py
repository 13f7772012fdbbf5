"""A tiny Stable-Diffusion-format folder with random weights, written by the tests themselves (no
download): a 2-block ``UNet2DConditionModel``, a 2-level ``AutoencoderKL``, a 2-layer
``CLIPTextModel`` and a byte-pair tokenizer whose ``vocab.json``/``merges.txt`` are written here."""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch

HIDDEN = 16  # the text encoder's width = the U-Net's cross-attention dimension
MAX_LEN = 12  # the tokenizer's model_max_length


def write_tokenizer(folder: Path) -> None:
    """A CLIP byte-pair tokenizer over lower-case letters and a few merges (every word encodable)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    letters = list(string.ascii_lowercase + string.digits + ".,!?'")
    tokens += letters + [c + "</w>" for c in letters]
    merges = ["t h", "th e</w>", "a n", "o n</w>", "i n", "a t</w>"]
    tokens += ["th", "the</w>", "an", "on</w>", "in", "at</w>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": MAX_LEN, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}))


def write_tiny_sd(folder: Path, prediction: str = "epsilon", seed: int = 0, sample_size: int = 8) -> Path:
    """Save a random-weight SD pipeline folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
    scheduler/) under ``folder``: 4-channel latents of ``sample_size``², decoded to 3×(2·size)² images."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=HIDDEN, attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=2 * sample_size)
    write_tokenizer(folder / "tokenizer")
    tok = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=32,
                                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=MAX_LEN,
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id))
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          prediction_type=prediction, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    for name, part in (("unet", unet), ("vae", vae), ("text_encoder", text), ("scheduler", sched)):
        part.save_pretrained(str(folder / name))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}))
    return folder


def write_tiny_clip(folder: Path, image_size: int = 16, seed: int = 0) -> Path:
    """Save a random-weight ``CLIPModel`` with its tokenizer and image processor (``image_size``² input,
    no resize for images of that size) under ``folder``, as ``save_pretrained`` writes them."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    torch.manual_seed(seed)
    write_tokenizer(folder)
    tok = CLIPTokenizer.from_pretrained(str(folder))
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    cfg = CLIPConfig(text_config={"vocab_size": len(tok), "hidden_size": HIDDEN, "intermediate_size": 32,
                                  "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": MAX_LEN,
                                  **ids},
                     vision_config={"hidden_size": HIDDEN, "intermediate_size": 32, "num_hidden_layers": 2,
                                    "num_attention_heads": 2, "image_size": image_size, "patch_size": 4},
                     projection_dim=8)
    CLIPModel(cfg).save_pretrained(str(folder))
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(str(folder))
    return folder
