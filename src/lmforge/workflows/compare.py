"""``lmforge compare``: the same data, tokenizer and budget for every model, and the same measurements.

The parent process reads the corpus, trains one tokenizer on the training split and builds one token cache;
every model then trains from that cache with the same window, batch size, optimiser settings, seed and budget.
Each model is trained in a fresh process, and measured (latency, generation, memory) in another fresh process
that loads the saved run, so the peak memory of one phase or one model never leaks into another's figure (a
process's allocator keeps freed memory, and the RSS high-water mark is per process). ``isolate=False`` runs
everything in this process instead (faster, for debugging; the memory figures then depend on the order).

The per-model work (training, measuring) lives in :mod:`lmforge.workflows.compare_workers`. The result is a
plain dict (see :mod:`lmforge.evaluation.report`), written by
:func:`~lmforge.evaluation.report.write_report`.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from lmforge.config import get_preset, PRESETS, read_config_file, RunConfig
from lmforge.data import prepare_lm_data, read_documents, split_documents
from lmforge.errors import ConfigError
from lmforge.evaluation.metrics import machine_info
from lmforge.tokenizers import train_tokenizer
from lmforge.training.precision import resolve_device
from lmforge.workflows.compare_workers import capped_warmup, measure_worker, run_job, train_worker

__all__ = ["CompareSettings", "ALIASES", "resolve_models", "run_compare", "shared_target"]

log = logging.getLogger(__name__)

#: Short names accepted by ``--models``.
ALIASES = {"lstm": "lstm-classic", "transformer": "transformer-classic"}
DEFAULT_PROMPTS = ["ROMEO:", "First Citizen:\n"]


@dataclass
class CompareSettings:
    """What to compare and how; every model gets the same values.

    Attributes:
        models: preset names (``lstm-classic``), aliases (``lstm``) or config files.
        data: corpus path (None = the bundled Tiny Shakespeare).
        tokenizer: ``char`` or ``bpe``; trained once on the training split and shared.
        vocab_size: BPE vocabulary size.
        budget_seconds: training seconds for all models together, split equally (evaluation excluded).
        budget_tokens: training tokens for each model (overrides ``budget_seconds``).
        out_dir: where the report, the runs and the token cache go.
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: training batch in sequences.
        block_size: training window; default the smallest context of the models, at most 256.
        eval_tokens: validation tokens scored (default the whole validation split).
        evals: validation points on each loss curve.
        eval_iters: batches per periodic evaluation.
        repeats: timed repeats per latency figure (after ``warmup`` untimed ones).
        decode_length: tokens generated for the time-per-token curve.
        gen_tokens: tokens generated per sequence for the generation-throughput figures.
        sample_tokens: length of each sample.
        prompts: sample prompts (default: two Shakespeare cues on the bundled corpus, else the start of the
            validation text).
        seed: one seed for initialisation, data order and sampling.
        notes: sentences copied into the report.
        isolate: one fresh process per model and phase (see the module docstring).
        threads: ``torch.set_num_threads`` for training and measuring (default: torch's choice). On a machine
            that other jobs share, 1 thread avoids the stalls of an oversubscribed thread pool.
        command: the command line, recorded in the report.
    """

    models: list[str] = field(default_factory=lambda: ["lstm-classic", "transformer-classic"])
    data: Optional[str] = None
    tokenizer: str = "char"
    vocab_size: int = 2000
    budget_seconds: Optional[float] = None
    budget_tokens: Optional[int] = None
    out_dir: str = "runs/compare"
    device: str = "auto"
    batch_size: int = 32
    block_size: Optional[int] = None
    eval_tokens: Optional[int] = None
    evals: int = 10
    eval_iters: int = 4
    repeats: int = 10
    warmup: int = 2
    decode_length: int = 256
    gen_tokens: int = 128
    sample_tokens: int = 200
    prompts: Optional[list[str]] = None
    seed: int = 1337
    notes: list[str] = field(default_factory=list)
    isolate: bool = True
    threads: Optional[int] = None
    command: Optional[str] = None


def resolve_models(specs: list[str]) -> list[tuple[str, str, RunConfig]]:
    """Turns ``--models`` entries into ``(name, description, RunConfig)``.

    Raises:
        ConfigError: an unknown preset or missing file, a translation model, or a name given twice.
    """
    out: list[tuple[str, str, RunConfig]] = []
    for spec in specs:
        name = ALIASES.get(spec, spec)
        if name in PRESETS:
            description = PRESETS[name].get("description", "")
            config = RunConfig.parse(get_preset(name), source=f"preset {name}")
        elif Path(spec).suffix.lower() in (".yaml", ".yml", ".json") or Path(spec).exists():
            data = read_config_file(spec)
            data = data if "model" in data else {"model": data}
            config = RunConfig.parse(data, source=spec)
            name, description = Path(spec).stem, f"from {spec}"
        else:
            lm_presets = [n for n, p in PRESETS.items() if p.get("task", "lm") == "lm" and "model" in p]
            raise ConfigError(f"unknown model {spec!r}; pass a preset ({', '.join(sorted(lm_presets))}), an alias "
                              f"({', '.join(ALIASES)}) or a .yaml/.json config file")
        if config.task != "lm":
            raise ConfigError(f"{spec!r} is a {config.model.family} translation model; compare language models "
                              "(lstm or transformer families)")
        if any(n == name for n, _, _ in out):
            raise ConfigError(f"model {name!r} is listed twice in --models; list each model once")
        out.append((name, description, config))
    return out


def shared_target(curves: dict[str, list[dict]]) -> Optional[float]:
    """The highest of the models' best validation losses: the lowest loss every model reached."""
    bests = [min(p["loss"] for p in pts) for pts in curves.values() if pts]
    return max(bests) if bests else None


def _time_to(points: list[dict], target: float) -> Optional[dict]:
    for p in points:
        if p["loss"] <= target:
            return p
    return None


# ------------------------------------------------------------------------------------------------ the driver
def _prepare(settings: CompareSettings, out_dir: Path, val_fraction: float) -> tuple[Any, list[str], dict]:
    docs = read_documents(settings.data)
    train_docs, val_docs = split_documents(docs, val_fraction=val_fraction)
    tok = train_tokenizer(settings.tokenizer, train_docs, vocab_size=settings.vocab_size)
    tok.save(out_dir / "tokenizer.json")
    data = prepare_lm_data(train_docs, val_docs, tok, out_dir / "cache")
    prompts = settings.prompts
    if not prompts:
        prompts = DEFAULT_PROMPTS if settings.data is None else [val_docs[0].strip().split("\n")[0][:40] or "The"]
    return tok, prompts, data.meta


def _budget_text(settings: CompareSettings, n: int) -> str:
    if settings.budget_tokens:
        return f"a budget of {settings.budget_tokens:,} training tokens"
    return f"a budget of {settings.budget_seconds / n:g} s of training (of {settings.budget_seconds:g} s for all {n} models)"


def run_compare(settings: CompareSettings) -> dict[str, Any]:
    """Trains and measures every model of ``settings``; returns the report dict (nothing is rendered here).

    Args:
        settings: a :class:`CompareSettings`.

    Returns:
        The report (see :mod:`lmforge.evaluation.report`); the runs are under ``out_dir/runs/<name>``.
    """

    if settings.budget_tokens is None and settings.budget_seconds is None:
        settings.budget_seconds = 300.0
    for what, value in (("budget_seconds", settings.budget_seconds), ("budget_tokens", settings.budget_tokens),
                        ("batch_size", settings.batch_size), ("evals", settings.evals), ("repeats", settings.repeats),
                        ("decode_length", settings.decode_length)):
        if value is not None and value <= 0:
            raise ConfigError(f"{what.replace('_', '-')} must be positive (got {value})")
    resolved = resolve_models(settings.models)
    out_dir = Path(settings.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(settings.device)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    val_fraction = resolved[0][2].data.val_fraction
    tok, prompts, meta = _prepare(settings, out_dir, val_fraction)

    contexts = [c.model.block_size for _, _, c in resolved if c.model.family == "transformer"]
    block = settings.block_size or min([256] + contexts)
    if any(block > c for c in contexts):
        raise ConfigError(f"--block-size {block} exceeds a model's context ({min(contexts)}); pass at most {min(contexts)}")
    decode_length = min([settings.decode_length] + contexts)
    n = len(resolved)
    report: dict[str, Any] = {
        "title": f"lmforge compare: {' vs '.join(name for name, _, _ in resolved)}",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": settings.command, "notes": list(settings.notes), "models": {},
        "settings": {**{k: v for k, v in asdict(settings).items() if k not in ("notes", "command", "models", "isolate")},
                     "models": [name for name, _, _ in resolved], "prompts": prompts, "block_size": block,
                     "decode_length": decode_length, "vocab_size": tok.vocab_size, "isolated_processes": settings.isolate,
                     "data": settings.data or "bundled Tiny Shakespeare",
                     "split": {k: meta[k] for k in ("train", "val")},
                     "budget_description": _budget_text(settings, n)},
    }
    if not settings.isolate:
        report["notes"].append("All models ran in one process (--no-isolate): memory figures depend on the order.")
    results = {}
    for name, description, config in resolved:
        job = _job(settings, name, config, n, block, out_dir, tok, prompts, contexts, val_fraction, device,
                   decode_length)
        log.info("%s: training (%s)", name, report["settings"]["budget_description"])
        trained = run_job(train_worker, job, settings.isolate)
        log.info("%s: measuring latency, generation and memory", name)
        measured = run_job(measure_worker, job, settings.isolate)
        results[name] = (description, trained, measured)

    curves = {name: r[1]["curve"] for name, r in results.items()}
    target = shared_target(curves)
    report["target_loss"] = target
    for name, (description, trained, measured) in results.items():
        report["models"][name] = _model_entry(description, trained, measured, target, out_dir / "runs" / name)
    if settings.threads:
        torch.set_num_threads(settings.threads)  # so that machine_info records the thread count the workers used
    report["machine"] = {**machine_info(device), "load_average_start": load_start,
                         "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None}
    return report


def _job(settings: CompareSettings, name: str, config: RunConfig, n: int, block: int, out_dir: Path, tok: Any,
         prompts: list[str], contexts: list[int], val_fraction: float, device: Any, decode_length: int) -> dict:
    """The worker job of one model: its run config under the shared budget, tokenizer, data and measurements."""
    train = {"batch_size": settings.batch_size, "seed": settings.seed, "device": settings.device,
             "eval_iters": settings.eval_iters, "max_steps": None, "time_budget": None, "epochs": None}
    if settings.budget_tokens:
        steps = max(1, math.ceil(settings.budget_tokens / (settings.batch_size * block)))
        train.update(max_steps=steps, eval_interval=max(1, steps // settings.evals),
                     warmup_steps=capped_warmup(config.train.warmup_steps, steps))
    else:
        train["time_budget"] = settings.budget_seconds / n
    model_over = {"vocab_size": tok.vocab_size}
    if config.model.family == "lstm":
        model_over["block_size"] = block
    data = config.to_dict()
    data["model"].update(model_over)
    data["train"].update(train)
    data["data"].update({"block_size": block, "path": settings.data})
    data["tokenizer"].update({"kind": settings.tokenizer, "vocab_size": settings.vocab_size,
                              "path": str(out_dir / "tokenizer.json")})
    data["out_dir"] = str(out_dir / "runs" / name)
    config = RunConfig.parse(data, source=name)
    job = {"name": name, "config": config.to_dict(), "data": settings.data, "val_fraction": val_fraction,
           "tokenizer_path": str(out_dir / "tokenizer.json"), "cache_dir": str(out_dir / "cache"),
           "run_dir": str(out_dir / "runs" / name), "eval_tokens": settings.eval_tokens, "evals": settings.evals,
           "log_level": logging.getLogger().getEffectiveLevel(), "device": str(device), "block_size": block,
           "repeats": settings.repeats, "warmup": settings.warmup, "decode_length": decode_length,
           "gen_tokens": min([settings.gen_tokens] + [c - len(tok.encode(prompts[0])) for c in contexts]),
           "sample_tokens": settings.sample_tokens, "prompts": prompts, "seed": settings.seed,
           "threads": settings.threads}
    return job


def _model_entry(description: str, trained: dict, measured: dict, target: Optional[float], run_dir: Path) -> dict:
    s = trained["summary"]
    params = measured["params"]
    decode = measured["decode_ms_per_token"]
    hit = _time_to(trained["curve"], target) if target is not None else None
    no_target = {"unavailable": "no validation point reached the shared target"}
    metrics = {
        "params_total": params["total"], "params_embedding": params["embedding"], "params_body": params["body"],
        "params_output": params["output"], "train_tokens_per_s": s["train_tokens_per_s"], "train_wall_s": s["train_time"],
        "train_tokens": s["tokens_seen"], "time_to_target_s": hit["time_s"] if hit else no_target,
        "val_loss": s.get("val_loss"), "perplexity": s.get("val_ppl"), "bits_per_char": s.get("val_bits_per_char"),
        "bits_per_byte": s.get("val_bits_per_byte"),
        "latency_b1_ms": measured["latency_b1_ms"], "latency_b32_ms": measured["latency_b32_ms"],
        "gen_tokens_per_s_b1": measured["gen_tokens_per_s_b1"], "gen_tokens_per_s_b32": measured["gen_tokens_per_s_b32"],
        "train_peak_memory_bytes": trained["memory"]["peak_bytes"],
        "train_memory_increase_bytes": trained["memory"]["increase_bytes"],
        "infer_peak_memory_bytes": measured["memory"]["peak_bytes"],
        "infer_memory_increase_bytes": measured["memory"]["increase_bytes"],
        "disk_bytes": measured["disk_bytes"],
    }
    if isinstance(decode, list) and decode:
        k = min(16, len(decode))
        metrics["decode_ms_start"] = statistics.median(decode[:k])  # medians: one stall must not move the figure
        metrics["decode_ms_end"] = statistics.median(decode[-k:])
    else:
        metrics["decode_ms_start"] = metrics["decode_ms_end"] = decode if isinstance(decode, dict) else \
            {"unavailable": "no tokens were generated"}
    for key, value in list(metrics.items()):
        if value is None:
            metrics[key] = {"unavailable": "the trainer did not report it (interrupted run?)"}
    samples = measured["samples"]
    return {
        "family": trained["config"]["model"]["family"], "description": description, "config": trained["config"],
        "run_dir": str(run_dir), "metrics": metrics, "parameters_tied": params["tied"],
        "curves": {"val": trained["curve"], "decode_ms_per_token": decode if isinstance(decode, list) else []},
        "memory_methods": {"train": trained["memory"]["method"], "inference": measured["memory"]["method"]},
        "samples": samples if isinstance(samples, list) else [],
        **({"samples_unavailable": samples["unavailable"]} if isinstance(samples, dict) else {}),
        "stopped_by": s.get("stopped_by"), "steps": s.get("steps"), "train_wall_including_eval_s": s.get("wall_time"),
    }
