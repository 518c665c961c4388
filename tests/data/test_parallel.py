"""Parallel text reading, length filtering, token-budget bucketing and collation."""

from __future__ import annotations

import pytest
import torch

from lmforge.data.pair_batching import IGNORE_INDEX, collate_pairs, filter_pairs, token_batches
from lmforge.data.parallel import read_parallel
from lmforge.errors import DataError


def test_read_aligned_files_and_tsv(tmp_path) -> None:
    (tmp_path / "a.en").write_text("Hello world\r\nGood  morning \n", encoding="utf-8")
    (tmp_path / "a.de").write_text("Hallo Welt\nGuten Morgen\n", encoding="utf-8")
    assert read_parallel(tmp_path / "a.en", tmp_path / "a.de") == [("Hello world", "Hallo Welt"), ("Good  morning", "Guten Morgen")]
    (tmp_path / "p.tsv").write_text("Hello\tHallo\ncafé ☕\tKaffee ☕\n", encoding="utf-8")
    assert read_parallel(tmp_path / "p.tsv") == [("Hello", "Hallo"), ("café ☕", "Kaffee ☕")]


def test_read_parallel_errors_name_the_problem(tmp_path) -> None:
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n", encoding="utf-8")
    (tmp_path / "a.de").write_text("eins\nzwei\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"has 3 lines but target file .* has 2"):
        read_parallel(tmp_path / "a.en", tmp_path / "a.de")
    with pytest.raises(DataError, match="does not exist"):
        read_parallel(tmp_path / "missing.en", tmp_path / "a.de")
    (tmp_path / "bad.tsv").write_text("ok\tgut\nno tab here\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2: expected 'source<TAB>target'"):
        read_parallel(tmp_path / "bad.tsv")
    (tmp_path / "bin.en").write_bytes(b"abc\xff\n")
    with pytest.raises(DataError, match="UTF-8"):
        read_parallel(tmp_path / "bin.en", tmp_path / "a.de")
    (tmp_path / "empty.en").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        read_parallel(tmp_path / "empty.en", tmp_path / "empty.en")


def test_filter_pairs() -> None:
    src = [[5, 6, 3], [3], [5] * 9 + [3], [5, 3], [5, 6, 7, 3]]
    tgt = [[7, 8], [7], [7], [], [7] * 20]
    assert filter_pairs(src, tgt, max_len=10) == [0, 2]
    assert filter_pairs(src, tgt, max_len=30) == [0, 2, 4]
    assert filter_pairs(src, tgt, max_len=30, max_ratio=3.0) == [0]


def test_token_batches_respect_budget_and_cover_everything_once() -> None:
    g = torch.Generator().manual_seed(0)
    src_lens = torch.randint(2, 40, (500,), generator=g).tolist()
    tgt_lens = [max(2, s + d) for s, d in zip(src_lens, torch.randint(-3, 4, (500,), generator=g).tolist())]
    batches = token_batches(src_lens, tgt_lens, max_tokens=200, shuffle=True, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for b in batches:
        assert len(b) * max(max(src_lens[i], tgt_lens[i]) for i in b) <= 200
    # length bucketing: padding is a small share of the padded tokens
    padded = sum(len(b) * max(tgt_lens[i] for i in b) for b in batches)
    assert sum(tgt_lens) / padded > 0.85
    assert token_batches(src_lens, tgt_lens, 200, shuffle=True, seed=1) == batches
    assert token_batches(src_lens, tgt_lens, 200, shuffle=True, seed=2) != batches
    assert token_batches([50], [60], max_tokens=10) == [[0]]  # an oversized pair still gets a batch
    assert all(len(b) <= 4 for b in token_batches(src_lens, tgt_lens, 10_000, max_sentences=4))


def test_collate_pads_dynamically_and_shifts_targets() -> None:
    batch = collate_pairs([[9, 10, 3], [11, 3]], [[20, 21, 22], [23]], pad_id=0, bos_id=2, eos_id=3)
    assert batch.src.tolist() == [[9, 10, 3], [11, 3, 0]]
    assert batch.tgt_in.tolist() == [[2, 20, 21, 22], [2, 23, 0, 0]]
    assert batch.tgt_out.tolist() == [[20, 21, 22, 3], [23, 3, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch.num_tokens == 6
