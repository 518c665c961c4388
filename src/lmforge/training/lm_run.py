"""Language-model runs from start to finish: text -> tokenizer -> token cache -> model -> Trainer -> run folder,
and the evaluation of a finished run on its validation split or on any text.

``lmforge train`` and ``lmforge eval`` are thin adapters over :func:`train_lm` and :func:`evaluate_run`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from lmforge.config import RunConfig
from lmforge.errors import CheckpointError, ConfigError
from lmforge.training import checkpoint as ckpt

__all__ = ["LMRun", "prepare_lm_run", "train_lm", "evaluate_run", "sample_text"]

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
    from lmforge.models.lora import has_lora
    from lmforge.tokenizers import load_tokenizer

    base = ckpt.load_run(init_from)
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
    model = base.model
    if not config.train.lora_rank and not has_lora(model) and next(model.parameters()).dtype in (torch.bfloat16, torch.float16):
        model = model.float()  # full training keeps float32 master weights; LoRA trains float32 adapters instead
    return config, model, tok


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
    from lmforge.data import prepare_lm_data, read_documents, split_documents
    from lmforge.models import build_model
    from lmforge.tokenizers import load_tokenizer, train_tokenizer
    from lmforge.training.distributed import current_dist, main_first, shared_tokenizer

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
    from lmforge.training.distributed import process_group
    from lmforge.training.precision import resolve_device
    from lmforge.training.tasks import LMTask
    from lmforge.training.trainer import Trainer

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
    """A sample continuation of ``prompt`` (through ``lmforge.inference`` when available)."""
    try:
        from lmforge.inference.generation import generate
        from lmforge.inference.sampling import SamplingParams
    except ImportError:
        return _sample_simple(model, tokenizer, prompt, max_new_tokens, temperature, top_k, seed)
    params = SamplingParams(temperature=temperature, top_k=top_k, max_new_tokens=max_new_tokens, seed=seed)
    was_training = model.training
    model.eval()
    try:
        return generate(model, tokenizer, [prompt], params)[0].text
    finally:
        model.train(was_training)


@torch.no_grad()
def _sample_simple(model: torch.nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int, temperature: float,
                   top_k: Optional[int], seed: int) -> str:
    # Plain re-encoding sampler used only when lmforge.inference is not installed.
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = tokenizer.encode(prompt) or [tokenizer.bos_id]
    context = getattr(model, "max_context", None) or 256
    out: list[int] = []
    try:
        for _ in range(max_new_tokens):
            x = torch.tensor([(ids + out)[-context:]], device=device)  # (1, T)
            logits = model(x)[0][0, -1].float().cpu() / max(temperature, 1e-6)  # (V,)
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits[logits < kth] = -float("inf")
            nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
            if nxt == tokenizer.eos_id:
                break
            out.append(nxt)
    finally:
        model.train(was_training)
    return tokenizer.decode(out)


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
    from lmforge.data import encode_documents, read_documents, split_documents
    from lmforge.evaluation.perplexity import evaluate_lm

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
