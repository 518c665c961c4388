"""The budget-aware default of ``lmforge train --task translate``: which whole-run preset fits a time budget on a
device, and why (torch-free; the caller says whether a GPU is there).

A CPU gets the ``translate-cpu`` presets (the settings that reached 32.6 BLEU on Multi30k in 20 CPU-minutes,
BENCHMARKS.md), or their ``-fast`` tier, a third of the size, under :data:`FAST_BELOW` seconds (15 minutes of an idle
machine's compute: a CPU busy with other processes counts for its share); with no budget at all it trains for
:data:`DEFAULT_CPU_BUDGET` seconds (10 minutes), as ``lmforge train`` with no arguments trains for 120. A GPU
gets the ``translate-gpu`` presets (a 32M-parameter Transformer, 4x larger batches; not yet measured on a GPU).
The schedule's decay ends when the budget does (``train.time_budget``; see :mod:`lmforge.training.schedule`),
and warm-up ends after at most a tenth of it (``train.warmup_fraction``).

Example:
    >>> choice = choose_translation_preset(120.0, device="cpu")
    >>> choice.preset, choice.config["train"]["time_budget"]
    ('translate-cpu-fast', 120.0)
    >>> choose_translation_preset(1200.0).preset
    'translate-cpu'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from lmforge.config.presets import PRESETS, get_preset
from lmforge.errors import ConfigError
from lmforge.utils.cpu_load import busy, cpu_share

__all__ = ["TranslationChoice", "choose_translation_preset", "translation_presets", "DEFAULT_CPU_BUDGET",
           "DEFAULT_GPU_BUDGET", "FAST_BELOW"]

DEFAULT_CPU_BUDGET = 600.0  # seconds of training when no budget (time, steps or epochs) is given on a CPU
DEFAULT_GPU_BUDGET = 900.0  # the same on a GPU
# CPU budgets shorter than this (in an idle machine's seconds) get the -fast tier: in 600 s the 2.9M model saw 3.1
# epochs and reached 29.3 BLEU, the 7.1M one 1.6 epochs and 18.8 (BENCHMARKS.md, issue 18's runs E and F).
FAST_BELOW = 900.0


@dataclass(frozen=True)
class TranslationChoice:
    """What :func:`choose_translation_preset` chose.

    Attributes:
        preset: the preset's name.
        config: the preset as a partial RunConfig dict, its ``train.time_budget`` set to the budget.
        reason: one sentence saying what was chosen and why (the CLI prints it).
        threads: CPU threads to train with (``None``: torch's default); 1 when the CPU is already busy.
    """

    preset: str
    config: dict[str, Any] = field(repr=False)
    reason: str
    threads: Optional[int] = None


def _describe(config: dict[str, Any]) -> str:
    m = config["model"]
    if m["family"] == "seq2seq_transformer":
        shape = f"Transformer d_model {m['d_model']}, {m['num_encoder_layers']}+{m['num_decoder_layers']} layers"
    else:
        shape = f"LSTM emb {m['emb_dim']}, hidden {m['hidden_dim']}, {m['attention']} attention"
    return (f"{shape}, joint {config['tokenizer']['vocab_size']:,}-token BPE, batches of "
            f"{config['data']['max_tokens']:,} tokens, lr {config['train']['lr']:g}")


def choose_translation_preset(time_budget: Optional[float], *, device: Literal["cpu", "cuda", "mps"] = "cpu",
                              family: str = "transformer", step_budget: bool = False,
                              load: Optional[tuple[float, int]] = None) -> TranslationChoice:
    """Chooses the translation preset that fits ``time_budget`` seconds of training on ``device``.

    Args:
        time_budget: seconds of training, or ``None``: then :data:`DEFAULT_CPU_BUDGET` (a GPU:
            :data:`DEFAULT_GPU_BUDGET`) unless ``step_budget``.
        device: where training runs (resolve ``auto`` first).
        family: ``transformer`` or ``lstm`` (a ``seq2seq_`` prefix is accepted).
        step_budget: a step or epoch budget was given, so no time budget is added.
        load: ``(load, CPU cores)`` of the machine, when known (:func:`lmforge.utils.cpu_load.machine_load`: the
            tasks running now besides this one, or the load average). On a CPU already busy with other
            processes the run can expect about ``cores / (load + 1)`` of the machine, so the tier is chosen for
            that share of the budget; and it trains with one thread, since torch's threads would spend the
            budget waiting for each other while other processes hold the cores (BENCHMARKS.md, "Translation").

    Returns:
        The choice: preset name, its config with the budget, the reason and the thread count.

    Raises:
        ConfigError: an unknown family or a non-positive budget.
    """
    family = family.removeprefix("seq2seq_")
    if family not in ("transformer", "lstm"):
        raise ConfigError(f"unknown translation model family {family!r}; choose transformer or lstm")
    if time_budget is not None and time_budget <= 0:
        raise ConfigError(f"the time budget must be positive, got {time_budget:g} seconds")
    gpu = device == "cuda"
    budget = time_budget
    if budget is None and not step_budget:
        budget = DEFAULT_GPU_BUDGET if gpu else DEFAULT_CPU_BUDGET
    crowded = not gpu and busy(load)
    share = cpu_share(load) if crowded else 1.0  # of the machine's cores this run can expect
    fast = not gpu and budget is not None and budget * share < FAST_BELOW
    name = "translate-" + ("gpu" if gpu else "cpu") + ("-lstm" if family == "lstm" else "") + ("-fast" if fast else "")
    config = get_preset(name)
    config["train"]["time_budget"] = budget
    where = "one GPU" if gpu else ("an Apple GPU (mps), sized as for a CPU" if device == "mps" else "a CPU")
    if budget is None:
        why = f"a step or epoch budget on {where}"
    else:
        given = "given" if time_budget is not None else "the default when none is given"
        why = f"{budget:g} s of training ({given}) on {where}"
        if crowded:
            why += (f" busy with other work (load {load[0]:.1f} on {load[1]} cores: about "
                    f"{budget * share:.0f} s of an idle machine's compute)")
        if not gpu:
            why += f"; {'under' if fast else 'at least'} {FAST_BELOW:g} s picks the {'small' if fast else 'standard'} CPU tier"
    ends = "the cosine schedule ends with the budget" if budget is not None else "a cosine schedule over those steps"
    if crowded:
        ends += "; 1 thread, as the other processes hold the cores"
    reason = (f"chose preset {name} ({_describe(config)}): {why}; {ends}. "
              "Pass --preset, --config or --model-size to choose yourself.")
    return TranslationChoice(name, config, reason, 1 if crowded else None)


def translation_presets() -> list[str]:
    """The names of the presets :func:`choose_translation_preset` chooses among."""
    return sorted(n for n in PRESETS if n.startswith("translate-"))
