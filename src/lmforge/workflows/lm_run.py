"""Language-model runs from start to finish: text -> tokenizer -> token cache -> model -> Trainer -> run folder,
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
from lmforge.data import encode_documents, prepare_lm_data, read_documents, split_documents
from lmforge.errors import CheckpointError, ConfigError
from lmforge.evaluation.perplexity import evaluate_lm
from lmforge.inference.generation import generate
from lmforge.inference.sampling import SamplingParams
from lmforge.models import build_model
from lmforge.models.run_folder import load_run
from lmforge.models.weights import master_weights
from lmforge.tokenizers import load_tokenizer, train_tokenizer
from lmforge.training import checkpoint as ckpt
from lmforge.training.distributed import current_dist, main_first, process_group, shared_tokenizer
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


def prepare_lm_run(config: RunConfig, resume: bool = False, init_from: str | Path | None = None) -> LMRun:
    """Reads and splits the corpus, trains (or loads) the tokenizer, caches token ids and builds the model.

    In an initialised process group (``torchrun``, see :func:`train_lm`) rank 0 trains the tokenizer and writes
    the token cache while the other ranks wait, then they load both.

    Args:
        config: the run config; ``model.vocab_size`` is set from the tokenizer.
        resume: load the tokenizer saved in ``config.out_dir`` instead of training one.
        init_from: continue from this run's weights (trained or imported): its model and tokenizer are reused.

    Returns:
        An :class:`LMRun` whose ``config`` is the resolved one that will be saved.
    """

    if config.task != "lm":
        raise ConfigError(f"task {config.task!r} is not a language-model run; use --task translate for translation")
    run_dir = Path(config.out_dir)
    docs = read_documents(config.data.path)
    train_docs, val_docs = split_documents(docs, config.data.val_fraction)
    saved = run_dir / ckpt.TOKENIZER_FILE
    info = current_dist()
    base_model = None
    if init_from is not None and not resume:
        config, base_model, tokenizer = _init_from(config, init_from)
    with main_first(info):
        if base_model is not None:
            pass  # the base run's tokenizer
        elif resume:
            if not saved.is_file():
                raise CheckpointError(
                    f"{run_dir} has no {ckpt.TOKENIZER_FILE}; it cannot be resumed (train without --resume)")
            tokenizer = load_tokenizer(saved)
        elif config.tokenizer.path:
            tokenizer = load_tokenizer(config.tokenizer.path)
        else:
            tk = config.tokenizer
            fit = lambda: train_tokenizer(tk.kind, train_docs, vocab_size=tk.vocab_size,  # noqa: E731
                                          min_frequency=tk.min_frequency, lowercase=tk.lowercase)
            tokenizer = shared_tokenizer(info, _cache_dir(config, run_dir) / ckpt.TOKENIZER_FILE, fit)
        if config.model.vocab_size != tokenizer.vocab_size and base_model is None:  # an imported model may pad its vocab
            if resume:
                raise CheckpointError(
                    f"{run_dir}: the saved tokenizer has {tokenizer.vocab_size} tokens but config.yaml says "
                    f"model.vocab_size={config.model.vocab_size}; the run folder is inconsistent"
                )
            config = config.with_overrides({"model.vocab_size": tokenizer.vocab_size})
        data = prepare_lm_data(train_docs, val_docs, tokenizer, _cache_dir(config, run_dir))
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
        run = prepare_lm_run(config, resume=resume, init_from=init_from)
        cfg = run.config
        task = LMTask(run.data.train, run.data.val, cfg.block_size, cfg.train.batch_size, seed=cfg.train.seed,
                      val_meta=run.data.meta.get("val"), label_smoothing=cfg.train.label_smoothing)
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
                 device: str = "cpu") -> dict:
    """Scores a language-model run: loss, perplexity, bits per character and per byte, tokens and tokens/s.

    Args:
        run_dir: a run folder from ``lmforge train``.
        data: a text file, folder or .jsonl to score in full; ``None`` scores the run's own corpus split.
        split: without ``data``: ``val`` (the run's validation split). The runs keep no test split, so ``test``
            needs ``data``.
        batch_size: windows per forward pass (default: the run's batch size).
        device: where to run.

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
    if data is not None:
        docs = read_documents(data)
        source = str(data)
    else:
        if split == "test":
            raise ConfigError("a run keeps only train and val splits; pass the test text with --data FILE")
        docs = split_documents(read_documents(cfg.data.path), cfg.data.val_fraction)[1]
        source = cfg.data.path or "bundled Tiny Shakespeare"
    import numpy as np

    tokens = np.asarray(encode_documents(docs, run.tokenizer))
    meta = {"tokens": int(len(tokens)), "chars": sum(len(d) for d in docs), "bytes": sum(len(d.encode("utf-8")) for d in docs)}
    figs = evaluate_lm(run.model, tokens, meta, cfg.block_size, batch_size or cfg.train.batch_size, device=device)
    return {**figs, "run": str(run_dir), "data": source, "split": split if data is None else "file"}
