"""Sampling settings and the logit processors that turn next-token logits into a choice.

Processors are registered in ``SAMPLERS`` and run in a fixed order on the last position's logits (B, V):
penalties first (on the raw logits, as in the papers that introduced them), then temperature, then the
truncation filters (top-k, top-p, min-p), which set removed tokens to ``-inf``. Temperature 0 means greedy
(argmax after the penalties). Only the processors a :class:`SamplingParams` turns on are run, so plain greedy
decoding costs one ``argmax`` per step.

Penalty semantics:

* ``repetition_penalty`` (arXiv:1909.05858, CTRL): for every token already in the prompt or the output, a
  positive logit is divided by the penalty and a negative one multiplied by it, so a penalised token always
  becomes *less* likely (dividing a negative logit would make it more likely).
* ``presence_penalty`` / ``frequency_penalty`` (OpenAI semantics): subtract ``presence * [count > 0] +
  frequency * count`` from each logit, counting only the tokens generated so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from lmforge.errors import ConfigError
from lmforge.registry import Registry

__all__ = [
    "SamplingParams",
    "SamplingState",
    "SAMPLERS",
    "LogitsProcessor",
    "active_processors",
    "process_logits",
    "choose_next",
    "make_generators",
    "filter_logits",
    "keep_top_k",
    "keep_top_p",
]

LogitsProcessor = Callable[[Tensor, "SamplingParams", "SamplingState"], Tensor]

SAMPLERS: Registry[LogitsProcessor] = Registry("sampler")


@dataclass
class SamplingParams:
    """How to pick each next token and when to stop.

    Attributes:
        temperature: divides the logits; 0 means greedy decoding.
        top_k: keep only the ``k`` most likely tokens.
        top_p: nucleus sampling (arXiv:1904.09751): keep the smallest set of most likely tokens whose
            probabilities sum to at least ``p``.
        min_p: keep tokens whose probability is at least ``min_p`` times the top token's (arXiv:2407.01082).
        repetition_penalty: > 1 discourages tokens already seen (sign-aware, see the module docstring).
        presence_penalty: subtracted once from each token already generated (OpenAI semantics).
        frequency_penalty: subtracted per occurrence of each token already generated (OpenAI semantics).
        max_new_tokens: the most tokens to generate per sequence.
        stop: strings that end generation; the returned text stops before the first one.
        stop_token_ids: token ids that end generation (not included in the text).
        seed: seeds a ``torch.Generator`` per sample (sample ``i`` uses ``seed + i``), so a seeded result is
            reproducible and does not depend on what else is in the batch.
        num_samples: completions per prompt.
        ignore_eos: keep going past the tokenizer's end-of-sequence token (benchmarks).
    """

    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    min_p: Optional[float] = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_new_tokens: int = 100
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    seed: Optional[int] = None
    num_samples: int = 1
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in self.stop if s]
        self.stop_token_ids = [int(t) for t in self.stop_token_ids]
        checks = [
            (self.temperature >= 0, "temperature must be >= 0 (0 = greedy)"),
            (self.top_k is None or self.top_k >= 1, "top_k must be >= 1 (or None to disable it)"),
            (self.top_p is None or 0 < self.top_p <= 1, "top_p must be in (0, 1] (or None to disable it)"),
            (self.min_p is None or 0 <= self.min_p <= 1, "min_p must be in [0, 1] (or None to disable it)"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0 (1 = off)"),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty must be in [-2, 2]"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty must be in [-2, 2]"),
            (self.max_new_tokens >= 0, "max_new_tokens must be >= 0"),
            (self.num_samples >= 1, "num_samples must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"invalid sampling setting: {message}")

    @property
    def greedy(self) -> bool:
        """True when the next token is the argmax (temperature 0)."""
        return self.temperature == 0

    @classmethod
    def from_kwargs(cls, params: "SamplingParams | None" = None, **overrides: Any) -> "SamplingParams":
        """``params`` (or the defaults) with ``overrides`` applied; ``None`` values are ignored and an unknown
        name raises a ConfigError that lists the valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(k for k in overrides if k not in names)
        if unknown:
            raise ConfigError(f"unknown sampling option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(params, **given) if params is not None else cls(**given)


@dataclass
class SamplingState:
    """Per-row token statistics the penalties read, kept as preallocated (B, V) tensors.

    ``seen`` marks tokens in the prompt or the output (repetition penalty); ``counts`` counts generated tokens
    (presence and frequency penalties). Either is ``None`` when no active processor needs it.
    """

    seen: Optional[Tensor] = None
    counts: Optional[Tensor] = None

    @classmethod
    def create(cls, params: SamplingParams, prompts: Sequence[Sequence[int]], vocab_size: int,
               device: torch.device | str = "cpu") -> "SamplingState":
        """State for rows that start from ``prompts`` (token ids, one list per row)."""
        seen = counts = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(len(prompts), vocab_size, dtype=torch.bool, device=device)
            for row, ids in enumerate(prompts):
                if len(ids):
                    seen[row, torch.as_tensor(list(ids), dtype=torch.long, device=device)] = True
        if params.presence_penalty or params.frequency_penalty:
            counts = torch.zeros(len(prompts), vocab_size, dtype=torch.float32, device=device)
        return cls(seen=seen, counts=counts)

    def update(self, next_ids: Tensor) -> None:
        """Records the chosen tokens ``next_ids`` (B,)."""
        if self.seen is not None:
            self.seen.scatter_(1, next_ids.view(-1, 1), True)
        if self.counts is not None:
            self.counts.scatter_add_(1, next_ids.view(-1, 1), torch.ones_like(next_ids, dtype=self.counts.dtype).view(-1, 1))


@SAMPLERS.register("repetition_penalty")
def repetition_penalty(logits: Tensor, params: SamplingParams, state: SamplingState) -> Tensor:
    """Sign-aware repetition penalty (arXiv:1909.05858): seen tokens' positive logits are divided by the
    penalty, negative ones multiplied, so a penalty > 1 always lowers their probability."""
    p = params.repetition_penalty
    if p == 1.0 or state.seen is None:
        return logits
    penalised = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(state.seen, penalised, logits)


@SAMPLERS.register("presence_frequency")
def presence_frequency_penalty(logits: Tensor, params: SamplingParams, state: SamplingState) -> Tensor:
    """OpenAI presence/frequency penalties: ``logit - presence * [count > 0] - frequency * count``."""
    if state.counts is None:
        return logits
    c = state.counts
    return logits - params.presence_penalty * (c > 0).to(logits.dtype) - params.frequency_penalty * c


@SAMPLERS.register("temperature")
def temperature(logits: Tensor, params: SamplingParams, state: SamplingState) -> Tensor:
    """Divides the logits by the temperature (> 0)."""
    t = params.temperature
    return logits if t in (0.0, 1.0) else logits / t


def keep_top_k(logits: Tensor, k: Optional[int]) -> Tensor:
    """Keeps the ``k`` largest logits per row (ties at the k-th value are kept); ``None`` or 0 keeps all."""
    if k is None or not 0 < k < logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def keep_top_p(logits: Tensor, p: Optional[float]) -> Tensor:
    """Nucleus filter (arXiv:1904.09751): keeps the smallest set of most likely tokens whose probability
    reaches ``p``; a token is kept when the probability mass strictly before it is below ``p``."""
    if p is None or not 0.0 < p < 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    remove_sorted = mass_before >= p
    remove_sorted[..., 0] = False  # the most likely token always stays
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def filter_logits(logits: Tensor, top_k: Optional[int] = None, top_p: Optional[float] = None) -> Tensor:
    """Top-k, then top-p filtering of ``logits`` (B, V): the one implementation, used by generation's sampler
    chain and by translation's sampling search."""
    return keep_top_p(keep_top_k(logits, top_k), top_p)


@SAMPLERS.register("top_k")
def top_k(logits: Tensor, params: SamplingParams, state: SamplingState) -> Tensor:
    """Keeps the ``top_k`` largest logits per row (:func:`keep_top_k`)."""
    return keep_top_k(logits, params.top_k)


@SAMPLERS.register("top_p")
def top_p(logits: Tensor, params: SamplingParams, state: SamplingState) -> Tensor:
    """Nucleus filter (:func:`keep_top_p`)."""
    return keep_top_p(logits, params.top_p)


@SAMPLERS.register("min_p")
def min_p(logits: Tensor, params: SamplingParams, state: SamplingState) -> Tensor:
    """Min-p filter (arXiv:2407.01082): drops tokens less likely than ``min_p`` times the top token."""
    m = params.min_p
    if not m:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)
    threshold = probs.max(dim=-1, keepdim=True).values * m
    return logits.masked_fill(probs < threshold, float("-inf"))


# The order processors run in; a registered name left out here is never run by generation.
ORDER = ("repetition_penalty", "presence_frequency", "temperature", "top_k", "top_p", "min_p")


def active_processors(params: SamplingParams) -> list[LogitsProcessor]:
    """The processors that change anything under ``params``, in order (greedy skips the sampling filters)."""
    wanted = []
    if params.repetition_penalty != 1.0:
        wanted.append("repetition_penalty")
    if params.presence_penalty or params.frequency_penalty:
        wanted.append("presence_frequency")
    if not params.greedy:
        if params.temperature != 1.0:
            wanted.append("temperature")
        if params.top_k is not None:
            wanted.append("top_k")
        if params.top_p is not None and params.top_p < 1.0:
            wanted.append("top_p")
        if params.min_p:
            wanted.append("min_p")
    return [SAMPLERS.get(name) for name in ORDER if name in wanted]


def process_logits(logits: Tensor, params: SamplingParams, state: SamplingState,
                   processors: Optional[list[LogitsProcessor]] = None) -> Tensor:
    """Runs the active processors on ``logits`` (B, V) and returns the filtered logits."""
    for proc in active_processors(params) if processors is None else processors:
        logits = proc(logits, params, state)
    return logits


def make_generators(seed: Optional[int], sample_indices: Sequence[int], device: torch.device | str = "cpu") -> Optional[list[torch.Generator]]:
    """One generator per row, row ``i`` seeded with ``seed + sample_indices[i]``; ``None`` without a seed
    (torch's global generator is used then)."""
    if seed is None:
        return None
    gens = []
    for idx in sample_indices:
        g = torch.Generator(device=device)
        g.manual_seed(int(seed) + int(idx))
        gens.append(g)
    return gens


def choose_next(logits: Tensor, params: SamplingParams, generators: Optional[list[torch.Generator]] = None) -> Tensor:
    """Picks one token per row from processed logits (B, V): argmax when greedy, else a draw from the softmax.

    With per-row generators each row draws its own exponential noise and takes ``argmax(p / E)``, which samples
    from ``p`` exactly (the exponential race, equivalent to the Gumbel-max trick), so a row's draw does not
    depend on the other rows.
    """
    if params.greedy:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(logits.float(), dim=-1)
    if generators is None:
        return torch.multinomial(probs, 1).view(-1)
    noise = torch.empty_like(probs)
    for row, g in enumerate(generators):
        noise[row].exponential_(generator=g)
    return torch.argmax(probs / noise.clamp_min_(1e-30), dim=-1)
