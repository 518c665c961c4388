"""Measurement helpers shared by ``lmforge compare`` and the benchmarks: bits per character/byte, parameter
splits, latency, peak memory, size on disk and a description of the machine.

Every helper measures what it names and nothing else:

* bits per character and per byte come from the summed loss and the *real* text length of the split, never
  from the loss per token (a BPE token covers several characters, so bits per token is a different number);
* latencies are medians over repeated calls after a warm-up, with CUDA synchronised around each call so the
  clock sees the kernels and not just their launch;
* peak memory (:class:`PeakMemory`, from :mod:`lmforge.evaluation.memory`) is the kernel's own high-water mark
  of the process RSS on CPU and ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from lmforge.evaluation.memory import PeakMemory, current_rss_bytes
from torch import nn
import torch

__all__ = [
    "bits_per_unit", "bits_per_char", "bits_per_byte", "parameter_split", "Timing", "time_call",
    "forward_latency", "decode_step_times", "PeakMemory", "current_rss_bytes", "size_on_disk", "machine_info",
]

_LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------------- quality
def bits_per_unit(loss_nats_per_token: float, tokens: int, units: int) -> float:
    """Converts a mean loss in nats per token into bits per text unit (character or byte).

    The total information is ``loss * tokens`` nats; dividing by ``ln 2`` gives bits and by ``units`` spreads it
    over the text. ``tokens`` must be the number of targets the loss was averaged over (no padding).

    Args:
        loss_nats_per_token: mean cross-entropy per predicted token, natural log.
        tokens: number of predicted tokens the mean is over.
        units: characters (or bytes) of text those tokens encode.

    Returns:
        Bits per unit.
    """
    if tokens <= 0 or units <= 0:
        raise ValueError(f"tokens and units must be positive (got tokens={tokens}, units={units})")
    return loss_nats_per_token * tokens / (units * _LN2)


def bits_per_char(loss_nats_per_token: float, tokens: int, chars: int) -> float:
    """Bits per character: :func:`bits_per_unit` over the split's character count."""
    return bits_per_unit(loss_nats_per_token, tokens, chars)


def bits_per_byte(loss_nats_per_token: float, tokens: int, n_bytes: int) -> float:
    """Bits per UTF-8 byte: :func:`bits_per_unit` over the split's byte count."""
    return bits_per_unit(loss_nats_per_token, tokens, n_bytes)


# ---------------------------------------------------------------------------------------------- parameters
def parameter_split(model: Any, vocab_size: Optional[int] = None) -> dict[str, Any]:
    """Splits a language model's parameters into embedding, body (recurrent or attention layers) and output.

    * ``embedding``: parameters of every ``nn.Embedding`` (token and learned position tables);
    * ``output``: parameters of ``nn.Linear`` layers producing ``vocab_size`` features that are not already
      counted, so a head tied to the embedding adds only its bias (or nothing);
    * ``body``: everything else (LSTM cells, attention, feed-forward, norms).

    Shared tensors are counted once, so ``embedding + body + output == total``.

    Args:
        model: an ``nn.Module``.
        vocab_size: the output size identifying the head; default ``model.config.vocab_size``.

    Returns:
        ``{"embedding", "body", "output", "total", "tied"}``; ``tied`` is True when the head reuses the
        embedding matrix (or the model has no separate head layer).
    """

    if vocab_size is None:
        vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    seen: set[int] = set()
    counts = {"embedding": 0, "body": 0, "output": 0}

    def take(params: Any, bucket: str) -> None:
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                counts[bucket] += p.numel()

    modules = list(model.modules())
    embedding_weights = set()
    for m in modules:
        if isinstance(m, nn.Embedding):
            take(m.parameters(recurse=False), "embedding")
            embedding_weights.add(id(m.weight))
    tied, has_head = False, False
    for m in modules:
        if isinstance(m, nn.Linear) and vocab_size is not None and m.out_features == vocab_size:
            has_head = True
            tied = tied or id(m.weight) in embedding_weights
            take(m.parameters(recurse=False), "output")
    take(model.parameters(), "body")
    total = sum(counts.values())
    if not has_head:
        tied = bool(getattr(getattr(model, "config", None), "tie_embeddings", embedding_weights != set()))
    return {**counts, "total": total, "tied": tied}


# ------------------------------------------------------------------------------------------------- latency
@dataclass
class Timing:
    """Wall-clock times of repeated calls, in seconds."""

    median_s: float
    min_s: float
    max_s: float
    repeats: int
    warmup: int
    times_s: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict."""
        return asdict(self)


def _sync(device: Any) -> None:
    if device is not None and str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], repeats: int = 10, warmup: int = 2, device: Any = None,
              clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Times ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones; the median is the figure to quote.

    Args:
        fn: the call to time (no arguments).
        repeats: timed calls (at least 1).
        warmup: untimed calls first (allocator, caches, lazy initialisation).
        device: when a CUDA device, the device is synchronised before starting and before stopping the clock.
        clock: the time source (seconds).

    Returns:
        A :class:`Timing`.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1 (got {repeats})")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = clock()
        fn()
        _sync(device)
        times.append(clock() - start)
    return Timing(statistics.median(times), min(times), max(times), repeats, warmup, times)


def _model_device(model: Any) -> Any:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def forward_latency(model: Any, batch_size: int, seq_len: int, vocab_size: int, repeats: int = 10,
                    warmup: int = 2, seed: int = 0) -> Timing:
    """Latency of one forward pass over ``(batch_size, seq_len)`` random token ids, in inference mode.

    Args:
        model: a module called as ``model(idx)``.
        batch_size: sequences per call.
        seq_len: tokens per sequence.
        vocab_size: ids are drawn from ``[0, vocab_size)``.
        repeats: timed calls.
        warmup: untimed calls first.
        seed: seed of the random ids.

    Returns:
        A :class:`Timing`.
    """

    device = _model_device(model)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab_size, (batch_size, seq_len), generator=gen).to(device)  # (B, T)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return time_call(lambda: model(idx), repeats=repeats, warmup=warmup, device=device)
    finally:
        model.train(was_training)


def decode_step_times(model: Any, length: int, batch_size: int = 1, repeats: int = 3, start_id: int = 2,
                      clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds per generated token at each position 1..``length`` of greedy cached decoding.

    Uses the :class:`~lmforge.models.protocol.CausalLM` decoding API (``init_state``/``step``) directly, so
    every family is measured by the same loop: feed ``start_id``, then feed back the arg-max token one step at
    a time. Each step is synchronised on CUDA; the value per position is the median over ``repeats`` runs
    (the first run is also a warm-up and is discarded when ``repeats > 1``).

    Args:
        model: a causal LM with ``init_state`` and ``step``.
        length: tokens to generate (capped by the caller at the model's context).
        batch_size: sequences decoded together.
        repeats: runs whose per-position times are combined by the median.
        start_id: the first token fed (``<bos>`` by default).
        clock: the time source.

    Returns:
        A list of ``length`` seconds-per-step figures (time of one step for the whole batch).
    """

    device = _model_device(model)
    was_training = model.training
    model.eval()
    runs: list[list[float]] = []
    try:
        with torch.inference_mode():
            for _ in range(repeats + (1 if repeats > 1 else 0)):
                state = model.init_state(batch_size)
                tok = torch.full((batch_size, 1), start_id, dtype=torch.long, device=device)  # (B, 1)
                times = []
                for _ in range(length):
                    _sync(device)
                    start = clock()
                    logits, state = model.step(tok, state)
                    tok = logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
                    _sync(device)
                    times.append(clock() - start)
                runs.append(times)
    finally:
        model.train(was_training)
    if len(runs) > 1:
        runs = runs[1:]
    return [statistics.median(col) for col in zip(*runs)]


# ------------------------------------------------------------------------------------------- disk, machine
def size_on_disk(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(device: Any = "cpu") -> dict[str, Any]:
    """The machine a measurement ran on: CPU model, cores, GPU (if used), torch, Python and OS versions."""

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    gpu = None
    if str(device).startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        gpu = {"name": props.name, "memory_bytes": int(props.total_memory), "cuda": torch.version.cuda}
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }
