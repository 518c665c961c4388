"""How the batching engine (:mod:`lmforge.inference.engine`) feeds prompts: waiting prompts prefilled together
within a budget of tokens per iteration (a longer one in chunks), LSTM prompts fed one token per step beside the
decoding rows, and the first token of each prefilled sequence chosen before it joins the batch."""

from __future__ import annotations

import heapq
from typing import Any, Optional

import torch

from lmforge.inference.engine_seq import Sequence, choose_plain

__all__ = ["PrefillSteps"]


class PrefillSteps:
    """The prefill half of :class:`~lmforge.inference.engine.BatchEngine` (its attributes: ``slots``,
    ``_prefilling``, ``_running``, ``_free_rows``, ``prefill_chunk``...)."""

    def _join_stepwise(self) -> None:
        """Where the slots allow it (the LSTM's), a waiting prompt of at most ``stepwise_max`` tokens joins the
        running batch at once and is fed one token per decoding step, riding along with the sequences that
        decode; its first token is sampled after its last prompt token. A prefill of one prompt alone costs
        about as much per token as a whole batch's decoding step (each recurrent step reads every weight), so
        on a busy engine a prompt's tokens cost a few extra batch rows instead (the prefill piggybacks on the
        decode batch as in SARATHI, arXiv:2308.16369). With nothing decoding, prompts still prefill together
        in one call (:meth:`_prefill`); so do the choices of an ``n > 1`` request, which share one prefill."""
        if not (self._running and getattr(self.slots, "stepwise", False)):
            return
        joining = [s for s in self._prefilling if s.request.n == 1 and s.scratch is None
                   and 0 < len(s.to_prefill) <= self.stepwise_max]
        if not joining:
            return
        members = set(map(id, joining))
        self._prefilling = [s for s in self._prefilling if id(s) not in members]
        for seq in joining:
            seq.row = self._claim_row()
            self._running.append(seq)
            seq.next_input = seq.to_prefill.pop(0)
        self.slots.clear([s.row for s in joining])
        self._feeding += len(joining)

    def _prefill(self) -> None:
        """Prefills up to ``prefill_chunk`` prompt tokens. The fresh prompts that fit are fed as one batch (the
        re-prefills of sequences that filled their context, requests that came together), left-padded where
        the slots allow prompts of different lengths (the Transformer's and the LSTM's do), else those of the
        head's length; a prompt longer than the budget is fed in chunks over several iterations (one that only
        overflows what is left of it waits for the next iteration, whole). Sequences whose prompt is done
        take their first token and join the batch; the choices of one request share one prefill."""
        self._join_stepwise()
        budget = self.prefill_chunk
        ragged = bool(getattr(self.slots, "ragged", False))
        while self._prefilling and budget > 0:
            head = self._prefilling[0]
            size = len(head.to_prefill)
            if head.scratch is None and size <= budget:
                reps: list[Sequence] = []
                for s in self._prefilling:
                    n = len(s.to_prefill)
                    if s.scratch is None and (ragged or n == size) and n <= budget \
                            and not any(s.shares_prefill_with(r) for r in reps):
                        reps.append(s)
                        budget -= n
                if self._direct:  # straight into the rows they will decode in
                    rows = [self._claim_row() for _ in reps]
                    self._prefilled(reps, self.slots.feed_rows([r.to_prefill for r in reps], rows), None, rows)
                    continue
                logits, scratch = self.slots.feed(self.slots.scratch(len(reps)), [r.to_prefill for r in reps])
                self._prefilled(reps, logits, scratch)
                continue
            if head.scratch is None and size <= self.prefill_chunk:
                break  # it fits whole in the next iteration's budget: no need to cut it in two
            if head.scratch is None:
                head.scratch = self.slots.scratch()
            chunk = head.to_prefill[:budget]
            logits, head.scratch = self.slots.feed(head.scratch, [chunk])
            head.to_prefill = head.to_prefill[len(chunk):]
            budget -= len(chunk)
            if head.to_prefill:
                break
            self._prefilled([head], logits, head.scratch)

    def _prefilled(self, reps: list[Sequence], logits: torch.Tensor, scratch: Any,
                   rows: Optional[list[int]] = None) -> None:
        """The prompt of ``reps[i]`` is in row ``i`` of ``scratch`` (its last logits ``logits[i]``), or already in
        slot row ``rows[i]``: it and the choices sharing its prefill take their first token together
        (:func:`choose_plain`) and join the batch. Their rows are copied into the slots in one go; from
        ``rows``, the first choice to join keeps the row, the others get a copy of it, and a row nobody joins is
        free again."""
        joining, srows = [], []
        members: set[int] = set()
        for i, rep in enumerate(reps):
            for s in self._prefilling:
                if id(s) not in members and s.shares_prefill_with(rep):
                    members.add(id(s))
                    joining.append(s)
                    srows.append(i)
        self._prefilling = [s for s in self._prefilling if id(s) not in members]
        rows_logits = logits[srows] if srows != list(range(len(reps))) else logits
        chosen = choose_plain(joining, rows_logits)
        joined, used = [], []
        keeper: list[Optional[int]] = [None] * len(reps)  # from rows: the row the first choice to join kept
        copy_src, copy_dst = [], []
        for k, (seq, tok) in enumerate(zip(joining, chosen)):
            seq.to_prefill, seq.scratch = [], None
            if not self._take(seq, rows_logits, k, tok):
                continue  # finished on its first token (or the first after a re-prefill)
            i = srows[k]
            if rows is not None and keeper[i] is None:
                seq.row = keeper[i] = rows[i]
            else:
                seq.row = self._claim_row()
                if rows is None:
                    used.append(i)
                else:
                    copy_src.append(keeper[i])
                    copy_dst.append(seq.row)
            self._running.append(seq)
            joined.append(seq)
        if rows is None:
            if joined:
                self.slots.insert([s.row for s in joined], scratch, used)
        else:
            if copy_dst:
                self.slots.move(copy_src, copy_dst)
            for i, row in enumerate(rows):
                if keeper[i] is None:  # every choice of this prefill finished on its first token
                    heapq.heappush(self._free_rows, row)
        # a prompt as long as the context: no room for the token just chosen
        self._refill([s for s in joined if self.slots.full(s.row)])
