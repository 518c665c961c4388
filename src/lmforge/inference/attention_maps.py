"""What a translation model attended to: for each translated sentence, the decoder's attention over the source
tokens while it predicted each target token.

The sentence is translated first (beam or greedy search, as :meth:`Translator.translate`); then one
teacher-forced pass over ``<bos>`` + the translation asks the model for its attention weights
(``model.cross_attention_weights(src, tgt_in)``, shape ``(B, layers, heads, T, S)``; computed by the explicit
softmax path, since the fused kernels never form the weights). A Transformer gives one map per decoder layer and
head, which are averaged over the heads of the last layer unless a layer and head are chosen; the LSTM has one
map (its attention over the encoder outputs).

Example:
    >>> maps = attention_maps(Translator.load("runs/multi30k"), ["A man rides a bike."])  # doctest: +SKIP
    >>> maps[0].weights.shape == (len(maps[0].target_tokens), len(maps[0].source_tokens))  # doctest: +SKIP
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from lmforge.data.pair_batching import encode_source
from lmforge.errors import ConfigError

__all__ = ["AttentionMap", "attention_maps"]


@dataclass
class AttentionMap:
    """One sentence's attention: ``weights[t, s]`` is how much target token ``t`` drew on source token ``s``."""

    source: str
    translation: str
    source_tokens: list[str]
    target_tokens: list[str]
    weights: np.ndarray = field(repr=False)  # (len(target_tokens), len(source_tokens)); rows sum to 1
    what: str = ""  # which attention: layer and head(s)


def _labels(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    out = []
    for i in ids:
        if i == tokenizer.eos_id:
            out.append("<eos>")
        else:
            text = tokenizer.decode([int(i)]).strip()
            out.append(text or tokenizer.decode([int(i)], skip_special=False).strip() or "·")
    return out


def _pick(weights: torch.Tensor, layer: Optional[int], head: Optional[int]) -> tuple[torch.Tensor, str]:
    """``weights`` (layers, heads, T, S) -> (T, S) and a description; ``layer``/``head`` count from 1."""
    n_layers, n_heads = weights.shape[:2]
    if layer is not None and not 1 <= layer <= n_layers:
        raise ConfigError(f"--layer {layer} is out of range: this model has {n_layers} attention layer(s) (1-{n_layers})")
    if head is not None and not 1 <= head <= n_heads:
        raise ConfigError(f"--head {head} is out of range: this model has {n_heads} attention head(s) (1-{n_heads})")
    li = (layer or n_layers) - 1
    if n_layers == 1 and n_heads == 1:
        return weights[0, 0], "attention over the encoder outputs"
    if head is None:
        return weights[li].mean(0), f"cross-attention, layer {li + 1} of {n_layers}, mean of {n_heads} heads"
    return weights[li, head - 1], f"cross-attention, layer {li + 1} of {n_layers}, head {head} of {n_heads}"


@torch.no_grad()
def attention_maps(translator: Any, texts: Sequence[str], beam: int = 5, layer: Optional[int] = None,
                   head: Optional[int] = None, max_len: Optional[int] = None,
                   batch_size: int = 32) -> list[AttentionMap]:
    """Translates ``texts`` and returns each sentence's attention map.

    Args:
        translator: a :class:`~lmforge.inference.translate.Translator`.
        texts: source sentences.
        beam: beam size of the translation (1 = greedy).
        layer: the decoder layer to show, from 1 (default: the last).
        head: the head to show, from 1 (default: the mean over the layer's heads).
        max_len: the most output tokens per sentence (as in ``translate``).
        batch_size: sentences translated together.

    Returns:
        One :class:`AttentionMap` per text, in order.

    Raises:
        ConfigError: the model cannot report attention weights, or ``layer``/``head`` is out of range.
    """
    model = translator.model
    if not hasattr(model, "cross_attention_weights"):
        raise ConfigError(f"{type(model).__name__} cannot report attention weights")
    src_tok, tgt_tok = translator.src_tokenizer, translator.tgt_tokenizer
    hyps = translator.translate_ids(texts, beam=beam, max_len=max_len, batch_size=batch_size)
    maps = []
    for text, hyp in zip(texts, hyps):
        src_ids = encode_source(src_tok, text)
        src = torch.tensor([src_ids], device=translator.device)  # (1, S)
        tgt_in = torch.tensor([[tgt_tok.bos_id, *hyp]], device=translator.device)  # (1, T)
        weights = model.cross_attention_weights(src, tgt_in)[0].float().cpu()  # (layers, heads, T, S)
        chosen, what = _pick(weights, layer, head)
        maps.append(AttentionMap(text, tgt_tok.decode(hyp), _labels(src_tok, src_ids),
                                 _labels(tgt_tok, [*hyp, tgt_tok.eos_id]), chosen.numpy(), what))
    return maps
