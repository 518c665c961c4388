"""sample_batch and iter_eval_batches on a token array whose values are their positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.data import IGNORE_INDEX, iter_eval_batches, sample_batch
from lmforge.errors import DataError


def test_sample_batch_windows_are_shifted_slices():
    tokens = np.arange(100, dtype=np.uint16)
    x, y = sample_batch(tokens, block_size=8, batch_size=16, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (16, 8) and x.dtype == y.dtype == torch.long
    starts = x[:, 0]
    assert torch.equal(x, starts[:, None] + torch.arange(8))
    assert torch.equal(y, x + 1)
    assert int(starts.min()) >= 0 and int(starts.max()) <= 100 - 9


def test_sample_batch_is_reproducible_and_covers_every_start():
    tokens = np.arange(12, dtype=np.uint16)
    a, _ = sample_batch(tokens, 4, 64, torch.Generator().manual_seed(1))
    b, _ = sample_batch(tokens, 4, 64, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert set(a[:, 0].tolist()) == set(range(8))  # every start 0..len-block_size-1 is possible


def test_sample_batch_exact_minimum_length():
    x, y = sample_batch(np.arange(5), 4, 3, torch.Generator().manual_seed(0))
    assert x.tolist() == [[0, 1, 2, 3]] * 3 and y.tolist() == [[1, 2, 3, 4]] * 3


def test_sample_batch_too_short():
    with pytest.raises(DataError, match=r"has 4 tokens, too few for block_size=4 \(needs at least 5\); lower the block size \(e.g. data.block_size=3\)"):
        sample_batch(np.arange(4), 4, 2, torch.Generator())


@pytest.mark.parametrize("n,block,batch", [(2, 4, 1), (10, 3, 2), (17, 4, 3), (33, 8, 4), (9, 8, 5)])
def test_eval_batches_cover_each_target_once(n, block, batch):
    tokens = np.arange(n, dtype=np.uint32)
    xs, ys = [], []
    for x, y in iter_eval_batches(tokens, block, batch):
        assert x.shape == y.shape and x.shape[1] == block and 1 <= x.shape[0] <= batch
        xs.append(x)
        ys.append(y)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.shape[0] == -(-(n - 1) // block)  # ceil((n - 1) / block) windows
    kept = y != IGNORE_INDEX
    assert sorted(y[kept].tolist()) == list(range(1, n))  # every target exactly once
    assert torch.equal(y[kept], x[kept] + 1)  # the target follows its input
    assert int(kept.sum()) == n - 1
    assert not kept[:-1].logical_not().any()  # only the last window is padded
    assert (x[~kept] == 0).all()


def test_eval_batches_too_short():
    with pytest.raises(DataError, match="evaluation split has 1 tokens"):
        list(iter_eval_batches(np.arange(1), 4, 2))
