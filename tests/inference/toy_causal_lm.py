"""Tiny stand-ins used by the inference tests: two CausalLMs (a one-layer attention model with a KV cache and
left-padding support, and a GRU) and a byte-level tokenizer with lmforge's fixed special ids.

They implement :class:`lmforge.models.protocol.CausalLM` independently of the real model families, so the
generation loop is tested against the protocol itself; the tests also check them (step == forward).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SPECIALS = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3, "<|system|>": 4, "<|user|>": 5, "<|assistant|>": 6, "<|end|>": 7}


class ByteTokenizer:
    """Byte-level tokenizer: id = 8 + byte; decoding invalid UTF-8 gives U+FFFD, as a byte-level BPE does."""

    kind = "bpe"
    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def __init__(self) -> None:
        self.special_tokens = dict(SPECIALS)
        self.vocab_size = 8 + 256

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = [8 + b for b in text.encode("utf-8")]
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids, skip_special: bool = True) -> str:
        out, parts = bytearray(), []
        inv = {v: k for k, v in self.special_tokens.items()}
        for i in ids:
            i = int(i)
            if i >= 8:
                out.append(i - 8)
            elif not skip_special:
                parts.append(out.decode("utf-8", errors="replace"))
                parts.append(inv[i])
                out = bytearray()
        parts.append(out.decode("utf-8", errors="replace"))
        return "".join(parts)

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def token_to_id(self, token: str) -> Optional[int]:
        return self.special_tokens.get(token)

    def fingerprint(self) -> str:
        return "byte-toy"


class ToyAttentionLM(nn.Module):
    """One causal self-attention layer + MLP, learned positions, with a KV cache.

    Positions count real tokens only (left padding does not shift them) and padded keys are masked out, so a
    left-padded row gives the same logits as the row alone.
    """

    def __init__(self, vocab_size: int = 264, d: int = 32, block_size: int = 32) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size, block_size=block_size, family="toy")
        self.max_context = block_size
        self.hidden_size = d
        self.tok = nn.Embedding(vocab_size, d)
        self.pos = nn.Embedding(block_size, d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab_size)
        with torch.no_grad():  # make the logits spread out so greedy/sampled paths are non-trivial
            self.head.weight.mul_(20)

    def init_state(self, batch_size: int):
        return {"k": None, "v": None, "mask": None, "n": torch.zeros(batch_size, dtype=torch.long)}

    def _run(self, idx: Tensor, state, attention_mask: Optional[Tensor]):
        B, T = idx.shape
        m = torch.ones(B, T, dtype=torch.long) if attention_mask is None else attention_mask.long()
        pos = (state["n"].view(B, 1) + torch.cumsum(m, 1) - 1).clamp_min(0)
        if int(pos.max()) >= self.max_context:
            raise RuntimeError("toy cache full")
        x = self.tok(idx) + self.pos(pos)  # (B, T, d)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if state["k"] is not None:
            k = torch.cat([state["k"], k], 1)
            v = torch.cat([state["v"], v], 1)
            km = torch.cat([state["mask"], m], 1)
        else:
            km = m
        S = k.size(1)
        causal = torch.ones(T, S, dtype=torch.bool).tril(S - T)  # (T, S)
        allowed = causal.view(1, T, S) & km.bool().view(B, 1, S)
        att = (q @ k.transpose(1, 2)) / math.sqrt(q.size(-1))  # (B, T, S)
        att = att.masked_fill(~allowed, float("-inf"))
        att = torch.nan_to_num(torch.softmax(att, -1))  # fully padded query rows -> zeros
        x = x + self.proj(att @ v)
        h = self.ln(x + self.mlp(x))
        new_state = {"k": k, "v": v, "mask": km, "n": state["n"] + m.sum(1)}
        return h, new_state

    def step(self, idx: Tensor, state, attention_mask: Optional[Tensor] = None):
        h, state = self._run(idx, state, attention_mask)
        return self.head(h), state

    def forward(self, idx: Tensor, targets: Optional[Tensor] = None):
        h, _ = self._run(idx, self.init_state(idx.size(0)), None)
        logits = self.head(h)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss

    def hidden_states(self, idx: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        # right padding: causal attention means real tokens never see the padding after them
        h, _ = self._run(idx, self.init_state(idx.size(0)), None)
        return h


class ToyGRULM(nn.Module):
    """Embedding -> GRU cell -> head; padded (mask 0) positions leave the state unchanged."""

    def __init__(self, vocab_size: int = 264, d: int = 32) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size, block_size=32, family="toy_rnn")
        self.max_context = None
        self.hidden_size = d
        self.emb = nn.Embedding(vocab_size, d)
        self.cell = nn.GRUCell(d, d)
        self.head = nn.Linear(d, vocab_size)
        with torch.no_grad():
            self.head.weight.mul_(20)

    def init_state(self, batch_size: int):
        return torch.zeros(batch_size, self.hidden_size)

    def _run(self, idx: Tensor, h: Tensor, attention_mask: Optional[Tensor]):
        outs = []
        x = self.emb(idx)
        for t in range(idx.size(1)):
            new = self.cell(x[:, t], h)
            if attention_mask is not None:
                new = torch.where(attention_mask[:, t].bool().view(-1, 1), new, h)
            h = new
            outs.append(h)
        return torch.stack(outs, 1), h

    def step(self, idx, state, attention_mask=None):
        hs, h = self._run(idx, state, attention_mask)
        return self.head(hs), h

    def forward(self, idx, targets=None):
        hs, _ = self._run(idx, self.init_state(idx.size(0)), None)
        logits = self.head(hs)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss

    def hidden_states(self, idx, attention_mask=None):
        hs, _ = self._run(idx, self.init_state(idx.size(0)), None)
        return hs


class ScriptedLM(nn.Module):
    """Emits a fixed token sequence (one-hot logits by position), whatever the input."""

    def __init__(self, script: list[int], vocab: int = 264) -> None:
        super().__init__()
        self.script = script
        self.config = SimpleNamespace(vocab_size=vocab)
        self.max_context = None
        self.hidden_size = 1
        self.dummy = nn.Parameter(torch.zeros(1))

    def init_state(self, batch_size):
        return 0  # how many tokens of the script were emitted

    def step(self, idx, state, attention_mask=None):
        B, T = idx.shape
        logits = torch.full((B, T, self.config.vocab_size), -10.0)
        logits[:, -1, self.script[min(state, len(self.script) - 1)]] = 10.0
        return logits, state + 1

    def forward(self, idx, targets=None):
        raise NotImplementedError
