"""prepare: the shards equal a one-shot encoding for every tokenizer kind and input format; the split is
deterministic; an interrupted run resumes to identical shards; a finished one is reused until data or
tokenizer change."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.data import pipeline
from lmforge.data.pipeline import StreamSplit
from lmforge.data.prepare import load_prepared, prepare
from lmforge.tokenizers import TokenizerSpec
from lmforge.data.shards import INDEX_COLUMNS
from corpora import DOCS, FORMATS, write_corpus

KINDS = {"char": TokenizerSpec("char"), "word": TokenizerSpec("word", vocab_size=40),
         "bpe": TokenizerSpec("bpe", vocab_size=300)}


def _one_shot(tok, docs: list[str]) -> list[int]:
    ids: list[int] = []
    for i, doc in enumerate(docs):
        ids += ([tok.eos_id] if i else []) + tok.encode(doc)
    return ids


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_shards_equal_a_one_shot_encoding(fmt, kind, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "_BATCH_UNITS", 2)
    path, docs = write_corpus(fmt, tmp_path)
    # tiny blocks and shards: long documents are cut into many units and the split spans several shards
    data = prepare(path, tmp_path / "out", tokenizer=KINDS[kind], val_fraction=0.0, workers=2, block_chars=16,
                   shard_tokens=10)
    assert len(data.meta["shards"]["train"]) > 1 and len(data.val) == 0
    assert data.train.tolist() == _one_shot(data.tokenizer, docs)
    assert data.meta["train"]["chars"] == sum(map(len, docs))
    assert data.meta["train"]["bytes"] == sum(len(d.encode()) for d in docs)
    assert data.meta["train"]["documents"] == len(docs)


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_split_is_the_one_shot_encoding_of_its_documents(kind, tmp_path):
    path, docs = write_corpus("jsonl", tmp_path)
    data = prepare(path, tmp_path / "out", tokenizer=KINDS[kind], val_fraction=0.4, workers=1)
    seen = {}
    for split in ("train", "val"):
        table = getattr(data, split).segments()
        doc_ids = table[:, INDEX_COLUMNS.index("doc")].tolist()
        seen[split] = doc_ids
        assert getattr(data, split).tolist() == _one_shot(data.tokenizer, [docs[i] for i in doc_ids])
        assert data.meta[split]["bytes"] == sum(len(docs[i].encode()) for i in doc_ids)
    assert sorted(seen["train"] + seen["val"]) == list(range(len(docs))) and seen["val"]


def test_huge_single_file_splits_by_line_blocks(tmp_path):
    path = tmp_path / "big.txt"
    text = "".join(DOCS) * 40
    path.write_text(text, encoding="utf-8")
    data = prepare(path, tmp_path / "out", tokenizer=KINDS["char"], val_fraction=0.25, block_chars=64)
    val_chars, total = data.meta["val"]["chars"], len(text)
    assert abs(val_chars / total - 0.25) < 0.02  # error diffusion keeps the share, spread over the file
    units = data.val.segments()[:, INDEX_COLUMNS.index("unit")]
    assert units.min() < len(units) and units.max() > 3 * len(units)
    # every block is cut just after a line break between non-space characters
    tok = data.tokenizer
    newline = tok.encode("\n")[0]
    starts = data.val.segments()[:, INDEX_COLUMNS.index("token_start")]
    for s in starts[1:]:
        assert data.val[int(s)] == tok.eos_id and data.val[int(s) + 1] != newline


def test_stream_split_is_deterministic_and_keeps_the_fraction():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 500, size=2000).tolist()
    a = StreamSplit(0.1, seed=3)
    first = [a.take(n) for n in sizes]
    b = StreamSplit(0.1, seed=3)
    assert first == [b.take(n) for n in sizes]
    c = StreamSplit(0.1, seed=4)
    assert first != [c.take(n) for n in sizes]
    taken = sum(n for n, t in zip(sizes, first) if t)
    assert abs(taken - 0.1 * sum(sizes)) <= 500
    assert not any(StreamSplit(0.0).take(n) for n in sizes) and all(StreamSplit(1.0).take(n) for n in sizes)


def test_same_data_and_seed_give_the_same_split(tmp_path):
    path, _ = write_corpus("folder", tmp_path)
    a = prepare(path, tmp_path / "a", tokenizer=KINDS["char"], val_fraction=0.3, seed=1)
    b = prepare(path, tmp_path / "b", tokenizer=KINDS["char"], val_fraction=0.3, seed=1)
    assert a.val.tolist() == b.val.tolist() and a.train.tolist() == b.train.tolist()


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".bin", ".npy")}


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_interrupted_prepare_resumes_to_identical_shards(kind, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "_BATCH_UNITS", 3)  # many batches, so the interruption falls mid-way
    path = tmp_path / "c.txt"
    path.write_text("".join(DOCS) * 30, encoding="utf-8")
    opts = dict(tokenizer=KINDS[kind], val_fraction=0.2, block_chars=64, shard_tokens=300, workers=2)
    whole = prepare(path, tmp_path / "whole", **opts)
    calls = []

    def stop_after_some(phase, done, total):
        if phase == "tokenize":
            calls.append(done)
            if len(calls) == 6:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(path, tmp_path / "cut", progress=stop_after_some, **opts)
    partial = load_manifest(tmp_path / "cut")
    assert not partial["complete"] and 0 < partial["resume"]["units"]
    assert not [p for p in (tmp_path / "cut").iterdir() if "partial" in p.name or p.name.endswith(".tmp")]
    resumed = prepare(path, tmp_path / "cut", **opts)
    assert resumed.resumed and not resumed.reused
    assert _files(tmp_path / "cut") == _files(tmp_path / "whole")
    assert resumed.meta["train"] == whole.meta["train"] and resumed.meta["val"] == whole.meta["val"]


def load_manifest(folder):
    import json

    return json.loads((folder / "manifest.json").read_text())


def test_finished_prepare_is_reused_until_data_or_tokenizer_change(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    path, _ = write_corpus("jsonl", tmp_path)
    first = prepare(path, tokenizer=KINDS["char"])
    stamps = {p.name: p.stat().st_mtime_ns for p in first.cache_dir.iterdir()}
    again = prepare(path, tokenizer=KINDS["char"])
    assert again.reused and again.cache_dir == first.cache_dir
    assert {p.name: p.stat().st_mtime_ns for p in again.cache_dir.iterdir()} == stamps
    other = prepare(path, tokenizer=KINDS["word"])  # another tokenizer: another folder, built afresh
    assert not other.reused and other.cache_dir != first.cache_dir
    path.write_text(path.read_text() + '{"text": "a new document"}\n')
    changed = prepare(path, tokenizer=KINDS["char"])
    assert not changed.reused and changed.cache_dir == first.cache_dir
    assert changed.meta["train"]["documents"] + changed.meta["val"]["documents"] == len(DOCS) + 1


def test_tokenizer_is_trained_on_a_bounded_sample(tmp_path, monkeypatch):
    import lmforge.tokenizers.spec as prep  # TokenizerSpec.build trains through this module's train_tokenizer

    path = tmp_path / "c.txt"
    path.write_text("".join(DOCS) * 200, encoding="utf-8")
    fed = []
    real = prep.train_tokenizer

    def spy(kind, texts, **kw):
        def tap():
            for t in texts:
                fed.append(len(t))
                yield t
        return real(kind, tap(), **kw)

    monkeypatch.setattr(prep, "train_tokenizer", spy)
    prepare(path, tmp_path / "o", tokenizer=TokenizerSpec("char", sample_mb=0.01), block_chars=256)
    budget = 0.01 * 2 ** 20  # the corpus is 56 times larger; the sample is spread over it and stops at the budget
    assert 0.8 * budget <= sum(fed) <= budget + 4 * 256
    assert max(fed) <= 4 * 256  # pieces, never one giant string


def test_a_real_datasets_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")  # optional: the layout is also covered without it ("hf_disk")
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS, "n": list(range(len(DOCS)))}),
                               "test": datasets.Dataset.from_dict({"text": ["held out"], "n": [0]})})
    ds.save_to_disk(str(tmp_path / "ds"))
    data = prepare(tmp_path / "ds", tmp_path / "out", tokenizer=KINDS["char"], val_fraction=0.0)
    assert data.train.tolist() == _one_shot(data.tokenizer, DOCS)  # the train split only
