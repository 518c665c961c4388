"""Log-probabilities of given text under a causal LM: what ``echo`` with ``logprobs`` and log-likelihood
evaluation (lm-evaluation-harness's ``loglikelihood`` requests) need.

The model reads the tokens once (a Transformer in windows of its context, each window scoring the tokens of
its second half with at least half a context before them), and token ``i`` gets ``log_softmax(logits)[i]`` of
the position before it; the first token has no log-probability.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from lmforge.inference.engine_seq import TokenLogprob

__all__ = ["token_logprobs"]


def _window_logits(model: Any, ids: list[int], device: torch.device) -> torch.Tensor:
    idx = torch.as_tensor([ids], dtype=torch.long, device=device)
    logits, _ = model.step(idx, model.init_state(1))
    return logits[0].float()  # (T, V)


@torch.inference_mode()
def token_logprobs(model: Any, ids: Sequence[int], top: int = 0) -> list[Optional[TokenLogprob]]:
    """Per-token log-probabilities of ``ids`` (``None`` for the first token).

    Args:
        model: a causal LM with ``init_state``/``step`` (Transformer or LSTM).
        ids: the token ids to score (at least one).
        top: also report this many most likely tokens at each position.

    Returns:
        One entry per token: ``None`` for the first, else a :class:`TokenLogprob`.
    """
    ids = [int(t) for t in ids]
    device = next(model.parameters()).device
    ctx = getattr(model, "max_context", None) or len(ids)
    rows: dict[int, torch.Tensor] = {}  # target position -> log-probabilities over the vocabulary
    start = 0
    while True:
        window = ids[start:start + ctx]
        lsm = F.log_softmax(_window_logits(model, window, device), dim=-1)
        first = 1 if start == 0 else ctx // 2 + 1  # later windows score only tokens with half a context before
        for j in range(first, len(window)):
            rows[start + j] = lsm[j - 1]
        if start + ctx >= len(ids):
            break
        start += ctx - ctx // 2 - 1 if ctx > 2 else 1
    out: list[Optional[TokenLogprob]] = [None]
    for i in range(1, len(ids)):
        lsm = rows[i]
        pairs: list[tuple[int, float]] = []
        if top > 0:
            values, best = torch.topk(lsm, min(top, lsm.numel()))
            pairs = [(int(t), float(v)) for t, v in zip(best.tolist(), values.tolist())]
        out.append(TokenLogprob(ids[i], float(lsm[ids[i]]), pairs))
    return out
