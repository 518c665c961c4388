"""The Transformer's slots (inference/slots.py KVSlots) where the C step decodes at any rows (``sparse``): sequences
join at scattered rows (prefilled straight into them, or copied from a scratch state), decode in any order, leave
without moving the others, and the cursor wraps (compaction); every prompt's and step's logits equal the model's
own forward over the row's tokens."""

from __future__ import annotations

import random

import pytest
import torch
from llama_toy import llama_toy

from lmforge.inference.slots import KVSlots, make_slots
from lmforge.models.transformer import native
from lmforge.models.transformer.native_bound import BoundCache

needs_native = pytest.mark.skipif(native.library() is None, reason=f"no C step here: {native.unavailable_reason()}")


@needs_native
def test_rows_anywhere_decode_as_the_models_forward_through_joins_leaves_and_compactions():
    model = llama_toy({})  # 32-token context
    rng = random.Random(3)
    slots = make_slots(model, 6)
    assert isinstance(slots, KVSlots) and slots.sparse
    free, seqs = list(range(6)), {}  # row -> its tokens
    compactions = 0
    original = slots._compact

    def counting(rows):
        nonlocal compactions
        compactions += 1
        original(rows)

    slots._compact = counting
    with torch.inference_mode():
        for step in range(240):
            if free and (not seqs or rng.random() < 0.3):  # a prompt joins at a random free row
                joining = rng.sample(free, min(len(free), rng.randint(1, 2)))
                prompts = [[rng.randrange(64) for _ in range(rng.randint(1, 20))] for _ in joining]
                if rng.random() < 0.5:  # straight into the rows
                    logits = slots.feed_rows(prompts, joining)
                else:  # into a scratch state, then copied in
                    logits, scratch = slots.feed(slots.scratch(len(prompts)), prompts)
                    slots.insert(joining, scratch, list(range(len(joining))))
                ref = torch.stack([model(torch.tensor([p]))[0][0, -1] for p in prompts])
                assert torch.allclose(logits, ref, atol=1e-4), (step, float((logits - ref).abs().max()))
                for row, prompt, lg in zip(joining, prompts, logits):
                    free.remove(row)
                    seqs[row] = prompt + [int(lg.argmax())]
            rows = list(seqs)
            rng.shuffle(rows)
            got = slots.decode_rows([seqs[r][-1] for r in rows], rows)
            ref = torch.stack([model(torch.tensor([seqs[r]]))[0][0, -1] for r in rows])
            assert torch.allclose(got, ref, atol=1e-4), (step, float((got - ref).abs().max()))
            for row, lg in zip(rows, got):
                seqs[row].append(int(lg.argmax()))
                if slots.full(row) or rng.random() < 0.05:  # a whole context, or it stops: its row is free
                    del seqs[row]
                    free.append(row)
    assert compactions >= 2  # the cursor came to the end of the columns (or a window grew past the context)


@needs_native
def test_a_bound_cache_refuses_what_would_read_outside_it():
    model = llama_toy({})
    slots = make_slots(model, 2)
    bound = slots._bound
    with pytest.raises(IndexError, match="token ids"):
        bound.decode([64], [0], [0], 0)
    with pytest.raises(IndexError, match="rows"):
        bound.decode([1], [0], [2], 0)
    with pytest.raises(ValueError, match="column"):
        bound.decode([1], [0], [0], slots.columns)
    k = [torch.zeros(2, 2, 8, 16)[:, :, :, :8] for _ in range(2)]  # last dimension not contiguous with the rest
    with pytest.raises(ValueError, match="layout"):
        BoundCache(bound.step, k, k, torch.zeros(2, 8, dtype=torch.bool))
