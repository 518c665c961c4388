"""Greedy, sampling and beam search: beam 1 == greedy, finishing by normalised score, n-best, ties, batching."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lmforge.config import Seq2SeqLSTMConfig, Seq2SeqTransformerConfig
from lmforge.inference.beam_search import beam_search, greedy_search, length_penalty, sample_search
from lmforge.models import build_model

BOS, EOS, A, B = 0, 1, 2, 3  # ids of the table model


class _State:
    def __init__(self, prefix: torch.Tensor) -> None:
        self.prefix = prefix

    def select(self, index: torch.Tensor) -> "_State":
        return _State(self.prefix.index_select(0, index))


class TableModel:
    """A decoder whose next-token distribution is ``table(prefix)``, a hand-written function of the prefix."""

    def __init__(self, table, vocab: int = 4) -> None:
        self.table, self.vocab, self.max_len = table, vocab, 32

    def start_decoding(self, src: torch.Tensor) -> _State:
        return _State(torch.zeros(src.size(0), 0, dtype=torch.long))

    def decode_step(self, tgt: torch.Tensor, state: _State):
        prefix = torch.cat([state.prefix, tgt], dim=1)
        rows = [torch.tensor(self.table(tuple(p[1:]))).log() for p in prefix.tolist()]
        return torch.stack(rows)[:, None, :], _State(prefix)

    def logprob(self, seq: tuple[int, ...]) -> float:
        return sum(math.log(self.table(seq[:i])[t]) for i, t in enumerate(seq))


def trap_table(prefix: tuple[int, ...]) -> list[float]:
    """<eos> is the most likely first token, but 'a a a a a <eos>' wins once length is normalised."""
    if not prefix:
        return [0.0, 0.40, 0.35, 0.25]
    if prefix[0] == A and all(t == A for t in prefix):
        return [0.0, 0.97, 0.02, 0.01] if len(prefix) >= 5 else [0.0, 0.02, 0.97, 0.01]
    return [0.0, 0.5, 0.25, 0.25]


def brute_force_best(model: TableModel, alpha: float, max_len: int) -> tuple[int, ...]:
    best, best_score = None, -math.inf
    for n in range(max_len):
        for body in itertools.product([A, B], repeat=n):
            seq = body + (EOS,)
            score = model.logprob(seq) / length_penalty(len(seq), alpha)
            if score > best_score:
                best, best_score = body, score
    return best


def first_eos_beam(model: TableModel, beam: int, alpha: float, max_len: int) -> tuple[int, ...]:
    """The flawed rule: stop as soon as the top-ranked candidate of a step is <eos>."""
    beams = [((), 0.0)]
    for _ in range(max_len):
        cands = sorted(((s + (t,), lp + math.log(p)) for s, lp in beams for t, p in enumerate(model.table(s)) if p > 0),
                       key=lambda c: -c[1] / length_penalty(len(c[0]), alpha))
        if cands[0][0][-1] == EOS:
            return cands[0][0][:-1]
        beams = [c for c in cands if c[0][-1] != EOS][:beam]
    return beams[0][0]


def test_beam_finishes_by_normalised_score_not_first_eos() -> None:
    model, src = TableModel(trap_table), torch.zeros(1, 3, dtype=torch.long)
    assert first_eos_beam(model, beam=2, alpha=1.0, max_len=10) == ()  # the trap works on the flawed rule
    best = brute_force_best(model, alpha=1.0, max_len=10)
    assert best == (A,) * 5
    hyp = beam_search(model, src, bos_id=BOS, eos_id=EOS, beam_size=2, alpha=1.0, max_len=10)[0][0]
    assert tuple(hyp.tokens) == best
    assert hyp.log_prob == pytest.approx(model.logprob(best + (EOS,)), abs=1e-5)
    assert hyp.score == pytest.approx(hyp.log_prob / length_penalty(6, 1.0), abs=1e-5)
    # without a length penalty the short hypothesis is the true optimum, and beam search returns it
    plain = beam_search(model, src, bos_id=BOS, eos_id=EOS, beam_size=2, alpha=0.0, max_len=10)[0][0]
    assert tuple(plain.tokens) == brute_force_best(model, 0.0, 10) == ()


def test_beam_ties_break_by_lower_token_id() -> None:
    tie = lambda p: [0.0, 0.0, 0.5, 0.5] if len(p) < 2 else [0.0, 1.0, 0.0, 0.0]  # noqa: E731
    src = torch.zeros(2, 3, dtype=torch.long)
    for _ in range(3):
        hyps = beam_search(TableModel(tie), src, bos_id=BOS, eos_id=EOS, beam_size=3, n_best=3, alpha=0.0)
        assert [h.tokens for h in hyps[0]] == [[A, A], [A, B], [B, A]]
        assert hyps[0] == hyps[1]
    assert greedy_search(TableModel(tie), src, bos_id=BOS, eos_id=EOS) == [[A, A], [A, A]]


def _models():
    with torch.random.fork_rng():  # the same weights whatever ran before (an unlucky draw can say EOS at once)
        torch.manual_seed(1)
        return _build_models()


def _build_models():
    t = build_model(Seq2SeqTransformerConfig(src_vocab_size=24, tgt_vocab_size=20, d_model=32, num_heads=2,
                                             num_encoder_layers=1, num_decoder_layers=2, d_ff=64, dropout=0.0,
                                             max_len=20)).eval()
    s = build_model(Seq2SeqLSTMConfig(src_vocab_size=24, tgt_vocab_size=20, emb_dim=16, hidden_dim=32, num_layers=2,
                                      dropout=0.0, attention="general", max_len=20)).eval()
    return [pytest.param(t, id="transformer"), pytest.param(s, id="lstm")]


def _src() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    src = torch.randint(4, 24, (4, 7), generator=g)
    src[1, 5:], src[2, 3:] = 0, 0
    return src


@pytest.mark.parametrize("model", _models())
def test_beam_size_one_equals_greedy(model) -> None:
    src = _src()
    greedy = greedy_search(model, src, bos_id=2, eos_id=3, max_len=12, banned_ids=[0, 2])
    beam = beam_search(model, src, bos_id=2, eos_id=3, beam_size=1, alpha=0.0, max_len=12, banned_ids=[0, 2])
    assert [h[0].tokens for h in beam] == greedy
    assert any(len(g) > 0 for g in greedy)


@pytest.mark.parametrize("model", _models())
def test_beam_batched_equals_one_at_a_time_and_scores_are_true(model) -> None:
    src = _src()
    batched = beam_search(model, src, bos_id=2, eos_id=3, beam_size=4, n_best=3, alpha=0.6, max_len=12,
                          banned_ids=[0, 2])
    for i in range(src.size(0)):
        row = src[i:i + 1, : int(src[i].ne(0).sum())]
        alone = beam_search(model, row, bos_id=2, eos_id=3, beam_size=4, n_best=3, alpha=0.6, max_len=12,
                            banned_ids=[0, 2])[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        for h in batched[i]:  # log-probabilities re-scored by teacher forcing
            tgt_in = torch.tensor([[2] + h.tokens])
            out = h.tokens + [3]
            logp = model(row, tgt_in).log_softmax(-1)[0, torch.arange(len(out)), out].sum().item()
            assert h.log_prob == pytest.approx(logp, abs=1e-4)
            assert h.score == pytest.approx(h.log_prob / length_penalty(len(out), 0.6), abs=1e-4)
        scores = [h.score for h in batched[i]]
        assert scores == sorted(scores, reverse=True) and len({tuple(h.tokens) for h in batched[i]}) == 3


@pytest.mark.parametrize("model", _models())
def test_max_len_is_respected(model) -> None:
    for hyps in beam_search(model, _src(), bos_id=2, eos_id=3, beam_size=3, max_len=4, banned_ids=[0, 2]):
        assert len(hyps[0].tokens) <= 4
    assert all(len(g) <= 4 for g in greedy_search(model, _src(), bos_id=2, eos_id=3, max_len=4))


@pytest.mark.parametrize("model", _models())
def test_sampling_is_seeded_and_top_k_one_is_greedy(model) -> None:
    src = _src()
    run = lambda seed: sample_search(model, src, bos_id=2, eos_id=3, max_len=10,  # noqa: E731
                                     generator=torch.Generator().manual_seed(seed), banned_ids=[0, 2])
    assert run(1) == run(1)
    assert run(1) != run(2)
    top1 = sample_search(model, src, bos_id=2, eos_id=3, max_len=10, top_k=1, banned_ids=[0, 2])
    assert top1 == greedy_search(model, src, bos_id=2, eos_id=3, max_len=10, banned_ids=[0, 2])
    nucleus = sample_search(model, src, bos_id=2, eos_id=3, max_len=10, top_p=1e-6, banned_ids=[0, 2])
    assert nucleus == top1


def test_sampling_follows_the_distribution() -> None:
    table = lambda p: [0.0, 1.0, 0.0, 0.0] if p else [0.0, 0.0, 0.7, 0.3]  # noqa: E731
    src = torch.zeros(2000, 1, dtype=torch.long)
    out = sample_search(TableModel(table), src, bos_id=BOS, eos_id=EOS, generator=torch.Generator().manual_seed(0))
    share = sum(o == [A] for o in out) / len(out)
    assert 0.66 < share < 0.74
    top_p = sample_search(TableModel(table), src[:200], bos_id=BOS, eos_id=EOS, top_p=0.6)
    assert all(o == [A] for o in top_p)
