"""Text generation for any :class:`~lmforge.models.protocol.CausalLM` through ``init_state``/``step``.

The same loop drives the Transformer (whose decoding state is a KV cache) and the LSTM (whose state is
``(h, c)``): the prompt is fed once (prefill), then one token per step. Prompts of different lengths are
batched by left padding with an ``attention_mask``; the model contract makes each row's logits equal to that
row alone, so batched output equals one-by-one output.

Context handling: a prompt longer than the model's ``max_context`` keeps its most recent ``max_context``
tokens. When a Transformer's cache fills during generation, the state is rebuilt from the most recent
``max_context - max_context // 4`` tokens of each row (a sliding window re-fed in one pass), so generation can
run past the context length. The LSTM has no limit and simply carries its state.

Per-token work is kept small: inference mode, a preallocated output buffer, penalties and filters only when
switched on, and (for stop strings and streaming) an incremental detokenizer that decodes a few tokens per
step instead of the whole text.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor

from lmforge.inference.detokenize import IncrementalDetokenizer
from lmforge.inference.detokenize import find_stop as _find_stop
from lmforge.inference.detokenize import held_back as _held_back
from lmforge.inference.sampling import (
    SamplingParams,
    SamplingState,
    active_processors,
    choose_next,
    make_generators,
)
from lmforge.models.transformer.decode import fast_decoder

__all__ = [
    "Completion",
    "TextChunk",
    "generate",
    "stream",
    "generate_ids",
    "IncrementalDetokenizer",
    "encode_prompt",
    "model_device",
]

Prompt = Union[str, Sequence[int]]


@dataclass
class Completion:
    """One generated continuation.

    Attributes:
        text: the generated text (without the prompt, a stop string or a stop token).
        token_ids: the generated token ids, without a final stop token.
        finish_reason: ``"stop"`` (stop token, stop string or end of sequence) or ``"length"``.
        prompt_tokens: tokens of the prompt the model saw (after truncation to the context).
        completion_tokens: tokens the model generated, a final stop token included.
        prompt_index: which prompt this completes; sample_index: which of its ``num_samples``.
    """

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    prompt_index: int = 0
    sample_index: int = 0


@dataclass
class TextChunk:
    """A piece of streamed text; the last chunk of a stream has ``finish_reason`` set.

    ``completion_tokens`` counts the tokens generated so far; ``prompt_tokens`` the tokens of the prompt the
    model saw (after truncation to the context), as in :class:`Completion`.
    """

    text: str
    finish_reason: Optional[str] = None
    completion_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def encode_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids of ``prompt`` (text, or already ids). An empty prompt becomes ``[eos_id]``, the document
    boundary the training data puts between documents, so the model starts as at a document's beginning."""
    if isinstance(prompt, str):
        if tokenizer is None:
            raise TypeError("a text prompt needs a tokenizer; pass token ids or a tokenizer")
        ids = list(tokenizer.encode(prompt))
    else:
        ids = [int(t) for t in prompt]
    if not ids:
        ids = [int(getattr(tokenizer, "eos_id", 3) if tokenizer is not None else 3)]
    return ids


def _vocab_size(model: Any) -> int:
    return int(model.config.vocab_size)


class _Decoder:
    """The decoding loop over a batch of rows; ``steps()`` yields the chosen tokens (B,) per step.

    The caller may set ``done[row] = True`` (for example on a stop string) and the loop stops once every row
    is done. ``stop_step[row]`` is the step at which a stop token ended the row (-1 if none).
    """

    def __init__(self, model: Any, rows: list[list[int]], params: SamplingParams, stop_ids: Sequence[int],
                 sample_indices: Sequence[int], pad_id: int = 0, fast: bool = True,
                 compile: Optional[bool] = None) -> None:
        # the lean decoding path for Llama-style Transformers, else the model's own init_state/step
        self.model = (fast_decoder(model, compile=compile, tokens=params.max_new_tokens or 0) if fast else None) or model
        self.params = params
        self.device = model_device(model)
        self.max_context: Optional[int] = getattr(model, "max_context", None)
        if self.max_context is not None:
            rows = [r[-self.max_context:] for r in rows]
        self.rows = rows
        self.pad_id = pad_id
        self.B = len(rows)
        self.out = torch.full((self.B, max(params.max_new_tokens, 1)), pad_id, dtype=torch.long, device=self.device)
        self.done = torch.zeros(self.B, dtype=torch.bool, device=self.device)
        self.stop_step = [-1] * self.B
        self.steps_taken = 0
        self.stop_t = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=self.device) if stop_ids else None
        self.processors = active_processors(params)
        self.sstate = SamplingState.create(params, rows, _vocab_size(model), self.device) if self.processors else SamplingState()
        self.generators = None if params.greedy else make_generators(params.seed, sample_indices, self.device)

    def _left_pad(self, rows: list[list[int]]) -> tuple[Tensor, Optional[Tensor]]:
        T = max(len(r) for r in rows)
        ids = torch.full((self.B, T), self.pad_id, dtype=torch.long)
        padded = any(len(r) != T for r in rows)
        mask = torch.zeros((self.B, T), dtype=torch.long) if padded else None
        for i, r in enumerate(rows):
            ids[i, T - len(r):] = torch.as_tensor(r, dtype=torch.long)
            if mask is not None:
                mask[i, T - len(r):] = 1
        return ids.to(self.device), (mask.to(self.device) if mask is not None else None)

    def _prefill(self, rows: list[list[int]]) -> tuple[Tensor, Any, Optional[Tensor], int]:
        ids, mask = self._left_pad(rows)  # (B, T)
        state = self.model.init_state(self.B)
        logits, state = self.model.step(ids, state, attention_mask=mask)
        step_mask = torch.ones((self.B, 1), dtype=torch.long, device=self.device) if mask is not None else None
        return logits[:, -1, :], state, step_mask, ids.size(1)

    def _refill(self, t: int) -> tuple[Tensor, Any, Optional[Tensor], int]:
        """Rebuilds the state from each row's most recent tokens once the context is full."""
        assert self.max_context is not None
        keep = max(1, self.max_context - max(1, self.max_context // 4))
        gen = self.out[:, : t + 1].tolist()
        rows = [(r + g)[-keep:] for r, g in zip(self.rows, gen)]
        return self._prefill(rows)

    @torch.inference_mode()  # re-entered on every resume, so it never leaks into the caller between steps
    def steps(self) -> Iterator[Tensor]:
        p = self.params
        if p.max_new_tokens == 0:
            return
        model, out, done = self.model, self.out, self.done
        procs, sstate, gens = self.processors, self.sstate, self.generators
        logits, state, step_mask, used = self._prefill(self.rows)
        for t in range(p.max_new_tokens):
            if procs:
                for proc in procs:
                    logits = proc(logits, p, sstate)
            nxt = choose_next(logits, p, gens)  # (B,)
            out[:, t] = nxt
            self.steps_taken = t + 1
            if procs:
                sstate.update(nxt)
            if self.stop_t is not None:
                hit = torch.isin(nxt, self.stop_t) & ~done
                if bool(hit.any()):
                    for row in hit.nonzero().view(-1).tolist():
                        self.stop_step[row] = t
                    done |= hit
            yield nxt
            if bool(done.all()) or t + 1 == p.max_new_tokens:
                return
            if self.max_context is not None and used >= self.max_context:
                logits, state, step_mask, used = self._refill(t)
                continue
            logits, state = model.step(nxt.view(-1, 1), state, attention_mask=step_mask)
            logits = logits[:, -1, :]
            used += 1


def _stop_ids(tokenizer: Any, params: SamplingParams) -> list[int]:
    ids = list(params.stop_token_ids)
    eos = getattr(tokenizer, "eos_id", None) if tokenizer is not None else None
    if eos is not None and not params.ignore_eos:
        ids.append(int(eos))
        ids += [int(i) for i in getattr(tokenizer, "stop_ids", ()) if int(i) not in ids]  # a checkpoint's end-of-turn tokens
    return ids


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Puts the model in eval mode (no dropout) for the duration, restoring its mode afterwards."""
    was_training = bool(getattr(model, "training", False))
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _params(params: Optional[SamplingParams], overrides: dict[str, Any]) -> SamplingParams:
    return SamplingParams.from_kwargs(params, **overrides)


def generate(model: Any, tokenizer: Any, prompts: Sequence[Prompt], params: Optional[SamplingParams] = None,
             *, fast: bool = True, compile: Optional[bool] = None, **overrides: Any) -> list[Completion]:
    """Generates a completion for each prompt (``num_samples`` each), batched.

    Args:
        model: a CausalLM (Transformer or LSTM).
        tokenizer: its tokenizer (may be ``None`` when every prompt is token ids; text is then empty).
        prompts: texts or token-id lists, of any lengths.
        params: sampling settings; keyword ``overrides`` (``temperature=0``...) are applied on top.
        fast: use the lean decoding path (:mod:`lmforge.models.transformer.decode`) for Llama-style Transformers;
            False always runs the model's own ``step``.
        compile: on that path, run one-token steps through ``torch.compile``
            (:mod:`lmforge.models.transformer.compiled`; CPU only for now): seconds to compile on first use, then
            faster decoding. Worth it for long outputs, chat sessions and servers. ``None`` (the default) follows
            :func:`~lmforge.models.transformer.decode.compile_decoding`.

    Returns:
        One :class:`Completion` per prompt and sample, prompt-major (prompt 0's samples first).

    Example:
        >>> out = generate(model, tok, ["ROMEO:", "JULIET:"], temperature=0, max_new_tokens=20)  # doctest: +SKIP
    """
    p = _params(params, overrides)
    if isinstance(prompts, str):
        prompts = [prompts]
    encoded = [encode_prompt(tokenizer, pr) for pr in prompts]
    rows = [ids for ids in encoded for _ in range(p.num_samples)]
    sample_idx = [k for _ in encoded for k in range(p.num_samples)]
    if not rows:
        return []
    pad_id = int(getattr(tokenizer, "pad_id", 0) or 0) if tokenizer is not None else 0
    with _eval_mode(model):
        dec = _Decoder(model, rows, p, _stop_ids(tokenizer, p), sample_idx, pad_id, fast=fast, compile=compile)
        stops = p.stop if tokenizer is not None else []
        detoks = [IncrementalDetokenizer(tokenizer) for _ in rows] if stops else []
        texts = [""] * len(rows)
        stopped_by_text = [False] * len(rows)
        for nxt in dec.steps():
            if not stops:
                continue
            ids = nxt.tolist()
            for row, tok in enumerate(ids):
                if stopped_by_text[row] or dec.stop_step[row] >= 0:
                    continue
                piece = detoks[row].push([tok])
                if not piece:
                    continue
                before = len(texts[row])
                texts[row] += piece
                cut = _find_stop(texts[row], stops, before)
                if cut >= 0:
                    texts[row] = texts[row][:cut]
                    stopped_by_text[row] = True
                    dec.done[row] = True
        out_ids = dec.out[:, : dec.steps_taken].tolist()
    results = []
    for row, ids in enumerate(out_ids):
        n_gen = len(ids)
        reason = "length"
        if dec.stop_step[row] >= 0:
            n_gen = dec.stop_step[row] + 1
            ids = ids[: dec.stop_step[row]]
            reason = "stop"
        elif stopped_by_text[row]:
            reason = "stop"
        if stopped_by_text[row]:
            text = texts[row]
            n_gen = len(detoks[row].ids)
            ids = ids[:n_gen]
        else:
            ids = ids[:n_gen]
            text = tokenizer.decode(ids, skip_special=True) if tokenizer is not None else ""
            if stops:  # a stop string may be completed only by the final flush
                cut = _find_stop(text, stops, 0)
                if cut >= 0:
                    text, reason = text[:cut], "stop"
        results.append(Completion(text=text, token_ids=ids, finish_reason=reason,
                                  prompt_tokens=len(dec.rows[row]), completion_tokens=n_gen,
                                  prompt_index=row // p.num_samples, sample_index=sample_idx[row]))
    return results


def stream(model: Any, tokenizer: Any, prompt: Prompt, params: Optional[SamplingParams] = None,
           *, fast: bool = True, compile: Optional[bool] = None, **overrides: Any) -> Iterator[TextChunk]:
    """Generates one completion as a stream of text pieces.

    Pieces never split a UTF-8 character, text that might be the start of a stop string is held back until it
    is known not to be, and the last chunk carries ``finish_reason``. Joining the pieces gives the same text as
    :func:`generate` with the same settings.

    Example:
        >>> for chunk in stream(model, tok, "ROMEO:", temperature=0.8, seed=1):  # doctest: +SKIP
        ...     print(chunk.text, end="", flush=True)
    """
    p = _params(params, overrides)
    if p.num_samples != 1:
        p = SamplingParams.from_kwargs(p, num_samples=1)
    ids = encode_prompt(tokenizer, prompt)
    pad_id = int(getattr(tokenizer, "pad_id", 0) or 0)
    stops = p.stop
    with _eval_mode(model):
        dec = _Decoder(model, [ids], p, _stop_ids(tokenizer, p), [0], pad_id, fast=fast, compile=compile)
        detok = IncrementalDetokenizer(tokenizer)
        text, sent, reason, n = "", 0, "length", 0
        for nxt in dec.steps():
            n += 1
            if dec.stop_step[0] >= 0:
                reason = "stop"
                break
            tok = int(nxt[0])
            piece = detok.push([tok])
            if not piece:
                continue
            before = len(text)
            text += piece
            if stops:
                cut = _find_stop(text, stops, before)
                if cut >= 0:
                    text, reason = text[:cut], "stop"
                    dec.done[0] = True
                    break
                safe = len(text) - _held_back(text, stops)
            else:
                safe = len(text)
            if safe > sent:
                chunk = TextChunk(text[sent:safe], None, n, [tok], len(dec.rows[0]))
                sent = safe
                yield chunk
    if reason == "length":
        text += detok.flush()
        if stops:
            cut = _find_stop(text, stops, sent)
            if cut >= 0:
                text, reason = text[:cut], "stop"
    yield TextChunk(text[sent:], reason, n, [], len(dec.rows[0]))


def generate_ids(model: Any, start_tokens: Sequence[int], max_new_tokens: int = 100,
                 params: Optional[SamplingParams] = None, tokenizer: Any = None, **overrides: Any) -> list[int]:
    """Token-level generation: ``start_tokens`` followed by up to ``max_new_tokens`` generated ids.

    Without a tokenizer no end-of-sequence stop applies (only ``stop_token_ids``). This is what the
    ``generate(start_tokens=[...], max_length=...)`` methods of the classic model classes call.
    """
    p = _params(params, {**overrides, "max_new_tokens": max_new_tokens})
    done = generate(model, tokenizer, [list(start_tokens)], p)[0]
    return [int(t) for t in start_tokens] + done.token_ids
