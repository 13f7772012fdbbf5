"""Per-sample random streams: class labels."""
import pytest
import torch

from dode.runner.seeds import draw_labels


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
