"""Embeddings: pooling over real tokens, unit length, invariance to batching; retrieval metrics and index."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from lmforge.config import LSTMConfig, TransformerConfig
from lmforge.inference.embeddings import Embedder, weights_fingerprint
from lmforge.inference.retrieval import (
    SearchIndex,
    evaluate_retrieval,
    load_or_build_index,
    mean_reciprocal_rank,
    read_texts,
    recall_at_k,
)
from lmforge.models import build_model
from lmforge.tokenizers import train_tokenizer

TEXTS = ["a", "the quick brown fox", "jumps over the lazy dog again and again", "hello world", "zz", "quick"]


@pytest.fixture
def tok():
    return train_tokenizer("char", TEXTS)


def _models(vocab):
    torch.manual_seed(0)
    return [
        build_model(TransformerConfig(vocab_size=vocab, d_model=32, num_layers=2, block_size=64,
                                      attention={"num_heads": 4})).eval(),
        build_model(LSTMConfig(vocab_size=vocab, embedding_dim=32, hidden_dim=32, num_layers=2, dropout=0.0)).eval(),
    ]


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_vectors_do_not_depend_on_the_batch(tok, index, pooling):
    model = _models(tok.vocab_size)[index]
    emb = Embedder(model, tok, pooling=pooling, batch_size=4)
    together = emb.embed(TEXTS)
    alone = np.stack([emb.embed([t])[0] for t in TEXTS])
    shuffled_order = [3, 0, 5, 1, 4, 2]
    shuffled = emb.embed([TEXTS[i] for i in shuffled_order])
    assert together.shape == (len(TEXTS), model.hidden_size) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(shuffled, together[shuffled_order], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("index", [0, 1])
def test_pooling_matches_a_direct_computation(tok, index):
    model = _models(tok.vocab_size)[index]
    text = TEXTS[2]
    with torch.no_grad():
        h = model.hidden_states(torch.tensor([tok.encode(text)]))[0]  # (T, D), no padding at all
    for pooling, ref in (("mean", h.mean(0)), ("last", h[-1])):
        ref = (ref / ref.norm()).numpy()
        got = Embedder(model, tok, pooling=pooling).embed([text, "a"])[0]
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_metrics_by_hand():
    ranked = [[2, 0, 1], [1, 2, 0], [0, 1, 2]]
    relevant = [0, {0, 2}, 2]
    assert recall_at_k(ranked, relevant, 1) == pytest.approx((0 + 0 + 0) / 3)
    assert recall_at_k(ranked, relevant, 2) == pytest.approx((1 + 0.5 + 0) / 3)
    assert mean_reciprocal_rank(ranked, relevant) == pytest.approx((1 / 2 + 1 / 2 + 1 / 3) / 3)


def test_index_saved_reused_and_rebuilt(tok, tmp_path):
    model = _models(tok.vocab_size)[1]
    emb = Embedder(model, tok)
    path = tmp_path / "index.npz"
    index, rebuilt = load_or_build_index(emb, TEXTS, path)
    assert rebuilt and path.is_file()
    again, rebuilt = load_or_build_index(emb, TEXTS, path)
    assert not rebuilt and np.array_equal(again.vectors, index.vectors) and again.docs == TEXTS
    _, rebuilt = load_or_build_index(emb, TEXTS + ["new doc"], path)  # documents changed
    assert rebuilt
    with torch.no_grad():
        next(model.parameters()).add_(0.1)  # the model changed
    _, rebuilt = load_or_build_index(Embedder(model, tok), TEXTS + ["new doc"], path)
    assert rebuilt
    hits = SearchIndex.load(path).search(Embedder(model, tok), TEXTS[1], top_k=2)
    assert hits[0].text == TEXTS[1] and hits[0].score == pytest.approx(1.0, abs=1e-5)
    path.write_bytes(b"garbage")
    _, rebuilt = load_or_build_index(Embedder(model, tok), TEXTS, path)  # an unreadable index is rebuilt
    assert rebuilt


def test_read_texts(tmp_path):
    (tmp_path / "d.txt").write_text("one\n\ntwo\n")
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    assert read_texts(tmp_path / "d.txt") == ["one", "two"]
    assert read_texts(tmp_path / "d.jsonl") == ["a", "b"]


# ---------------------------------------------------------------- retrieval: trained vs random embeddings
TOPICS = [[f"{t}{w}" for w in "abcdefghij"] for t in "klmnopqr"]  # 8 topics x 10 words, disjoint


def _sentence(rng, words, n=6):
    return " ".join(rng.choice(words) for _ in range(n))


def test_trained_embeddings_rank_better_than_random_ones():
    rng = random.Random(0)
    corpus = [_sentence(rng, topic) for topic in TOPICS for _ in range(40)]
    rng.shuffle(corpus)
    tok = train_tokenizer("word", corpus, vocab_size=128)
    # documents use a topic's first five words, queries its last five: no word in common, so only a model
    # that learned which words go together can match them (a random model's pooled vectors cannot)
    docs, doc_topic = [], []
    for t, topic in enumerate(TOPICS):
        for _ in range(3):
            docs.append(_sentence(rng, topic[:5], 8))
            doc_topic.append(t)
    queries = [_sentence(rng, topic[5:], 8) for topic in TOPICS]
    relevant = [{i for i, dt in enumerate(doc_topic) if dt == t} for t in range(len(TOPICS))]

    torch.manual_seed(0)
    model = build_model(LSTMConfig(vocab_size=tok.vocab_size, embedding_dim=32, hidden_dim=32, num_layers=1, dropout=0.0))
    random_scores = evaluate_retrieval(Embedder(model.eval(), tok), queries, docs, relevant, ks=(3,))
    before = weights_fingerprint(model)

    ids = torch.tensor([i for s in corpus for i in tok.encode(s) + [tok.eos_id]])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(100):
        starts = torch.randint(0, len(ids) - 33, (16,), generator=gen)
        x = torch.stack([ids[s:s + 32] for s in starts.tolist()])
        y = torch.stack([ids[s + 1:s + 33] for s in starts.tolist()])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert weights_fingerprint(model) != before
    trained_scores = evaluate_retrieval(Embedder(model, tok), queries, docs, relevant, ks=(3,))
    assert trained_scores["mrr"] > random_scores["mrr"] + 0.3
    assert trained_scores["recall@3"] > random_scores["recall@3"] + 0.3
    assert trained_scores["mrr"] > 0.8
