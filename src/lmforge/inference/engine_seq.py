"""One sequence of the batching engine (:mod:`lmforge.inference.engine`): its request, sampling and output.

A :class:`Sequence` is one choice of one request. It picks its own next token from its row of the batch's
logits (its logit bias, penalties, temperature and filters, and its own ``torch.Generator``), detects stop
tokens, stop strings and ``max_new_tokens``, and turns tokens into text pieces for its request's ``sink``
exactly as :func:`lmforge.inference.generation.stream` does (a piece never splits a UTF-8 character, and text
that may still become a stop string is held back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lmforge.inference.detokenize import IncrementalDetokenizer, StopStrings
from lmforge.inference.sampling import SAMPLERS, SamplingParams, SamplingState, active_processors, choose_next

__all__ = ["Event", "GenerationRequest", "Sequence", "TokenLogprob", "choose_plain", "coalesce"]


@dataclass
class TokenLogprob:
    """A generated token's log-probability under the model (``log_softmax`` of its raw logits), with the
    ``top`` most likely tokens as ``(token_id, logprob)`` pairs, most likely first."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Event:
    """What a request's ``sink`` receives: new text of choice ``index`` (and the tokens behind it); the last event
    of a choice has ``finish_reason`` (``"stop"``, ``"length"``, or ``"error"`` with ``error`` set)."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    finish_reason: Optional[str]
    completion_tokens: int
    prompt_tokens: int
    error: Optional[BaseException] = None


@dataclass
class GenerationRequest:
    """A request to the engine.

    Attributes:
        prompt_ids: the prompt's token ids (truncated to the model's context, keeping the end).
        params: sampling settings; choice ``i`` of a seeded request uses ``seed + i``.
        sink: called on the engine thread with each :class:`Event`; must not block.
        n: choices (independent sequences sharing one prefill).
        logprobs: None for none, else how many top alternatives to report with each token (0 = the token only).
        logit_bias: token id -> value added to its logit before sampling.
    """

    prompt_ids: list[int]
    params: SamplingParams
    sink: Callable[[Event], None]
    n: int = 1
    logprobs: Optional[int] = None
    logit_bias: dict[int, float] = field(default_factory=dict)


def _finite(x: Tensor, raw: Tensor) -> Tensor:
    """Processed logits made safe to sample from: overflowed maxima stay the (equal) maxima, NaN is dropped,
    and a row with nothing left falls back to the raw logits."""
    x = torch.nan_to_num(x.float(), nan=float("-inf"), posinf=torch.finfo(torch.float32).max)
    return x if bool(torch.isfinite(x).any()) else raw.float()


class Sequence:
    """One choice of a request while the engine works on it (created by :meth:`for_request`)."""

    def __init__(self, handle: Any, engine: Any, index: int) -> None:
        req: GenerationRequest = handle.request
        self.handle, self.request, self.index, self.group = handle, req, index, handle
        self.outbox: list[tuple[Callable[[Event], None], Event]] = engine.outbox  # sent after each iteration
        self.params = p = req.params
        ctx = engine.slots.max_context
        ids = list(req.prompt_ids)[-ctx:] if ctx else list(req.prompt_ids)
        self.prompt_tokens = len(ids)
        self.tokens = list(ids)  # everything fed or to feed: the source of a re-prefill
        self.to_prefill: list[int] = ids
        self.max_context = ctx
        self.scratch: Any = None  # the state of a prefill fed in chunks
        self.row: Optional[int] = None
        self.next_input = 0
        device = engine.device
        vocab = int(engine.model.config.vocab_size)
        self.processors = active_processors(p)
        self.sstate = SamplingState.create(p, [ids], vocab, device) if self.processors else None
        self.generator: Optional[torch.Generator] = None
        if p.seed is not None and not p.greedy:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(int(p.seed) + index)
        self.bias: Optional[Tensor] = None
        if req.logit_bias:
            self.bias = torch.zeros(1, vocab, device=device)
            for tok, value in req.logit_bias.items():
                self.bias[0, int(tok)] = float(value)
        eos = getattr(engine.tokenizer, "eos_id", None)
        self.stop_ids = set(p.stop_token_ids) | ({int(eos)} if eos is not None and not p.ignore_eos else set())
        self.detok = IncrementalDetokenizer(engine.tokenizer)
        self.stops = StopStrings(p.stop) if p.stop else None
        self.text, self.sent, self.n_gen = "", 0, 0
        self.pending_ids: list[int] = []
        self.pending_lp: list[TokenLogprob] = []
        # whether the next token depends only on the temperature (the engine then samples such rows together,
        # see choose_plain)
        self.plain = self.bias is None and self.processors in ([], [SAMPLERS.get("temperature")])

    @classmethod
    def for_request(cls, handle: Any, engine: Any, index: int) -> "Sequence":
        return cls(handle, engine, index)

    def shares_prefill_with(self, other: "Sequence") -> bool:
        """Whether this sequence can reuse ``other``'s prefill (same request, same untouched prompt)."""
        return self is other or (self.group is other.group and self.scratch is None and self.n_gen == 0)

    def start_refill(self) -> None:
        """Prepares a re-prefill from the latest tokens once the context is full (as offline generation does:
        keep three quarters of the context)."""
        keep = max(1, self.max_context - max(1, self.max_context // 4))
        self.to_prefill = self.tokens[-keep:]
        self.scratch = None
        self.group = object()

    # ------------------------------------------------------------------ choosing and emitting
    def _logprob(self, logits: Tensor, tok: int) -> TokenLogprob:
        lsm = F.log_softmax(logits.float(), dim=-1)[0]
        top: list[tuple[int, float]] = []
        k = int(self.request.logprobs or 0)
        if k > 0:
            values, ids = torch.topk(lsm, min(k, lsm.numel()))
            top = [(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist())]
        return TokenLogprob(tok, float(lsm[tok]), top)

    def take(self, logits: Tensor, row: int, tok: Optional[int] = None) -> bool:
        """Chooses the next token from row ``row`` of ``logits`` (n, V) (unless the engine already chose ``tok``)
        and reports it; False once the sequence is finished."""
        p = self.params
        if self.n_gen >= p.max_new_tokens:
            return self.finish("length")
        if tok is None or self.request.logprobs is not None:
            raw = logits[row:row + 1]
        if tok is None:
            x = raw if self.bias is None else raw + self.bias
            for proc in self.processors:
                x = proc(x, p, self.sstate)
            if self.processors and not bool(torch.isfinite(x.max())):  # NaN, +inf or nothing left
                x = _finite(x, raw)  # an extreme temperature or penalty overflowed
            tok = int(choose_next(x, p, [self.generator] if self.generator is not None else None)[0])
        self.n_gen += 1
        if self.sstate is not None and (self.sstate.seen is not None or self.sstate.counts is not None):
            self.sstate.update(torch.tensor([tok], device=logits.device))
        if tok in self.stop_ids:
            return self.finish("stop")
        self.tokens.append(tok)
        self.next_input = tok
        self.pending_ids.append(tok)
        if self.request.logprobs is not None:
            self.pending_lp.append(self._logprob(raw, tok))
        piece = self.detok.push_one(tok)
        if piece:
            before = len(self.text)
            self.text += piece
            if self.stops is not None:
                cut = self.stops.find(self.text, before)
                if cut >= 0:
                    self.text = self.text[:cut]
                    return self.finish("stop")
        safe = len(self.text) - (self.stops.held(self.text) if self.stops is not None else 0)
        if safe > self.sent:
            self._emit(self.text[self.sent:safe], None)
            self.sent = safe
        if self.n_gen >= p.max_new_tokens:
            return self.finish("length")
        return True

    def _emit(self, text: str, reason: Optional[str], error: Optional[BaseException] = None) -> None:
        event = Event(self.index, text, self.pending_ids, self.pending_lp, reason, self.n_gen, self.prompt_tokens,
                      error)
        self.pending_ids, self.pending_lp = [], []
        self.outbox.append((self.request.sink, event))

    def finish(self, reason: str) -> bool:
        """Sends the last event (what text was held back, and ``finish_reason``); returns False."""
        if reason == "length":
            before = len(self.text)
            self.text += self.detok.flush()
            if self.stops is not None:
                cut = self.stops.find(self.text, min(before, self.sent))
                if cut >= 0:
                    self.text, reason = self.text[:cut], "stop"
        self._emit(self.text[self.sent:], reason)
        self.sent = len(self.text)
        return False

    def fail(self, error: BaseException) -> None:
        """Ends the sequence with an error event."""
        self._emit("", "error", error)


def choose_plain(seqs: list["Sequence"], logits: Tensor) -> list[Optional[int]]:
    """Next tokens of the ``plain`` rows of ``logits`` (n, V) in a few batched operations, the same choice
    :func:`~lmforge.inference.sampling.choose_next` makes for each row alone (argmax when greedy, else the
    exponential race on the softmax of ``logits / temperature`` with the row's own generator); a row whose scaled
    logits overflowed chooses as :meth:`Sequence.take` would (from their finite part, with the noise row already
    drawn: one draw per step, as offline); ``None`` for the other rows, which choose one by one."""
    out: list[Optional[int]] = [None] * len(seqs)
    rows = [i for i, s in enumerate(seqs) if s.plain and s.n_gen < s.params.max_new_tokens]
    if not rows:
        return out
    sub = logits if len(rows) == len(seqs) else logits[rows]
    temps = [seqs[i].params.temperature for i in rows]
    sampled = [j for j, t in enumerate(temps) if t > 0]
    if len(sampled) < len(rows):
        picked = torch.argmax(sub, dim=-1)
    if sampled:
        part = sub if len(sampled) == len(rows) else sub[sampled]
        first = temps[sampled[0]]
        if all(temps[j] == first for j in sampled):  # one temperature (the usual case): no tensor to build
            scaled = part.float() if first == 1.0 else part.float() / first
        else:
            scaled = part.float() / torch.tensor([temps[j] for j in sampled], dtype=torch.float32,
                                                 device=sub.device).view(-1, 1)
        overflowed = []
        if not math.isfinite(float(scaled.sum())):  # a row overflowed (or a finite sum did): find which
            finite = torch.isfinite(scaled.max(dim=-1).values).tolist()
            overflowed = [k for k, f in enumerate(finite) if not f]
        probs = torch.softmax(scaled, dim=-1)
        owners = [seqs[rows[j]] for j in sampled]
        noise = torch.empty_like(probs)
        for seq, row in zip(owners, noise.unbind(0)):
            row.exponential_(generator=seq.generator)
        drawn = torch.argmax(probs / noise.clamp_min_(1e-30), dim=-1)
        for k in overflowed:  # as take() does: its processors' output made finite, with the same noise row
            x = scaled[k:k + 1]
            if owners[k].processors:
                x = _finite(x, part[k:k + 1])
            drawn[k] = torch.argmax(torch.softmax(x, dim=-1) / noise[k:k + 1], dim=-1)[0]
        if len(sampled) == len(rows):
            picked = drawn
        else:
            picked[sampled] = drawn
    for j, tok in enumerate(picked.tolist()):
        out[rows[j]] = tok
    return out


def coalesce(events: list[Event]) -> list[Event]:
    """Merges the events of each choice into one (texts, tokens and log-probabilities in order; the last finish
    reason and counts), so a stream that fell behind the engine catches up with one server-sent event per
    choice instead of one per token (the engine process sends a choice's events this way too, and the server's
    streams catch up with it). Choices keep their first-seen order; the events are not changed."""
    groups: dict[int, list[Event]] = {}
    for e in events:
        group = groups.get(e.index)
        if group is None:
            groups[e.index] = [e]
        else:
            group.append(e)
    out = []
    for group in groups.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        last = group[-1]
        reason = next((e.finish_reason for e in reversed(group) if e.finish_reason is not None), None)
        out.append(Event(last.index, "".join(e.text for e in group), [t for e in group for t in e.token_ids],
                         [lp for e in group for lp in e.logprobs], reason, last.completion_tokens,
                         last.prompt_tokens, last.error))
    return out
