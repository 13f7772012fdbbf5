"""CLIP score of text-to-image samples from local CLIP weights (an optional metric, ``metric: clip_score``).

``CLIPScore = 100 · mean_i max(cos(E_I(image_i), E_T(prompt_i)), 0)`` (Hessel et al. 2021's per-sample
clamp, with torchmetrics' weight w = 100; torchmetrics' ``CLIPScore`` clamps the mean instead, which gives
the same value whenever every cosine is positive, as for real text-to-image samples): E_I and E_T are CLIP's projected image and text embeddings, the image
preprocessed by the weights' own ``CLIPImageProcessor`` (resize, center crop, normalisation) and the
prompt tokenized by their ``CLIPTokenizer`` (truncated to its ``model_max_length``). Higher is better.

The weights are a local ``transformers`` folder (``eval.clip_weights``, absolute or relative to
``$DODE_CHECKPOINT_DIR``, default ``./checkpoints``) holding ``CLIPModel.save_pretrained`` and
``CLIPProcessor.save_pretrained`` output; nothing is downloaded. The score is a sum and a count
(:class:`ClipSums`), so processes scoring disjoint samples add theirs before dividing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dode.errors import UserError

__all__ = ["CLIP_FILES", "ClipScorer", "ClipSums", "clip_folder", "clip_sums", "load_clip"]

# what the folder must hold: (alternatives, the part they are)
CLIP_FILES = ((("config.json",), "the model config"),
              (("model.safetensors", "pytorch_model.bin"), "the weights"),
              (("preprocessor_config.json",), "the image processor"),
              (("vocab.json",), "the tokenizer vocabulary"),
              (("merges.txt",), "the tokenizer merges"))
HOW_TO_GET = ("make it once where the Hub is reachable: `python -c \"from transformers import CLIPModel, CLIPProcessor; "
              "r = 'openai/clip-vit-large-patch14'; CLIPModel.from_pretrained(r).save_pretrained('{d}'); "
              "CLIPProcessor.from_pretrained(r).save_pretrained('{d}')\"` (or `huggingface-cli download "
              "openai/clip-vit-large-patch14 --local-dir {d}`), then copy the folder here")


@dataclass(frozen=True)
class ClipSums:
    """``total`` = Σ_i max(100·cos_i, 0) over ``n`` samples; the score is ``total / n``."""

    total: float
    n: int

    @property
    def score(self) -> float:
        return self.total / self.n if self.n else float("nan")


@dataclass
class ClipScorer:
    """A CLIP model with its tokenizer and image processor, on ``device``."""

    model: torch.nn.Module
    tokenizer: object
    processor: object
    device: str


def clip_folder(clip_weights: str | os.PathLike | None) -> Path:
    """The CLIP weights folder, checked to hold every file of :data:`CLIP_FILES` (each missing one named)."""
    if not clip_weights:
        raise UserError("the CLIP score needs local CLIP weights: set eval.clip_weights=<folder> (" +
                        HOW_TO_GET.format(d="checkpoints/clip-vit-large-patch14") + ")")
    p = Path(os.path.expanduser(str(clip_weights)))
    folder = p if p.is_absolute() else Path(os.environ.get("DODE_CHECKPOINT_DIR") or "checkpoints") / p
    if not folder.is_dir():
        raise UserError(f"eval.clip_weights: the CLIP weights folder {folder.absolute()} does not exist; "
                        + HOW_TO_GET.format(d=folder))
    missing = [f"{' or '.join(names)} ({what})" for names, what in CLIP_FILES
               if not any((folder / n).is_file() for n in names)]
    if missing:
        raise UserError(f"eval.clip_weights: {folder.absolute()} lacks {'; '.join(missing)}; "
                        + HOW_TO_GET.format(d=folder))
    return folder


@lru_cache(maxsize=2)
def load_clip(clip_weights: str | None, device: str = "cpu") -> ClipScorer:
    """The :class:`ClipScorer` of a weights folder (:func:`clip_folder`), in eval mode."""
    folder = clip_folder(clip_weights)
    try:
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer
    except ImportError as e:
        raise UserError(f"the CLIP score needs the package 'transformers' (pip install 'dode[latent]'): {e}") from e
    model = CLIPModel.from_pretrained(str(folder), local_files_only=True).to(device).eval().requires_grad_(False)
    return ClipScorer(model, CLIPTokenizer.from_pretrained(str(folder), local_files_only=True),
                      CLIPImageProcessor.from_pretrained(str(folder), local_files_only=True), str(device))


@torch.no_grad()
def clip_sums(images: np.ndarray, prompts: Sequence[str], clip_weights: str | None, device: str = "cpu",
              batch_size: int = 100) -> ClipSums:
    """:class:`ClipSums` of uint8 images ``(N, H, W, 3)``, image i scored against ``prompts[i]``."""
    if len(images) != len(prompts):
        raise ValueError(f"CLIP score: {len(images)} images but {len(prompts)} prompts")
    if len(images) and images.shape[-1] != 3:
        raise UserError(f"the CLIP score needs RGB images; got {images.shape[-1]} channel(s)")
    s = load_clip(None if clip_weights is None else str(clip_weights), str(device))
    m, total = s.model, 0.0
    for i in range(0, len(images), batch_size):
        pix = s.processor(images=list(images[i:i + batch_size]), return_tensors="pt")["pixel_values"]
        tok = s.tokenizer(list(prompts[i:i + batch_size]), padding=True, truncation=True,
                          max_length=s.tokenizer.model_max_length, return_tensors="pt")
        img = m.visual_projection(m.vision_model(pixel_values=pix.to(s.device)).pooler_output)
        txt = m.text_projection(m.text_model(input_ids=tok["input_ids"].to(s.device),
                                             attention_mask=tok["attention_mask"].to(s.device)).pooler_output)
        cos = torch.nn.functional.cosine_similarity(img.double(), txt.double(), dim=-1)
        total += float((100 * cos).clamp(min=0).sum())
    return ClipSums(total, len(images))
