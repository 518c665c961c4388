"""Supervised fine-tuning (SFT) of a language-model run on conversations, with the loss on the replies only.

``conversations.jsonl`` holds one conversation per line, ``{"messages": [{"role": "user", "content": ...},
{"role": "assistant", "content": ...}, ...]}`` (roles ``system``, ``user``, ``assistant``). Each conversation
is rendered with the ``tokens`` chat template (the fixed role tokens and ``<|end|>``), or for an imported
checkpoint with its own ``jinja`` template; the targets are the assistant replies and the end-of-turn closing
each of them, every other position is -100, so the model learns to
answer and to stop, not to imitate users (as in InstructGPT's SFT stage, arXiv:2203.02155).

:class:`ChatSFTTask` implements the trainer's Task protocol, so the shared
:class:`~lmforge.training.trainer.Trainer` does the loop, the evaluation and the run folder. The new run's
``summary.json`` records ``chat_template`` and ``finetuned_from``, which ``lmforge.api.LM.load`` reads.
``train.lora_rank`` > 0 trains LoRA adapters instead of the whole model (arXiv:2106.09685).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from lmforge.errors import ConfigError, DataError
from lmforge.inference.chat import render_chat_with_mask
from lmforge.training.tasks import micro_batch_rows

__all__ = ["read_conversations", "encode_conversations", "ChatSFTTask"]

log = logging.getLogger(__name__)

Example = tuple[list[int], list[bool]]


def read_conversations(path: str | Path) -> list[list[dict]]:
    """Conversations from a ``.jsonl`` file with a ``messages`` list per line (blank lines are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass a .jsonl file with one {{\"messages\": [...]}} per line")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise DataError(f"{path}:{n} is not valid JSON; write one {{\"messages\": [...]}} object per line") from None
            msgs = obj.get("messages") if isinstance(obj, dict) else None
            if not isinstance(msgs, list) or not msgs:
                raise DataError(f"{path}:{n} has no 'messages' list; write {{\"messages\": [{{\"role\": \"user\", \"content\": \"...\"}}, ...]}}")
            for m in msgs:
                if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                        or not isinstance(m.get("content"), str):
                    raise DataError(f"{path}:{n}: each message needs a 'role' (system, user or assistant) and a text 'content'")
            if not any(m["role"] == "assistant" for m in msgs):
                raise DataError(f"{path}:{n} has no assistant message, so nothing to learn; add the assistant's reply")
            out.append(msgs)
    if not out:
        raise DataError(f"{path} holds no conversations")
    return out


def encode_conversations(tokenizer: Any, conversations: Sequence[Sequence[dict]], max_tokens: int,
                         template: str = "tokens") -> list[Example]:
    """``(ids, is_target)`` per conversation (``tokens`` template, or an imported run's ``jinja`` one), cut to its
    first ``max_tokens + 1`` ids."""
    out = []
    cut = 0
    for conv in conversations:
        ids, mask = render_chat_with_mask(tokenizer, conv, template)
        if len(ids) > max_tokens + 1:
            ids, mask = ids[: max_tokens + 1], mask[: max_tokens + 1]
            cut += 1
        if any(mask[1:]):
            out.append((ids, mask))
    if cut:
        log.warning("%d conversation(s) were longer than the context (%d tokens) and were cut", cut, max_tokens)
    return out


def _collate(examples: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded inputs (B, T) and targets (B, T), -100 where nothing is learnt."""
    T = max(len(ids) for ids, _ in examples) - 1
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.full((len(examples), T), -100, dtype=torch.long)
    for i, (ids, mask) in enumerate(examples):
        n = len(ids) - 1
        x[i, :n] = torch.tensor(ids[:-1])
        tgt = torch.tensor(ids[1:])
        y[i, :n] = torch.where(torch.tensor(mask[1:]), tgt, torch.full_like(tgt, -100))
    return x, y


class ChatSFTTask:
    """The trainer's Task for chat fine-tuning: random batches of conversations, loss on the replies.

    Args:
        train: encoded training conversations (:func:`encode_conversations`).
        val: encoded validation conversations.
        batch_size: global batch size in conversations.
        pad_id: the tokenizer's padding id.
        seed: seeds the batch sampler.
    """

    def __init__(self, train: list[Example], val: list[Example], batch_size: int, pad_id: int = 0, seed: int = 1337) -> None:
        if not train:
            raise DataError("no training conversations with an assistant reply; check the conversations file")
        self.train, self.val = train, val or train[-1:]
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.generator = torch.Generator().manual_seed(seed)
        self.device = torch.device("cpu")
        self.rank, self.world_size, self.grad_accum, self.rows = 0, 1, 1, batch_size

    def setup(self, *, device: torch.device, rank: int, world_size: int, grad_accum: int) -> None:
        self.device = torch.device(device)
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.rows = micro_batch_rows(self.batch_size, world_size, grad_accum)

    def next_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pick = torch.randint(0, len(self.train), (self.batch_size,), generator=self.generator).tolist()
        out = []
        for m in range(self.grad_accum):
            lo = (m * self.world_size + self.rank) * self.rows
            x, y = _collate([self.train[i] for i in pick[lo:lo + self.rows]], self.pad_id)
            out.append((x.to(self.device), y.to(self.device)))
        return out

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        _, loss = model(x, y)
        return loss

    def batch_tokens(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return int((batch[1] != -100).sum())

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, max_batches: Optional[int] = None, autocast: Any = None) -> dict[str, Any]:
        """Reply-token loss and perplexity on the validation conversations, and the share of reply tokens the
        model predicts exactly (greedy, teacher-forced)."""
        was_training = model.training
        model.eval()
        total, correct, count = 0.0, 0, 0
        try:
            bs = max(1, self.batch_size)
            batches = range(0, len(self.val), bs)
            for b, lo in enumerate(batches):
                if max_batches is not None and b >= max_batches:
                    break
                x, y = _collate(self.val[lo:lo + bs], self.pad_id)
                x, y = x.to(self.device), y.to(self.device)
                logits, _ = model(x)
                flat = logits.float().reshape(-1, logits.size(-1))  # (B*T, V)
                total += float(F.cross_entropy(flat, y.reshape(-1), ignore_index=-100, reduction="sum"))
                keep = y.reshape(-1) != -100
                correct += int((flat.argmax(-1)[keep] == y.reshape(-1)[keep]).sum())
                count += int(keep.sum())
        finally:
            model.train(was_training)
        loss = total / max(1, count)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "token_accuracy": correct / max(1, count),
                "tokens": count}

    def steps_per_epoch(self) -> float:
        return max(1.0, len(self.train) / self.batch_size)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
