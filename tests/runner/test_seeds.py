"""Per-sample random streams: noise and class labels."""
import pytest
import torch

from dode.runner.seeds import BLOCK, MAX_FIT_SEED, draw_labels, eval_block, fit_block, make_noise, stream_seed


def test_draw_labels_is_per_seed():
    a = draw_labels(range(0, 64), 10)
    assert a.dtype == torch.long and a.shape == (64,) and int(a.min()) >= 0 and int(a.max()) < 10
    assert torch.equal(draw_labels(range(16, 48), 10), a[16:48])  # independent of batch composition
    assert torch.equal(draw_labels([5, 3], 10), a[[5, 3]])
    assert len(set(a.tolist())) > 5
    big = draw_labels(range(200), 1000)
    assert len(set(big.tolist())) > 150
    assert torch.equal(draw_labels([1, 2, 3], 10, fixed=7), torch.tensor([7, 7, 7]))
    assert torch.equal(draw_labels([1, 2], 10, fixed=[4, 0]), torch.tensor([4, 0]))
    with pytest.raises(ValueError):
        draw_labels([1], 10, fixed=10)
    with pytest.raises(ValueError):
        draw_labels([1], 0)


def test_seed_streams_are_per_sample_and_disjoint():
    a, _ = make_noise(eval_block(1), range(10, 20), (1, 4, 4))
    b, _ = make_noise(eval_block(1), [15, 12], (1, 4, 4))
    assert torch.equal(a[5], b[0]) and torch.equal(a[2], b[1])  # a sample's noise ignores its batch
    c, _ = make_noise(eval_block(2), range(10, 20), (1, 4, 4))
    f, _ = make_noise(fit_block(0), range(10, 20), (1, 4, 4))
    assert not torch.equal(a, c) and not torch.equal(a, f)
    top = stream_seed(fit_block(MAX_FIT_SEED), BLOCK - 1)
    assert top < 2**32  # torch's CPU generator keeps only 32 bits of a seed
    seeds = {stream_seed(eval_block(s), i) for s in (0, 1, 2) for i in (0, BLOCK - 1)}
    assert len(seeds) == 6 and stream_seed(fit_block(0), 0) > max(seeds)
