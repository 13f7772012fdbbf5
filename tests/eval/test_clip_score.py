"""The CLIP score from local weights: a tiny random-weight CLIPModel, tokenizer and image processor written
by the test equal a hand-written 100·mean(max(cos, 0)); a missing file is named with how to obtain it."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from dode.errors import UserError  # noqa: E402
from dode.eval.clip import clip_sums, load_clip  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from tiny_sd import write_tiny_clip  # noqa: E402

PROMPTS = ["a red boat on the sea", "the cat sat on the mat", "an ant", "two dogs in the park", "the tall tower"]


def reference(folder: Path, images: np.ndarray, prompts: list[str], clip: bool = True) -> float:
    """By hand: x = (image/255 − mean)/std (16×16 images need no resize or crop), prompts truncated to the
    tokenizer's length, CLIP's own forward gives
    logits = e^t·cos(image, text); score = 100·mean(max(cos of the matching pairs, 0))."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(str(folder)).eval()
    proc = CLIPImageProcessor.from_pretrained(str(folder))
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in (proc.image_mean, proc.image_std))
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    tok = CLIPTokenizer.from_pretrained(str(folder))(prompts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=x)
    cos = out.logits_per_image.diagonal() / model.logit_scale.exp()
    return float((100 * (cos.clamp(min=0) if clip else cos)).mean())


def test_clip_score_equals_the_hand_written_formula(tmp_path):
    folder = write_tiny_clip(tmp_path / "clip")
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    got = clip_sums(images, PROMPTS, str(folder), batch_size=2)
    want = reference(folder, images, PROMPTS)
    assert got.n == 5 and got.score == pytest.approx(want, abs=1e-4)
    # the clipping at 0: the same model with its text projection negated has every cosine negated
    from transformers import CLIPModel

    flipped = CLIPModel.from_pretrained(str(folder))
    flipped.text_projection.weight.data.neg_()
    flipped.save_pretrained(str(folder))
    load_clip.cache_clear()
    assert reference(folder, images, PROMPTS, clip=False) == pytest.approx(-want, abs=1e-4)
    assert clip_sums(images, PROMPTS, str(folder)).score == 0.0
    flipped.text_projection.weight.data.neg_()
    flipped.save_pretrained(str(folder))
    load_clip.cache_clear()
    halves = [clip_sums(images[s], PROMPTS[s], str(folder)) for s in (slice(0, 2), slice(2, 5))]
    assert (halves[0].total + halves[1].total) / 5 == pytest.approx(got.score, abs=1e-4)  # sums add over ranks


def test_missing_clip_weights_name_the_file_and_how_to_get_it(tmp_path):
    images = np.zeros((1, 16, 16, 3), np.uint8)
    with pytest.raises(UserError, match=r"does not exist; make it once .*openai/clip-vit-large-patch14"):
        clip_sums(images, ["a"], str(tmp_path / "nowhere"))
    folder = write_tiny_clip(tmp_path / "clip")
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(UserError, match=r"lacks preprocessor_config.json \(the image processor\).*save_pretrained"):
        clip_sums(images, ["a"], str(folder))
    with pytest.raises(UserError, match="set eval.clip_weights"):
        clip_sums(images, ["a"], None)
