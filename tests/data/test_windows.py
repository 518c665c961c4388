"""Training windows never overlap within an epoch and resume from their position; bounded evaluation windows are
deterministic, evenly spread, and all windows when the split is small; the shard store reads like one array."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.data.lm_dataset import WindowSampler, eval_window_starts, gather_windows, iter_eval_batches
from lmforge.data.shards import ShardedTokens, ShardWriter


def test_windows_of_a_batch_are_disjoint_and_an_epoch_visits_every_cell_once():
    s = WindowSampler(10_001, 16, seed=5)
    per_epoch = s.windows_per_epoch
    batches = [s.next_starts(8) for _ in range(per_epoch // 8)]
    for b in batches:
        spans = np.sort(b)
        assert np.all(np.diff(spans) >= 16)  # non-overlapping: each window's T inputs are its own
        assert spans.max() + 17 <= 10_001
    cells = np.concatenate([b // 16 for b in batches])
    assert sorted(cells.tolist()) == list(range(per_epoch)) and s.epoch == 1  # 624 cells: 78 batches exactly
    assert len({int(b[0] % 16) for b in batches}) > 8  # a new phase inside the cells every batch
    odd = WindowSampler(10_001 + 16 * 3, 16, seed=5)  # 627 cells: the last 3 of an epoch are skipped
    for _ in range(78):
        odd.next_starts(8)
    assert odd.epoch == 0 and odd.pos == 624
    odd.next_starts(8)
    assert (odd.epoch, odd.pos) == (1, 8)


def test_sampler_resumes_exactly_from_its_state():
    a = WindowSampler(5_000, 8, seed=1)
    for _ in range(70):  # crosses an epoch boundary
        a.next_starts(8)
    state = a.state_dict()
    expected = [a.next_starts(8).tolist() for _ in range(5)]
    b = WindowSampler(5_000, 8, seed=1)
    b.load_state_dict(state)
    assert [b.next_starts(8).tolist() for _ in range(5)] == expected
    assert WindowSampler(5_000, 8, seed=2).next_starts(8).tolist() != WindowSampler(5_000, 8, seed=1).next_starts(8).tolist()


def test_tiny_split_wraps_around():
    s = WindowSampler(20, 8, seed=0)  # two windows an epoch, batches of four
    assert len(s.next_starts(4)) == 4


def test_eval_windows_are_all_windows_when_the_split_is_small_and_spread_when_not():
    assert eval_window_starts(101, 10, max_tokens=100).tolist() == list(range(0, 100, 10))
    assert eval_window_starts(101, 10, max_tokens=None).tolist() == list(range(0, 100, 10))
    starts = eval_window_starts(10_001, 10, max_tokens=1_000)
    assert len(starts) == 100 and starts.tolist() == eval_window_starts(10_001, 10, max_tokens=1_000).tolist()
    assert starts[0] == 0 and starts[-1] == 9_900 and np.all(np.diff(starts) == 100)
    batches = list(iter_eval_batches(np.arange(10_001), 10, 32, starts=starts))
    assert sum(int((y != -100).sum()) for _, y in batches) == 1_000


def _store(tmp_path, pieces, dtype=np.uint16):
    w = ShardWriter(tmp_path, "train", np.dtype(dtype))
    entries = []
    for p in pieces:
        w.write(np.asarray(p), 0, 0, 0, 0)
        entries.append(w.flush())
    return ShardedTokens(tmp_path, entries, dtype)


def test_sharded_tokens_read_like_one_array(tmp_path):
    pieces = [np.arange(0, 7), np.arange(7, 20), np.arange(20, 21), np.arange(21, 40)]
    store = _store(tmp_path, pieces)
    whole = np.arange(40)
    assert len(store) == 40 and store.tolist() == whole.tolist()
    for lo, hi in ((0, 40), (5, 9), (6, 21), (20, 21), (19, 39), (3, 3)):
        assert store[lo:hi].tolist() == whole[lo:hi].tolist()
    index = np.array([[0, 7, 20], [39, 6, 21]])
    assert store[index].tolist() == whole[index].tolist() and store[-1] == 39 and store[7] == 7
    assert gather_windows(store, np.array([5, 18]), 4).tolist() == [[5, 6, 7, 8], [18, 19, 20, 21]]
    with pytest.raises(IndexError):
        store[40]
