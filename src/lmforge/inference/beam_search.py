"""Decoding for encoder-decoder models: greedy, sampling and batched beam search.

Every function works on any model with the incremental-decoding contract of :class:`Seq2SeqDecoder`
(both :mod:`lmforge.models.seq2seq` families have it). Hypotheses are returned without ``<bos>`` and ``<eos>``.

Beam search scores a finished hypothesis Y by ``log P(Y|X) / lp(Y)`` with the GNMT length penalty
``lp(Y) = ((5 + |Y|) / 6) ** alpha`` (arXiv:1609.08144, section 7), where |Y| counts the generated tokens including
``<eos>``. A sentence's search ends only when no live hypothesis can still beat its ``n_best``-th finished one
(log-probabilities only fall as a hypothesis grows, but ``lp`` grows too, so the bound uses ``lp(max_len)``),
not when the best hypothesis first emits ``<eos>``. Ties break deterministically: the better-ranked beam first,
then the lower token id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence, Union

import torch
from torch import Tensor

from lmforge.inference.sampling import filter_logits

__all__ = [
    "Seq2SeqDecoder", "Hypothesis", "length_penalty", "greedy_search", "sample_search", "beam_search",
    "default_max_len",
]


class Seq2SeqDecoder(Protocol):
    """The incremental-decoding contract the search functions use."""

    def start_decoding(self, src: Tensor) -> Any:
        """Encodes ``src`` (B, S) and returns a state whose ``select(index)`` picks rows."""
        ...

    def decode_step(self, tgt: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Feeds ``tgt`` (B, T) -> logits (B, T, V) and the new state."""
        ...


@dataclass
class Hypothesis:
    """One output of beam search.

    Attributes:
        tokens: generated ids, without ``<bos>`` and ``<eos>``.
        score: ``log_prob / lp(length)``, what hypotheses are ranked by.
        log_prob: total log-probability, including that of ``<eos>`` when it was generated.
        finished: ``False`` when ``max_len`` cut the hypothesis off (its ``<eos>`` was then forced, and
            ``log_prob`` counts that ``<eos>`` too).
    """

    tokens: list[int]
    score: float
    log_prob: float
    finished: bool = True


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ``((5 + length) / 6) ** alpha`` (arXiv:1609.08144); 1.0 when ``alpha`` is 0."""
    return ((5.0 + length) / 6.0) ** alpha


def default_max_len(src_len: int, model: Any = None, cap: Optional[int] = None) -> int:
    """A default output budget: ``1.5 * src_len + 10`` tokens, at most the model's ``max_len`` (or ``cap``)."""
    n = int(1.5 * src_len) + 10
    limit = cap if cap is not None else getattr(model, "max_len", None)
    return min(n, limit) if limit else n


MaxLen = Optional[Union[int, Sequence[int]]]


def _limits(max_len: MaxLen, src: Tensor, model: Any) -> list[int]:
    """Per-sentence output budgets: ``max_len`` for all, one per sentence, or (``None``) the default from each
    sentence's own unpadded length, so a sentence's result never depends on what it is batched with."""
    if max_len is None:
        lengths = src.ne(getattr(model, "pad_idx", 0)).sum(dim=1).tolist()
        return [default_max_len(int(n), model) for n in lengths]
    if isinstance(max_len, int):
        return [max_len] * src.size(0)
    limits = [int(m) for m in max_len]
    if len(limits) != src.size(0):
        raise ValueError(f"max_len has {len(limits)} entries for {src.size(0)} sentences")
    return limits


def _step_logprobs(model: Any, tokens: Tensor, state: Any, banned: Sequence[int]) -> tuple[Tensor, Any]:
    logits, state = model.decode_step(tokens, state)
    logp = torch.log_softmax(logits[:, -1].float(), dim=-1)  # (N, V)
    if banned:
        logp[:, list(banned)] = float("-inf")
    return logp, state


def _start(model: Any, src: Tensor, bos_id: int) -> tuple[Any, Tensor]:
    state = model.start_decoding(src)
    return state, torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)


@torch.no_grad()
def greedy_search(
    model: Any, src: Tensor, *, bos_id: int, eos_id: int, max_len: MaxLen = None,
    banned_ids: Sequence[int] = (),
) -> list[list[int]]:
    """Picks the most likely token at each step (the lower id on a tie) until ``<eos>`` or ``max_len`` tokens.

    Args:
        model: a :class:`Seq2SeqDecoder`.
        src: (B, S) right-padded source ids.
        bos_id: the id the decoder starts from.
        eos_id: the id that ends a hypothesis.
        max_len: the most tokens to generate (``<eos>`` not counted), for all sentences or one per sentence;
            default :func:`default_max_len` of each sentence's own length.
        banned_ids: ids never generated (e.g. ``<pad>``, ``<bos>``).

    Returns:
        B lists of ids, without ``<bos>``/``<eos>``.
    """
    limits = _limits(max_len, src, model)
    state, tok = _start(model, src, bos_id)
    out = [[] for _ in range(src.size(0))]
    alive = torch.arange(src.size(0), device=src.device)
    for _ in range(max(limits, default=0)):
        logp, state = _step_logprobs(model, tok, state, banned_ids)
        nxt = logp.argmax(dim=-1)  # argmax returns the first (lowest) index on ties
        keep = []
        for row, (sent, t) in enumerate(zip(alive.tolist(), nxt.tolist())):
            if t == eos_id or len(out[sent]) >= limits[sent]:
                continue
            out[sent].append(t)
            keep.append(row)
        if not keep:
            break
        if len(keep) < len(alive):
            idx = torch.tensor(keep, device=src.device)
            alive, state, nxt = alive[idx], state.select(idx), nxt[idx]
        tok = nxt[:, None]
    return out


@torch.no_grad()
def sample_search(
    model: Any, src: Tensor, *, bos_id: int, eos_id: int, max_len: MaxLen = None,
    temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
    generator: Optional[torch.Generator] = None, banned_ids: Sequence[int] = (),
) -> list[list[int]]:
    """Samples each token from the (temperature-scaled, top-k/top-p filtered) distribution.

    ``temperature=0`` is greedy. Pass a seeded ``generator`` for reproducible samples. Other arguments as in
    :func:`greedy_search`.
    """
    if temperature == 0:
        return greedy_search(model, src, bos_id=bos_id, eos_id=eos_id, max_len=max_len, banned_ids=banned_ids)
    limits = _limits(max_len, src, model)
    state, tok = _start(model, src, bos_id)
    out = [[] for _ in range(src.size(0))]
    alive = list(range(src.size(0)))
    for _ in range(max(limits, default=0)):
        logp, state = _step_logprobs(model, tok, state, banned_ids)
        probs = filter_logits(logp / temperature, top_k, top_p).softmax(dim=-1)
        nxt = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(src.device)
        keep = [row for row, t in enumerate(nxt.tolist())
                if t != eos_id and len(out[alive[row]]) < limits[alive[row]]]
        for row in keep:
            out[alive[row]].append(int(nxt[row]))
        if not keep:
            break
        if len(keep) < len(alive):
            idx = torch.tensor(keep, device=src.device)
            alive, state, nxt = [alive[r] for r in keep], state.select(idx), nxt[idx]
        tok = nxt[:, None]
    return out


def _topk_ordered(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best entries of each row of ``scores`` (N, M), ordered by value, then by lower index on ties.

    ``torch.topk`` leaves the order of equal values unspecified, so ties are re-ordered here; when a tie crosses
    the k-th place, a full stable sort decides which entries get in.
    """
    k = min(k, scores.size(1))
    kk = min(k + 1, scores.size(1))
    vals, idx = scores.topk(kk, dim=1)
    if kk > k and bool((vals[:, k - 1] == vals[:, k]).any()):
        vals, idx = scores.sort(dim=1, descending=True, stable=True)
        return vals[:, :k], idx[:, :k]
    idx, perm = idx[:, :k].sort(dim=1)  # by index ...
    vals = vals[:, :k].gather(1, perm)
    vals, perm = vals.sort(dim=1, descending=True, stable=True)  # ... then by value, keeping index order on ties
    return vals, idx.gather(1, perm)


def _record_finished(ends: list[list[int]], top_v: Tensor, beam: Tensor, seqs: Tensor, active: list[int],
                     finished: list[list[tuple[float, int, Hypothesis]]], counter: int, k: int, lp_now: float,
                     step: int, limits: list[int]) -> int:
    """Files each ``<eos>`` candidate ``(row, rank)`` of ``ends`` as a finished hypothesis of its sentence;
    returns the updated tie-break counter (one host transfer per step, not per candidate)."""
    if not ends:
        return counter
    values, beams, prefixes = top_v.tolist(), beam.tolist(), seqs[:, 1:].tolist()
    for row, r in ends:
        sent, total = active[row], values[row][r]
        hyp = Hypothesis(prefixes[row * k + beams[row][r]], total / lp_now, total, finished=step < limits[sent])
        finished[sent].append((-hyp.score, counter, hyp))
        counter += 1
    return counter


def _sentence_done(finished: list[tuple[float, int, Hypothesis]], n_best: int, best_live: float) -> bool:
    """Whether no live hypothesis (at best ``best_live``) can beat the sentence's ``n_best``-th finished one."""
    return len(finished) >= n_best and -sorted(finished)[n_best - 1][0] >= best_live


@torch.no_grad()
def beam_search(
    model: Any, src: Tensor, *, bos_id: int, eos_id: int, beam_size: int = 5, alpha: float = 0.6,
    n_best: int = 1, max_len: MaxLen = None, banned_ids: Sequence[int] = (),
) -> list[list[Hypothesis]]:
    """Batched beam search with the GNMT length penalty and exact finishing.

    Args:
        model: a :class:`Seq2SeqDecoder`.
        src: (B, S) right-padded source ids; all B sentences are searched together.
        bos_id: the id the decoder starts from.
        eos_id: the id that ends a hypothesis.
        beam_size: live hypotheses kept per sentence.
        alpha: length-penalty exponent (0 ranks by plain log-probability).
        n_best: hypotheses returned per sentence (at most ``beam_size``).
        max_len: the most tokens per hypothesis (``<eos>`` not counted), for all sentences or one per sentence
            (default :func:`default_max_len` of each sentence's own length); after that many, ``<eos>`` is forced.
        banned_ids: ids never generated (e.g. ``<pad>``, ``<bos>``).

    Returns:
        For each sentence, its ``n_best`` hypotheses, best first.
    """
    if beam_size < 1 or not 1 <= n_best <= beam_size:
        raise ValueError(f"need beam_size >= 1 and 1 <= n_best <= beam_size, got {beam_size} and {n_best}")
    if alpha < 0:
        raise ValueError(f"the length-penalty exponent alpha must be >= 0, got {alpha}")
    b, k = src.size(0), beam_size
    limits = _limits(max_len, src, model)
    device = src.device
    state = model.start_decoding(src).select(torch.arange(b, device=device).repeat_interleave(k))
    seqs = torch.full((b * k, 1), bos_id, dtype=torch.long, device=device)  # (N*K, t) live hypotheses
    cum = torch.zeros(b, k, device=device)
    cum[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    finished: list[list[tuple[float, int, Hypothesis]]] = [[] for _ in range(b)]
    active = list(range(b))  # sentence of each row block still searching
    lp_max = torch.tensor([length_penalty(m + 1, alpha) if alpha > 0 else 1.0 for m in limits], device=device)
    counter = 0
    for step in range(max(limits, default=0) + 1):
        n = len(active)
        logp, state = _step_logprobs(model, seqs[:, -1:], state, banned_ids)  # (n*K, V)
        v = logp.size(1)
        at_limit = torch.tensor([step >= limits[s] for s in active], device=device).repeat_interleave(k)  # (n*K,)
        if bool(at_limit.any()):  # a sentence's last allowed token must be <eos>
            eos_col = logp[:, eos_id].clone()
            logp[at_limit] = float("-inf")
            logp[:, eos_id] = eos_col
        cand = (cum.view(n * k, 1) + logp).view(n, k * v)  # (n, K*V)
        top_v, top_i = _topk_ordered(cand, 2 * k)  # (n, 2K): at most K of them are <eos>, one per beam
        beam, tok = top_i // v, top_i % v
        is_eos = tok.eq(eos_id)
        lp_now = length_penalty(step + 1, alpha)
        # only <eos> candidates that rank within the beam finish (one host transfer per step, not per candidate)
        ends = (is_eos[:, :k] & torch.isfinite(top_v[:, :k])).nonzero().tolist()
        counter = _record_finished(ends, top_v, beam, seqs, active, finished, counter, k, lp_now, step, limits)
        # the K best non-<eos> candidates continue (stable: rank order kept)
        rank = torch.arange(2 * k, device=device).expand(n, 2 * k)
        pick = (is_eos.long() * 2 * k + rank).argsort(dim=1)[:, :k]  # (n, K)
        cum = top_v.gather(1, pick)
        origin = (beam.gather(1, pick) + torch.arange(n, device=device)[:, None] * k).view(-1)  # (n*K,)
        seqs = torch.cat((seqs.index_select(0, origin), tok.gather(1, pick).view(-1, 1)), dim=1)
        state = state.select(origin)
        # a sentence is done when no live hypothesis can beat its n_best-th finished one
        # cum <= 0, so dividing by the largest penalty reachable bounds any future score of a live hypothesis
        best_live = (cum.max(dim=1).values / lp_max[torch.tensor(active, device=device)]).tolist()
        keep = [row for row, sent in enumerate(active) if not _sentence_done(finished[sent], n_best, best_live[row])]
        if not keep:
            active = []
            break
        if len(keep) < n:
            idx = torch.tensor(keep, device=device)
            rows = (idx[:, None] * k + torch.arange(k, device=device)).view(-1)
            active = [active[r] for r in keep]
            cum, seqs, state = cum.index_select(0, idx), seqs.index_select(0, rows), state.select(rows)
    return [[h for _, _, h in sorted(f)[:n_best]] for f in finished]
