"""Seeds: every sample has its own random stream, so images never depend on batch size or processes.

Sample ``i`` of evaluation seed ``s`` is drawn from its own ``torch.Generator`` seeded with
``s·10⁷ + i`` (EDM's habit, made disjoint): noise first; its class label, for conditional models,
from a generator seeded by a hash of the same stream seed. The λ fit draws its ``B`` noises from
block ``400 + fit_seed``. torch's CPU generator keeps only the low 32 bits of a seed, so every
stream seed stays below 2³²: evaluation seeds ``0 ≤ s < 400``, fit seeds ``0 ≤ f < 29``, at most
10⁷ samples per seed.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Iterable, Sequence

import torch
from torch import Tensor

from dode.errors import UserError

if TYPE_CHECKING:
    from dode.runner.points import Point

BLOCK = 10**7  # samples per seed block: stream seed = block · 10⁷ + sample index
FIT_BLOCK = 400  # evaluation seeds use blocks [0, 400), the λ fit blocks [400, 429)
MAX_FIT_SEED = (2**32 // BLOCK) - FIT_BLOCK - 1  # 28: torch's CPU generator keeps 32 bits of a seed


def stream_seed(block: int, index: int) -> int:
    """The seed of sample ``index`` in seed block ``block`` (its own torch.Generator); < 2³²."""
    if not (0 <= index < BLOCK and 0 <= block * BLOCK + index < 2**32):
        raise UserError(f"sample index {index} of seed block {block} is outside the seed space")
    return block * BLOCK + index


def eval_block(seed: int) -> int:
    return int(seed)


def fit_block(fit_seed: int) -> int:
    return FIT_BLOCK + int(fit_seed)


def make_noise(block: int, indices: Iterable[int], shape: tuple, dtype=torch.float32) -> tuple[torch.Tensor, list[int]]:
    """Standard-normal noise ``(n, *shape)``, one generator per sample (on the CPU, so identical on
    every machine and device), and the samples' stream seeds (which also draw class labels)."""
    seeds = [stream_seed(block, i) for i in indices]
    out = torch.empty((len(seeds), *shape), dtype=dtype)
    g = torch.Generator()
    for j, s in enumerate(seeds):
        g.manual_seed(s)
        out[j] = torch.randn(shape, generator=g, dtype=dtype)
    return out, seeds


def set_labels(denoiser, point: Point, seeds: list[int], device: str) -> None:
    """The conditions of the samples ``seeds``: class labels of a conditional model in
    ``denoiser.model_kwargs["class_labels"]`` drawn by :func:`draw_labels` (each from its sample's
    seed); for a dataset with captions, the prompt of each sample index (:func:`set_prompts`)."""
    if point.dataset.get("captions"):
        set_prompts(denoiser, point, seeds)
    n = int(point.checkpoint.get("num_classes") or 0)
    if not n:
        return
    labels = draw_labels(seeds, n, fixed=point.checkpoint.get("class_label"))
    denoiser.model_kwargs["class_labels"] = labels.to(device)


def set_prompts(denoiser, point: Point, seeds: list[int]) -> None:
    """``denoiser.set_prompts``: sample ``i`` (stream seed ``block·10⁷ + i``) gets caption ``i`` of the
    dataset's selection (:func:`dode.eval.prompts.captions_of`), in every seed block."""
    from dode.eval.prompts import captions_of

    captions = captions_of(point.dataset["captions"])
    index = [s % BLOCK for s in seeds]
    if max(index, default=0) >= len(captions):
        raise UserError(f"sample {max(index)} needs a caption but dataset.captions selects only {len(captions)}: "
                        f"raise dataset.captions.count or lower num_samples/batch")
    denoiser.set_prompts([captions[i] for i in index])


def _label_seed(seed: int) -> int:
    """The generator seed for the label of sample ``seed``: a hash, so the label stream is independent
    of the noise drawn from ``torch.Generator().manual_seed(seed)``."""
    digest = hashlib.sha256(f"dode-class-label:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def draw_labels(seeds: Iterable[int] | Tensor, num_classes: int, fixed: int | Sequence[int] | None = None) -> Tensor:
    """One class label per sample seed, a LongTensor of shape ``(len(seeds),)``.

    Each label depends on its own seed only (a ``torch.Generator`` seeded from a hash of the seed), so
    a sample's label does not depend on batch size, batch composition or the device. ``fixed``: one
    class for every sample, or one label per seed (validated)."""
    seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, Tensor) else seeds)]
    if int(num_classes) <= 0:
        raise ValueError("draw_labels needs num_classes > 0 (the model is unconditional)")
    if fixed is not None:
        labels = (torch.full((len(seeds),), int(fixed), dtype=torch.long) if isinstance(fixed, int)
                  else torch.as_tensor(list(fixed), dtype=torch.long))
        if labels.shape != (len(seeds),):
            raise ValueError(f"{labels.numel()} fixed labels for {len(seeds)} seeds")
        if bool(((labels < 0) | (labels >= num_classes)).any()):
            raise ValueError(f"class labels must lie in [0, {num_classes})")
        return labels
    out = torch.empty(len(seeds), dtype=torch.long)
    for i, s in enumerate(seeds):
        g = torch.Generator().manual_seed(_label_seed(s))
        out[i] = torch.randint(int(num_classes), (1,), generator=g)
    return out
