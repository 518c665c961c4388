"""Decoding state for many sequences at once: the slot caches the batching engine keeps its sequences in.

A *slot* is one row of a batched decoding state. A sequence is prefilled alone in a scratch state of batch 1
(in bounded chunks), then copied into a free slot; from then on one decoding call advances every occupied slot
by one token. Where the C step decodes the Transformer (:attr:`KVSlots.sparse`), it takes the rows to advance
as a list, so a sequence stays in the row it joined at and a leaving one just frees its row. Otherwise the
occupied slots are always rows ``0 .. n-1`` (a leaving sequence's row is refilled by moving the last occupied row
into it), so a step runs on a view of the first ``n`` rows and never on empty ones.

* :class:`LSTMSlots`: the LSTM's ``(h, c)`` of shape (L, slots, H); a row is just its two vectors per layer. A
  step updates the occupied rows in place (the model's ``step_rows``); prompts of different lengths prefill
  together through the model's ``prefill``, which runs each row only over its own tokens.
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
from lmforge.models.transformer.native_bound import BoundCache

__all__ = ["LSTMSlots", "KVSlots", "make_slots"]


class LSTMSlots:
    """Batched ``(h, c)`` rows of an LSTM language model.

    Args:
        model: the ``LSTMLanguageModel`` (anything with ``init_state``/``step`` whose state is ``(h, c)``).
        slots: the most sequences decoded together.
    """

    max_context: Optional[int] = None
    ragged = True  # feed() takes prompts of different lengths in one call
    stepwise = True  # a row may take its prompt one token per decode() (see the engine's _join_stepwise)

    def __init__(self, model: Any, slots: int) -> None:
        self.model = model
        self.slots = slots
        self.h, self.c = model.init_state(slots)

    def scratch(self, rows: int = 1) -> Any:
        """A fresh state of ``rows`` rows to prefill prompts into."""
        return self.model.init_state(rows)

    def feed(self, scratch: Any, ids: list[list[int]]) -> tuple[Tensor, Any]:
        """Feeds ``ids`` (one list per scratch row) after what ``scratch`` holds; returns their last logits
        (rows, V). Rows of different lengths run through the model's ``prefill``, each over its own tokens
        only, so a row ends in the state (and logits) it reaches alone."""
        prefill = getattr(self.model, "prefill", None)
        if prefill is not None:
            return prefill(ids, scratch)
        idx, mask = _left_padded(ids, self.h.device)
        logits, scratch = self.model.step(idx, scratch, attention_mask=mask)
        return logits[:, -1], scratch

    def insert(self, rows: list[int], scratch: Any, srows: list[int]) -> None:
        """Copies rows ``srows`` of a prefilled scratch state into ``rows`` (one copy per tensor)."""
        dst, src = _index(rows, self.h.device), _index(srows, self.h.device)
        self.h[:, dst] = scratch[0][:, src]
        self.c[:, dst] = scratch[1][:, src]

    def move(self, src: list[int], dst: list[int]) -> None:
        """Copies rows ``src`` into rows ``dst`` (disjoint sets; one copy per tensor)."""
        s, d = _pair(src, dst, self.h.device)
        self.h[:, d] = self.h[:, s]
        self.c[:, d] = self.c[:, s]

    def clear(self, rows: list[int]) -> None:
        """Sets ``rows`` to the state before any token (zero ``h`` and ``c``, as ``init_state`` makes)."""
        idx = _index(rows, self.h.device)
        self.h[:, idx] = 0
        self.c[:, idx] = 0

    def full(self, row: int) -> bool:
        """Whether ``row`` can take no more tokens (never, for an LSTM)."""
        return False

    def reset(self) -> None:
        """Empties every row (rows are overwritten when a sequence joins; nothing to clear)."""

    def decode(self, tokens: Tensor, want: Optional[list[int]] = None) -> Tensor:
        """Feeds one token per occupied row (``tokens`` (n,)), updating rows ``0 .. n-1`` in place; returns their
        next-token logits (n, V), or those of rows ``want`` only (len(want), V)."""
        step_rows = getattr(self.model, "step_rows", None)
        if step_rows is not None:
            return step_rows(tokens, (self.h, self.c), want)
        n = tokens.numel()
        logits, (h, c) = self.model.step(tokens.view(n, 1), (self.h[:, :n].contiguous(), self.c[:, :n].contiguous()))
        self.h[:, :n] = h
        self.c[:, :n] = c
        return logits[:, -1] if want is None else logits[_index(want, logits.device, gather=True), -1]


def _left_padded(ids: list[list[int]], device: torch.device) -> tuple[Tensor, Optional[Tensor]]:
    """``ids`` as one left-padded (rows, T) tensor, and its mask (``None`` when the rows are equally long)."""
    width = max(len(r) for r in ids)
    idx = torch.as_tensor([[0] * (width - len(r)) + list(r) for r in ids], dtype=torch.long, device=device)
    mask = None
    if any(len(r) < width for r in ids):
        mask = torch.as_tensor([[False] * (width - len(r)) + [True] * len(r) for r in ids], device=device)
    return idx, mask


def _padded_positions(width: int, counts: list[int], device: torch.device) -> Tensor:
    """The positions (rows, width) of left-padded rows of ``counts`` real tokens: each row counts from its first
    real token, its padding clamped to 0."""
    shift = torch.as_tensor([width - c for c in counts], device=device).view(-1, 1)
    return (torch.arange(width, device=device) - shift).clamp(min=0)


def _consecutive(rows: list[int]) -> bool:
    return rows == list(range(rows[0], rows[0] + len(rows)))


def _index(rows: list[int], device: torch.device, gather: bool = False) -> Any:
    """Rows as an index: a slice when they are consecutive (a view, no gather) unless ``gather``, else a tensor."""
    if not gather and _consecutive(rows):
        return slice(rows[0], rows[0] + len(rows))
    return torch.as_tensor(rows, dtype=torch.long, device=device)


def _pair(src: list[int], dst: list[int], device: torch.device) -> tuple[Any, Any]:
    """Indices to copy rows ``src`` of a tensor into its rows ``dst``: two slices, or two tensors (a gather
    copies the source first; a view of it could not be written through an index into the same tensor)."""
    gather = not (_consecutive(src) and _consecutive(dst))
    return _index(src, device, gather), _index(dst, device, gather)


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

    Besides the cache, two Python lists mirror what each row holds: ``fill[row]`` its tokens (the cache's
    ``seen``) and ``start[row]`` the column of its first token, so that a step asks the tensors nothing.

    ``sparse`` is True where the C step is bound to the cache (a float or int8 model on a CPU with the C step):
    then :meth:`decode_rows` advances any set of rows, and no row is ever moved. Moving the rows of a leaving
    sequence's successors cost a copy of their keys (several per step with 32 streams whose contexts fill), and
    the general step's views and checks about 0.1 ms a step; the bound step takes its pointers once. With float
    weights (``direct_feed``), :meth:`feed_rows` also prefills prompts straight into their rows, instead of into
    a freshly allocated scratch cache copied in by :meth:`insert`.

    Args:
        decoder: the model, or its fast decoding path (:func:`lmforge.models.transformer.decode.fast_decoder`);
            its ``init_state`` must return a cache with ``k``, ``v``, ``valid``, ``seen``, ``length`` and
            ``padded`` (both do).
        max_context: the model's context length (a row holds at most this many tokens).
        slots: the most sequences decoded together.
    """

    ragged = True  # feed() takes prompts of different lengths in one call

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
        self.fill = [0] * slots
        self.start = [0] * slots
        # the C step bound to this cache: sequences then decode in whatever rows they joined at (decode_rows)
        native = getattr(decoder, "native_step", None)
        step = native() if native is not None and not isinstance(state.k, Tensor) else None
        self._bound = BoundCache(step, state.k, state.v, state.valid) if step is not None else None
        self.sparse = self._bound is not None
        # prompts straight into their rows (feed_rows) where the C step feeds prompts: float weights (an int8
        # model's prompts go through one dequantized float product, in a scratch state)
        self.direct_feed = self.sparse and not step.quantized

    def scratch(self, rows: int = 1) -> Any:
        return self.decoder.init_state(rows)

    def feed(self, scratch: Any, ids: list[list[int]]) -> tuple[Tensor, Any]:
        """Feeds ``ids`` (one list per scratch row) into a fresh ``scratch``; returns their last logits (rows, V).
        Rows of different lengths are left-padded and masked, each keeping its own positions 0, 1, 2..., so a
        row gives what it gives alone (as batched ``generate`` does)."""
        idx, mask = _left_padded(ids, self.state.valid.device)
        logits, scratch = self.decoder.step(idx, scratch, attention_mask=mask)
        return logits[:, -1], scratch

    def insert(self, rows: list[int], scratch: Any, srows: list[int]) -> None:
        """Writes rows ``srows`` of a prefilled scratch cache into ``rows``: the scratch's ``w`` columns (a row's
        ``p`` real tokens are its last ``p``, the scratch being left-padded) go to the ``w`` columns before the
        cursor, marked valid where real. One copy per tensor for all the rows."""
        st, width = self.state, int(scratch.length)
        lo, end = self._columns(width)
        dst, src = _index(rows, st.valid.device), _index(srows, st.valid.device)
        for (kb, vb), (ks, vs) in zip(_layers(st), _layers(scratch)):
            kb[dst, :, lo:end] = ks[src, :, :width]
            vb[dst, :, lo:end] = vs[src, :, :width]
        st.valid[dst] = False
        if scratch.padded:
            st.valid[dst, lo:end] = scratch.valid[src, :width]
            counts = scratch.seen[src].tolist()
        else:
            st.valid[dst, lo:end] = True
            counts = [width] * len(srows)
        st.seen[dst] = torch.as_tensor(counts, dtype=st.seen.dtype, device=st.seen.device)
        if hasattr(st, "positions"):
            st.positions[dst, lo:end] = _padded_positions(width, counts, st.positions.device)
        self._placed(rows, counts, end)

    def _columns(self, width: int) -> tuple[int, int]:
        """``(lo, end)``: the ``width`` columns just before the cursor, where a prefilled prompt goes (the cursor
        moves on first if fewer are behind it; the skipped columns hold nothing for any row)."""
        st = self.state
        if st.length < width:
            st.valid[:, st.length:width] = False
            st.length = width
        return st.length - width, st.length

    def _placed(self, rows: list[int], counts: list[int], end: int) -> None:
        """Records that row ``rows[i]`` holds ``counts[i]`` tokens in the columns ending at ``end``."""
        for row, c in zip(rows, counts):
            self.fill[row], self.start[row] = c, end - c

    def move(self, src: list[int], dst: list[int]) -> None:
        """Copies rows ``src`` into rows ``dst`` (disjoint): their keys in the columns they use, and their marks."""
        st = self.state
        lo = min(self.start[r] for r in src)
        s, d = _pair(src, dst, st.valid.device)
        for kb, vb in _layers(st):
            kb[d, :, lo:st.length] = kb[s, :, lo:st.length]
            vb[d, :, lo:st.length] = vb[s, :, lo:st.length]
        for name in ("valid", "seen", "positions"):
            if hasattr(st, name):
                getattr(st, name)[d] = getattr(st, name)[s]
        for a, b in zip(src, dst):
            self.fill[b], self.start[b] = self.fill[a], self.start[a]

    def reset(self) -> None:
        """Empties every row and brings the cursor back to the first column."""
        self.state.valid.zero_()
        self.state.seen.zero_()
        self.state.length = 0
        self.fill = [0] * self.slots
        self.start = [0] * self.slots

    def full(self, row: int) -> bool:
        """Whether ``row`` holds a whole context (it must be re-prefilled from its latest tokens)."""
        return self.fill[row] >= self.max_context

    def _compact(self, rows: list[int]) -> None:
        """Moves each occupied row's keys (``rows``) to the columns just before a new, smaller cursor."""
        st = self.state
        counts = [self.fill[r] for r in rows]
        end = max(counts) if counts else 0
        for r, c in zip(rows, counts):
            cols = st.valid[r].nonzero().view(-1)
            for kb, vb in _layers(st):
                kb[r, :, end - c:end] = kb[r, :, cols].clone()
                vb[r, :, end - c:end] = vb[r, :, cols].clone()
            if hasattr(st, "positions"):
                st.positions[r, end - c:end] = st.positions[r, cols].clone()
            st.valid[r] = False
            st.valid[r, end - c:end] = True
            self.start[r] = end - c
        free = torch.ones(self.slots, dtype=torch.bool, device=st.valid.device)
        free[rows] = False
        st.valid[free] = False
        st.length = end

    def decode(self, tokens: Tensor) -> Tensor:
        """Feeds one token per occupied row (``tokens`` (n,)); returns their next-token logits (n, V)."""
        n, st = tokens.numel(), self.state
        base = min(self.start[:n])  # the first column holding a token of any occupied row
        if st.length + 1 > self.columns or st.length + 1 - base > self.max_context:
            self._compact(list(range(n)))
            base = min(self.start[:n])
        view = _rows(st, n, base)
        logits, view = self.decoder.step(tokens.view(n, 1), view)
        st.length = base + view.length
        fill = self.fill
        for r in range(n):
            fill[r] += 1
        return logits[:, -1]

    def feed_rows(self, ids: list[list[int]], rows: list[int]) -> Tensor:
        """Prefills ``ids[i]`` straight into the free row ``rows[i]`` (no scratch state, no copy), in the columns
        just before the cursor as :meth:`insert` places them, left-padded and masked as in :meth:`feed`; returns
        their last logits (len(rows), V). Only where :attr:`direct_feed`."""
        st = self.state
        counts = [len(r) for r in ids]
        lo, end = self._columns(max(counts))
        idx, mask = _left_padded(ids, st.valid.device)
        dst = _index(rows, st.valid.device)
        st.valid[dst] = False
        st.valid[dst, lo:end] = True if mask is None else mask
        logits = self._bound.feed(idx, _padded_positions(end - lo, counts, idx.device), rows, lo)
        self._placed(rows, counts, end)
        return logits

    def decode_rows(self, tokens: list[int], rows: list[int]) -> Tensor:
        """Feeds ``tokens[i]`` to the sequence in row ``rows[i]`` (any distinct occupied rows, in any order: a
        sequence keeps the row it joined at, and the others' rows need not be moved when it leaves); returns the
        next-token logits (len(rows), V) in that order. Only where :attr:`sparse` (the C step over this cache).
        The rows' counts live in ``fill`` alone here (the cache's ``seen`` is not kept up to date)."""
        st, start, fill = self.state, self.start, self.fill
        base = min([start[r] for r in rows])
        if st.length + 1 > self.columns or st.length + 1 - base > self.max_context:
            self._compact(rows)
            base = min([start[r] for r in rows])
        logits = self._bound.decode(tokens, [fill[r] for r in rows], rows, st.length, base)
        st.length += 1
        for r in rows:
            fill[r] += 1
        return logits


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
