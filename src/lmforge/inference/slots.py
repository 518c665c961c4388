"""Decoding state for many sequences at once: the slot caches the batching engine keeps its sequences in.

A *slot* is one row of a batched decoding state. A sequence is prefilled alone in a scratch state of batch 1
(in bounded chunks), then copied into a free slot; from then on one decoding call advances every occupied slot
by one token. The occupied slots are always rows ``0 .. n-1`` (a leaving sequence's row is refilled by moving
the last occupied row into it), so a step runs on a view of the first ``n`` rows and never on empty ones.

* :class:`LSTMSlots`: the LSTM's ``(h, c)`` of shape (L, slots, H); a row is just its two vectors per layer.
* :class:`KVSlots`: the Transformer's key/value cache (the model's own ``KVCache`` or the fast decoder's). All
  rows share one column cursor, but each row marks which columns hold its tokens (``valid``) and counts its own
  positions (``seen``), so sequences of different lengths share the batch without recomputation: a new row's
  prompt keys are written to the columns just before the cursor, and its own positions stay 0, 1, 2... (keys
  carry their rotary position already; attention over a set of keys does not depend on their column). When
  the cursor reaches the end of the buffer, :meth:`KVSlots._compact` moves each row's keys to the right end of
  the columns it needs. This is the slot flavour of the per-sequence cache management of vLLM's paged
  attention (Kwon et al., arXiv:2309.06180), without pages: a slot holds up to the model's context.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import Tensor

from lmforge.models.transformer.cache import KVCache
from lmforge.models.transformer.decode import fast_decoder

__all__ = ["LSTMSlots", "KVSlots", "make_slots"]


class LSTMSlots:
    """Batched ``(h, c)`` rows of an LSTM language model.

    Args:
        model: the ``LSTMLanguageModel`` (anything with ``init_state``/``step`` whose state is ``(h, c)``).
        slots: the most sequences decoded together.
    """

    max_context: Optional[int] = None
    ragged = False  # feed() needs prompts of one length (padding would run through the recurrence)

    def __init__(self, model: Any, slots: int) -> None:
        self.model = model
        self.slots = slots
        self.h, self.c = model.init_state(slots)

    def scratch(self, rows: int = 1) -> Any:
        """A fresh state of ``rows`` rows to prefill prompts into."""
        return self.model.init_state(rows)

    def feed(self, scratch: Any, ids: list[list[int]]) -> tuple[Tensor, Any]:
        """Feeds equally long ``ids`` (one list per scratch row); returns their last logits (rows, V)."""
        idx = torch.as_tensor(ids, dtype=torch.long, device=self.h.device)
        logits, scratch = self.model.step(idx, scratch)
        return logits[:, -1], scratch

    def insert(self, row: int, scratch: Any, srow: int = 0) -> None:
        """Copies row ``srow`` of a prefilled scratch state into ``row``."""
        self.h[:, row] = scratch[0][:, srow]
        self.c[:, row] = scratch[1][:, srow]

    def move(self, src: int, dst: int) -> None:
        """Copies row ``src`` into row ``dst``."""
        self.h[:, dst] = self.h[:, src]
        self.c[:, dst] = self.c[:, src]

    def full(self, row: int) -> bool:
        """Whether ``row`` can take no more tokens (never, for an LSTM)."""
        return False

    def reset(self) -> None:
        """Empties every row (rows are overwritten when a sequence joins; nothing to clear)."""

    def decode(self, tokens: Tensor) -> Tensor:
        """Feeds one token per occupied row (``tokens`` (n,)); returns their next-token logits (n, V)."""
        n = tokens.numel()
        state = (self.h[:, :n].contiguous(), self.c[:, :n].contiguous())
        logits, (h, c) = self.model.step(tokens.view(n, 1), state)
        self.h[:, :n] = h
        self.c[:, :n] = c
        return logits[:, -1]


def _layers(state: Any) -> list[tuple[Tensor, Tensor]]:
    """Per layer ``(k, v)`` views of shape (B, Hkv, S, hd), for a list-of-layers cache or an (L, B, ...) one."""
    return [(state.k[i], state.v[i]) for i in range(len(state.k))]


def _rows(state: Any, n: int, base: int) -> Any:
    """A shallow copy of ``state`` seeing only rows ``0 .. n-1`` and columns from ``base`` on (its tensors are
    views: writes go through); its ``length`` counts from ``base``."""
    view = copy.copy(state)
    if isinstance(state.k, list):
        view.k, view.v = [t[:n, :, base:] for t in state.k], [t[:n, :, base:] for t in state.v]
    else:
        view.k, view.v = state.k[:, :n, :, base:], state.v[:, :n, :, base:]
    view.valid = state.valid[:n, base:]
    view.seen = state.seen[:n]
    if hasattr(state, "positions"):
        view.positions = state.positions[:n, base:]
    view.length = state.length - base
    return view


class KVSlots:
    """A Transformer's key/value cache used as ``slots`` rows of independent sequences (module docstring).

    Args:
        decoder: the model, or its fast decoding path (:func:`lmforge.models.transformer.decode.fast_decoder`);
            its ``init_state`` must return a cache with ``k``, ``v``, ``valid``, ``seen``, ``length`` and
            ``padded`` (both do).
        max_context: the model's context length (a row holds at most this many tokens).
        slots: the most sequences decoded together.
    """

    def __init__(self, decoder: Any, max_context: int, slots: int) -> None:
        self.decoder = decoder
        self.max_context = max_context
        self.slots = slots
        # four contexts' worth of columns, so the cursor rarely has to be brought back (a compaction); each step
        # only sees the window of columns that hold some row's tokens (at most a context)
        if isinstance(decoder, torch.nn.Module):
            k = decoder.init_state(1).k
            state = KVCache(k.size(0), slots, k.size(2), k.size(4), None, device=k.device, dtype=k.dtype,
                            capacity=4 * max_context)  # allocated up front: views of its rows must not regrow
        else:
            state = decoder.init_state(slots, spare=3 * max_context)
        if not hasattr(state, "valid"):
            raise TypeError(f"{type(state).__name__} has no per-row slots; this model cannot be batched")
        for k, v in _layers(state):  # masked columns are still read (weight 0): no NaN from uninitialised memory
            k.zero_()
            v.zero_()
        state.padded = True  # every row has its own columns and positions from the start
        self.state = state
        self.columns = state.valid.size(1)

    def scratch(self, rows: int = 1) -> Any:
        return self.decoder.init_state(rows)

    ragged = True  # feed() takes prompts of different lengths in one call

    def feed(self, scratch: Any, ids: list[list[int]]) -> tuple[Tensor, Any]:
        """Feeds ``ids`` (one list per scratch row) into a fresh ``scratch``; returns their last logits (rows, V).
        Rows of different lengths are left-padded and masked, each keeping its own positions 0, 1, 2..., so a
        row gives what it gives alone (as batched ``generate`` does)."""
        device = self.state.valid.device
        width = max(len(r) for r in ids)
        idx = torch.as_tensor([[0] * (width - len(r)) + list(r) for r in ids], dtype=torch.long, device=device)
        mask = None  # equally long rows need none
        if any(len(r) < width for r in ids):
            mask = torch.as_tensor([[False] * (width - len(r)) + [True] * len(r) for r in ids], device=device)
        logits, scratch = self.decoder.step(idx, scratch, attention_mask=mask)
        return logits[:, -1], scratch

    def insert(self, row: int, scratch: Any, srow: int = 0) -> None:
        """Writes row ``srow`` of a prefilled scratch cache (its ``p`` real tokens, the last ``p`` columns when
        the scratch was left-padded) into the ``p`` columns before the cursor of ``row``."""
        st, width = self.state, int(scratch.length)
        p = int(scratch.seen[srow]) if scratch.padded else width
        if st.length < p:  # move the cursor on; the skipped columns hold nothing for any row
            st.valid[:, st.length:p] = False
            st.length = p
        end = st.length
        st.valid[row] = False
        st.valid[row, end - p:end] = True
        for (kb, vb), (ks, vs) in zip(_layers(st), _layers(scratch)):
            kb[row, :, end - p:end] = ks[srow, :, width - p:width]
            vb[row, :, end - p:end] = vs[srow, :, width - p:width]
        st.seen[row] = p
        if hasattr(st, "positions"):
            st.positions[row, end - p:end] = torch.arange(p, device=st.positions.device)

    def move(self, src: int, dst: int) -> None:
        st = self.state
        for kb, vb in _layers(st):
            kb[dst] = kb[src]
            vb[dst] = vb[src]
        for name in ("valid", "seen", "positions"):
            if hasattr(st, name):
                getattr(st, name)[dst] = getattr(st, name)[src]

    def reset(self) -> None:
        """Empties every row and brings the cursor back to the first column."""
        self.state.valid.zero_()
        self.state.seen.zero_()
        self.state.length = 0

    def full(self, row: int) -> bool:
        """Whether ``row`` holds a whole context (it must be re-prefilled from its latest tokens)."""
        return int(self.state.seen[row]) >= self.max_context

    def _compact(self, n: int) -> None:
        """Moves each occupied row's keys to the columns just before a new, smaller cursor."""
        st = self.state
        counts = st.valid[:n].sum(1).tolist()
        end = max(counts) if counts else 0
        for r, c in enumerate(counts):
            cols = st.valid[r].nonzero().view(-1)
            for kb, vb in _layers(st):
                kb[r, :, end - c:end] = kb[r, :, cols].clone()
                vb[r, :, end - c:end] = vb[r, :, cols].clone()
            if hasattr(st, "positions"):
                st.positions[r, end - c:end] = st.positions[r, cols].clone()
            st.valid[r] = False
            st.valid[r, end - c:end] = True
        st.valid[n:] = False
        st.length = end

    def _base(self, n: int) -> int:
        """The first column holding a token of any of the ``n`` occupied rows."""
        st = self.state
        used = st.valid[:n, :st.length].any(0)
        return int(used.int().argmax()) if bool(used.any()) else st.length

    def decode(self, tokens: Tensor) -> Tensor:
        """Feeds one token per occupied row (``tokens`` (n,)); returns their next-token logits (n, V)."""
        n, st = tokens.numel(), self.state
        base = self._base(n)
        if st.length + 1 > self.columns or st.length + 1 - base > self.max_context:
            self._compact(n)
            base = self._base(n)
        view = _rows(st, n, base)
        logits, view = self.decoder.step(tokens.view(n, 1), view)
        st.length = base + view.length
        return logits[:, -1]


def make_slots(model: Any, slots: int) -> Any:
    """The slot state for ``model``: :class:`KVSlots` for a causal Transformer (through the fast decoding path
    where the model allows it), :class:`LSTMSlots` for an LSTM.

    Raises:
        TypeError: a model this engine cannot batch (a bidirectional Transformer re-reads its whole context).
    """
    if getattr(model, "max_context", None) is None:
        return LSTMSlots(model, slots)
    decoder = fast_decoder(model, compile=False) or model
    return KVSlots(decoder, int(model.max_context), slots)
