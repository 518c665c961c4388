"""Tiny language models really trained for a few seconds (so their logits are peaked and their weights have
the structure quantization and export must keep), shared by the quantization and GGUF tests."""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import torch

from lmforge.config import LSTMConfig, TransformerConfig
from lmforge.models import build_model
from lmforge.tokenizers import train_tokenizer

_SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
FALLBACK = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
            "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n") * 40


def corpus() -> str:
    """20,000 characters of Shakespeare (the shared data set), or a repeated passage without it."""
    return _SHAKESPEARE.read_text(encoding="utf-8")[:20000] if _SHAKESPEARE.is_file() else FALLBACK


@functools.lru_cache(maxsize=None)
def _trained(family: str, tokenizer: str, steps: int):
    torch.manual_seed(0)
    text = corpus()
    tok = train_tokenizer(tokenizer, [text], vocab_size=320) if tokenizer == "bpe" else train_tokenizer(tokenizer, [text])
    if family == "lstm":
        cfg = LSTMConfig(vocab_size=tok.vocab_size, embedding_dim=64, hidden_dim=64, num_layers=2)
    else:
        cfg = TransformerConfig(vocab_size=tok.vocab_size, d_model=64, num_layers=2, block_size=128,
                                attention={"variant": "gqa", "num_heads": 4, "num_kv_heads": 2}, tie_embeddings=False)
    model = build_model(cfg)
    ids = torch.tensor(tok.encode(text))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2 if family == "lstm" else 3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        start = torch.randint(0, len(ids) - 65, (8,), generator=gen)
        batch = torch.stack([ids[s:s + 65] for s in start.tolist()])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, tok, float(loss.detach())


def trained(family: str = "transformer", tokenizer: str = "bpe", steps: int = 120):
    """(a fresh copy of the trained model in eval mode, its tokenizer) for ``family`` and tokenizer kind."""
    model, tok, _ = _trained(family, tokenizer, steps)
    return copy.deepcopy(model), tok


def validation_ids(tokenizer) -> torch.Tensor:
    """Token ids of held-out text (Shakespeare after the training part)."""
    text = _SHAKESPEARE.read_text(encoding="utf-8")[20000:24000] if _SHAKESPEARE.is_file() else FALLBACK[:2000]
    return torch.tensor(tokenizer.encode(text))


def teacher_forced(fast, ids: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Perplexity and logits of ``ids`` (R, T) fed one token at a time at batch 1 (the one-row decoding step)."""
    nll, logits = 0.0, []
    for row in ids:
        state = fast.init_state(1)
        for t in range(len(row) - 1):
            out, state = fast.step(row[t].view(1, 1), state)
            logits.append(out[0, 0])
            nll -= float(out[0, 0].log_softmax(-1)[row[t + 1]])
    return math.exp(nll / (ids.shape[0] * (ids.shape[1] - 1))), torch.stack(logits)
