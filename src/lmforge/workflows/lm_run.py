"""Language-model runs from start to finish: text -> prepared shards (tokenizer + tokens) -> model -> Trainer -> run folder,
and the evaluation of a finished run on its validation split or on any text.

``lmforge train`` and ``lmforge eval`` are thin adapters over :func:`train_lm` and :func:`evaluate_run`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from lmforge.config import RunConfig
from lmforge.data import default_corpus_path, is_prepared, load_prepared, prepare, prepare_lm_data, split_documents
from lmforge.errors import CheckpointError, ConfigError
from lmforge.evaluation.perplexity import evaluate_lm
from lmforge.inference.generation import generate
from lmforge.inference.sampling import SamplingParams
from lmforge.models import build_model
from lmforge.models.run_folder import load_run
from lmforge.models.weights import master_weights
from lmforge.tokenizers import load_tokenizer, TokenizerSpec
from lmforge.training import checkpoint as ckpt
from lmforge.training.distributed import current_dist, main_first, process_group
from lmforge.training.precision import resolve_device
from lmforge.training.tasks import LMTask
from lmforge.training.trainer import Trainer

__all__ = ["LMRun", "lm_task", "prepare_lm_run", "train_lm", "evaluate_run", "sample_text"]

log = logging.getLogger(__name__)


@dataclass
class LMRun:
    """Everything :func:`train_lm` builds before training starts."""

    config: RunConfig
    tokenizer: Any
    data: Any  # lmforge.data.LMData
    model: torch.nn.Module
    run_dir: Path


def _cache_dir(config: RunConfig, run_dir: Path) -> Path:
    return Path(config.data.cache_dir) if config.data.cache_dir else run_dir / ".lmforge_cache"


def _init_from(config: RunConfig, init_from: str | Path) -> tuple[RunConfig, Any, Any]:
    """``(config, model, tokenizer)`` to continue training the run ``init_from`` (trained or imported): its model
    and weights, its tokenizer (which the data is encoded with), a new optimiser."""
    base = load_run(init_from)
    if base.config.task != "lm" or base.tokenizer is None:
        raise ConfigError(f"--init-from {init_from}: needs a language-model run with its tokenizer.json")
    tok, want = base.tokenizer, config.tokenizer
    if want.path and load_tokenizer(want.path).fingerprint() != tok.fingerprint():
        raise ConfigError(f"tokenizer.path {want.path} differs from the tokenizer of {init_from}, which --init-from reuses "
                          "(its model was trained on those ids); drop --tokenizer-file")
    if want.kind != tok.kind:
        raise ConfigError(f"tokenizer.kind is {want.kind!r} but {init_from} has a {tok.kind!r} tokenizer, which --init-from "
                          f"reuses (its model was trained on those ids); drop --tokenizer or set tokenizer.kind={tok.kind}")
    data = config.model_dump(mode="json")
    data["model"] = base.config.model.model_dump(mode="json")
    config = RunConfig.parse(data, source=f"--init-from {init_from}")
    return config, master_weights(base.model, frozen=bool(config.train.lora_rank)), tok


def lm_task(documents: Sequence[str], val_fraction: float, tokenizer: Any, cache_dir: str | Path,
            block_size: int | Callable[[int], int], batch_size: int, seed: int, **options: Any) -> tuple[LMTask, int]:
    """The LM training set-up from documents: split, tokenize into the token cache, window.

    Args:
        documents: the corpus's documents; the last ``val_fraction`` of them is the validation split.
        val_fraction: see ``documents``.
        tokenizer: the (already trained) tokenizer.
        cache_dir: where the token cache goes.
        block_size: the training window, or a function of the training split's length in tokens giving it.
        batch_size: windows per step.
        seed: seeds batch sampling.
        **options: other :class:`~lmforge.training.tasks.LMTask` settings (``label_smoothing``...).

    Returns:
        The task and its window.
    """
    train_docs, val_docs = split_documents(documents, val_fraction)
    data = prepare_lm_data(train_docs, val_docs, tokenizer, cache_dir)
    block = block_size(len(data.train)) if callable(block_size) else block_size
    return LMTask(data.train, data.val, block, batch_size, seed=seed, val_meta=data.meta.get("val"), **options), block


def _prepared(config: RunConfig, tokenizer: Any = None, progress: Any = None, val_fraction: Optional[float] = None,
              path: Optional[str] = None, reuse_only: bool = False) -> Any:
    """The run's data as prepared shards: a prepared folder is opened as it is; raw data goes through
    :func:`~lmforge.data.prepare` with the run's tokenizer settings (the cache ``lmforge prepare`` uses), or
    with ``tokenizer`` when given."""

    path = path or config.data.path or str(default_corpus_path())
    if is_prepared(path):
        return load_prepared(path, load_tokenizer=load_tokenizer)
    tk, dc = config.tokenizer, config.data
    spec = TokenizerSpec(tk.kind, vocab_size=tk.vocab_size, min_frequency=tk.min_frequency, lowercase=tk.lowercase,
                         path=tk.path, sample_mb=dc.tokenizer_sample_mb, tokenizer=tokenizer)
    report = None if progress is None else (
        lambda phase, done, total: progress({"event": "prepare", "phase": phase, "done": done, "total": total}))
    return prepare(path, tokenizer=spec, val_fraction=dc.val_fraction if val_fraction is None else val_fraction,
                   text_field=dc.text_field, skip_bad=dc.skip_bad, cache_root=dc.cache_dir, progress=report,
                   reuse_only=reuse_only)


def prepare_lm_run(config: RunConfig, resume: bool = False, progress: Any = None,
                   init_from: str | Path | None = None) -> LMRun:
    """Prepares the corpus (or opens a prepared folder), loads its tokenizer and builds the model.

    Raw data is streamed into token shards with bounded memory by :func:`~lmforge.data.prepare` (reused when a
    finished preparation of the same data and tokenizer exists). In an initialised process group (``torchrun``)
    rank 0 prepares while the other ranks wait, then they open what it wrote.

    Args:
        config: the run config; ``model.vocab_size`` is set from the tokenizer.
        resume: continue the run in ``config.out_dir``; its saved tokenizer must be the data's.
        progress: the trainer's progress callback (receives ``{"event": "prepare", ...}`` events).
        init_from: continue from this run's weights (trained or imported): its model and tokenizer are reused.

    Returns:
        An :class:`LMRun` whose ``config`` is the resolved one that will be saved.
    """

    if config.task != "lm":
        raise ConfigError(f"task {config.task!r} is not a language-model run; use --task translate for translation")
    run_dir = Path(config.out_dir)
    saved = run_dir / ckpt.TOKENIZER_FILE
    base_model, fixed = None, None
    if init_from is not None and not resume:
        config, base_model, fixed = _init_from(config, init_from)
    with main_first(current_dist()):
        if resume and not saved.is_file():
            raise CheckpointError(f"{run_dir} has no {ckpt.TOKENIZER_FILE}; it cannot be resumed (train without --resume)")
        fixed = load_tokenizer(saved) if resume else fixed
        data = _prepared(config, fixed, progress)
    tokenizer = data.tokenizer
    if fixed is not None and tokenizer.fingerprint() != fixed.fingerprint():
        raise CheckpointError(f"{config.data.path} was prepared with another tokenizer than the run it continues "
                              f"({run_dir if resume else init_from}); pass the raw data instead of that prepared folder")
    if config.model.vocab_size != tokenizer.vocab_size and base_model is None:  # an imported model may pad its vocab
        if resume:
            raise CheckpointError(
                f"{run_dir}: the saved tokenizer has {tokenizer.vocab_size} tokens but config.yaml says "
                f"model.vocab_size={config.model.vocab_size}; the run folder is inconsistent"
            )
        config = config.with_overrides({"model.vocab_size": tokenizer.vocab_size})
    if config.tokenizer.kind != tokenizer.kind:
        config = config.with_overrides({"tokenizer.kind": tokenizer.kind})
    torch.manual_seed(config.train.seed)
    model = base_model if base_model is not None else build_model(config.model)
    return LMRun(config=config, tokenizer=tokenizer, data=data, model=model, run_dir=run_dir)


def train_lm(config: RunConfig, *, resume: bool = False, progress: Any = None,
             sample_prompt: Optional[str] = "\n", init_from: str | Path | None = None) -> dict:
    """Trains a language model as ``config`` says and writes the run folder ``config.out_dir``.

    Args:
        config: the run config (``task: lm``).
        resume: continue the run in ``config.out_dir``.
        init_from: continue training the weights of this run (trained or imported) with a new optimiser
            (``train.lora_rank`` > 0: LoRA adapters only); its tokenizer is reused and must match the config's.
        progress: the trainer's progress callback (see :class:`~lmforge.training.trainer.Trainer`).
        sample_prompt: after training, generate ``train.sample_tokens`` tokens from this prompt into
            ``summary["sample"]``; ``None`` skips the sample.

    Returns:
        The summary (as in ``summary.json``), plus ``run_dir`` and ``sample``.
    """

    with process_group(resolve_device(config.train.device)):  # joined before the data: rank 0 prepares it
        run = prepare_lm_run(config, resume=resume, progress=progress, init_from=init_from)
        cfg = run.config
        task = LMTask(run.data.train, run.data.val, cfg.block_size, cfg.train.batch_size, seed=cfg.train.seed,
                      val_meta=run.data.meta.get("val"), label_smoothing=cfg.train.label_smoothing,
                      eval_tokens=cfg.train.eval_tokens, eval_share=cfg.train.eval_share)
        if progress is not None:
            task.eval_progress = lambda done, total: progress({"event": "eval_progress", "done": done, "total": total})
        trainer = Trainer(cfg, run.model, task, run_dir=run.run_dir, tokenizers=run.tokenizer, progress=progress)
        summary = trainer.fit(resume=resume)
    summary["run_dir"] = str(run.run_dir)
    if init_from is not None:
        summary["init_from"] = str(init_from)
    if sample_prompt is not None and cfg.train.sample_tokens > 0 and trainer.dist.is_main:
        summary["sample"] = sample_text(trainer.raw, run.tokenizer, sample_prompt, cfg.train.sample_tokens,
                                        seed=cfg.train.seed)
    return summary


def sample_text(model: torch.nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int, temperature: float = 0.8,
                top_k: Optional[int] = 40, seed: int = 0) -> str:
    """A sample continuation of ``prompt``."""
    params = SamplingParams(temperature=temperature, top_k=top_k, max_new_tokens=max_new_tokens, seed=seed)
    was_training = model.training
    model.eval()
    try:
        return generate(model, tokenizer, [prompt], params)[0].text
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_run(run_dir: str | Path, data: Optional[str] = None, split: str = "val", batch_size: Optional[int] = None,
                 device: str = "cpu", max_tokens: Optional[int] = None, progress: Any = None) -> dict:
    """Scores a language-model run: loss, perplexity, bits per character and per byte, tokens and tokens/s.

    The text is prepared into token shards on all cores (reusing the run's prepared data when it is still
    there) and scored window by window, so any size fits in memory.

    Args:
        run_dir: a run folder from ``lmforge train``.
        data: a corpus (any input of ``lmforge prepare``) to score in full; ``None`` scores the run's own
            validation split.
        split: without ``data``: ``val`` (the run's validation split). The runs keep no test split, so ``test``
            needs ``data``.
        batch_size: windows per forward pass (default: the run's batch size).
        device: where to run.
        max_tokens: score at most this many tokens, in windows spread evenly over the text (default: all).
        progress: called with ``{"event": "prepare"|"eval_progress", ...}`` events.

    Returns:
        The figures of :func:`~lmforge.evaluation.perplexity.evaluate_lm` plus ``run``, ``data`` and ``split``.
    """

    run = ckpt.load_run(run_dir, device=device)
    cfg = run.config
    if cfg.task != "lm":
        raise ConfigError(f"{run_dir} is a {cfg.task} run; evaluate it with `lmforge eval RUN --src FILE --ref FILE`")
    if run.tokenizer is None:
        raise CheckpointError(f"{run_dir} has no {ckpt.TOKENIZER_FILE}; the run folder is incomplete")
    if split not in ("val", "test"):
        raise ConfigError(f"unknown split {split!r}; choose val or test")
    if data is None and split == "test":
        raise ConfigError("a run keeps only train and val splits; pass the test text with --data FILE")
    if data is None:
        prepared = _prepared(cfg, progress=progress, reuse_only=True)  # the training's shards, when still there
        if prepared is None or prepared.tokenizer is None or prepared.tokenizer.fingerprint() != run.tokenizer.fingerprint():
            prepared = _prepared(cfg, run.tokenizer, progress)
        source = cfg.data.path or "bundled Tiny Shakespeare"
    else:
        prepared = _prepared(cfg, run.tokenizer, progress, val_fraction=1.0, path=str(data))  # all of it is scored
        source = str(data)
    report = None if progress is None else (
        lambda done, total: progress({"event": "eval_progress", "done": done, "total": total}))
    figs = evaluate_lm(run.model, prepared.val, prepared.meta["val"], cfg.block_size, batch_size or cfg.train.batch_size,
                       device=device, max_tokens=max_tokens, progress=report)
    return {**figs, "run": str(run_dir), "data": source, "split": split if data is None else "file"}
