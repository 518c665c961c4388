"""Translation runs from start to finish: parallel files -> tokenizer(s) -> filtered pairs -> seq2seq model ->
the shared Trainer -> run folder; and the BLEU/chrF evaluation of a finished run on aligned files.

``lmforge train --task translate`` and ``lmforge eval RUN --src F --ref F`` are thin adapters over
:func:`train_translation` and :func:`evaluate_translation`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from lmforge.config import RunConfig
from lmforge.data.pair_batching import encode_pairs, filter_pairs
from lmforge.data.parallel import drop_empty_pairs, read_parallel
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.evaluation.translation import evaluate_translator, paired_bootstrap
from lmforge.inference.translate import Translator
from lmforge.models import build_model
from lmforge.tokenizers import load_tokenizer, train_tokenizer
from lmforge.training import checkpoint as ckpt
from lmforge.training.distributed import current_dist, main_first, process_group, shared_tokenizer
from lmforge.training.precision import resolve_device
from lmforge.training.tasks_translate import TranslationTask
from lmforge.training.trainer import Trainer
from lmforge.utils.files import atomic_write_json, atomic_write_text
from lmforge.workflows.lm_run import _cache_dir

__all__ = ["TranslationRun", "prepare_translation_run", "train_translation", "evaluate_translation",
           "compare_translation"]

log = logging.getLogger(__name__)

VAL_CAP = 2000  # at most this many pairs are split off for validation when no validation files are given
VAL_BLEU_SENTENCES = 500  # the final evaluation translates (greedily) at most this many validation pairs for BLEU


@dataclass
class TranslationRun:
    """Everything :func:`train_translation` builds before training starts."""

    config: RunConfig
    src_tokenizer: Any
    tgt_tokenizer: Any
    task: Any  # TranslationTask
    model: torch.nn.Module
    run_dir: Path
    val_pairs: list[tuple[str, str]]

    @property
    def tokenizer_files(self) -> Any:
        """What ``save_run`` writes: one ``tokenizer.json`` for a joint vocabulary, else one per side."""
        if self.src_tokenizer is self.tgt_tokenizer:
            return self.src_tokenizer
        return {ckpt.SRC_TOKENIZER_FILE: self.src_tokenizer, ckpt.TGT_TOKENIZER_FILE: self.tgt_tokenizer}


def _read_pairs(src: str, tgt: Optional[str]) -> list[tuple[str, str]]:
    """The non-empty pairs of two aligned files (or a TSV); empty line pairs are skipped and counted in the log."""
    pairs, skipped = drop_empty_pairs(read_parallel(src, tgt))
    if skipped:
        log.warning("skipped %d empty line pair(s) of %d in %s%s", skipped, len(pairs) + skipped, src,
                    f" / {tgt}" if tgt else "")
    if not pairs:
        raise DataError(f"{src}: every line pair has an empty side; nothing to train on or score")
    return pairs


def _pairs(config: RunConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    d = config.data
    if not d.src:
        raise ConfigError("a translation run needs parallel text: pass --src FILE --tgt FILE (or a TSV as --src)")
    train = _read_pairs(d.src, d.tgt)
    if d.val_src:
        return train, _read_pairs(d.val_src, d.val_tgt)
    n_val = min(VAL_CAP, max(1, int(len(train) * d.val_fraction)))
    if len(train) - n_val < 1:
        raise ConfigError(f"{d.src} has only {len(train)} pairs: too few to split off validation; pass data.val_src/val_tgt")
    return train[:-n_val], train[-n_val:]


def _tokenizers(config: RunConfig, train: list[tuple[str, str]], run_dir: Path, resume: bool) -> tuple[Any, Any]:
    if resume:
        run = run_dir / ckpt.TOKENIZER_FILE
        if run.is_file():
            tok = load_tokenizer(run)
            return tok, tok
        if (run_dir / ckpt.SRC_TOKENIZER_FILE).is_file():
            return load_tokenizer(run_dir / ckpt.SRC_TOKENIZER_FILE), load_tokenizer(run_dir / ckpt.TGT_TOKENIZER_FILE)
        raise CheckpointError(f"{run_dir} has no tokenizer files; it cannot be resumed (train without --resume)")
    tk = config.tokenizer
    if tk.path:
        tok = load_tokenizer(tk.path)
        return tok, tok
    info, shared = current_dist(), _cache_dir(config, run_dir)

    def fit(name: str, texts: list[str]) -> Any:  # under torchrun rank 0 trains, the others load (main_first)
        return shared_tokenizer(info, shared / name, lambda: train_tokenizer(
            tk.kind, texts, vocab_size=tk.vocab_size, min_frequency=tk.min_frequency, lowercase=tk.lowercase))

    if config.data.joint_vocab:
        tok = fit(ckpt.TOKENIZER_FILE, [s for s, _ in train] + [t for _, t in train])
        return tok, tok
    return fit(ckpt.SRC_TOKENIZER_FILE, [s for s, _ in train]), fit(ckpt.TGT_TOKENIZER_FILE, [t for _, t in train])


# Where translation's defaults differ from the general ones (what the translate-* presets and BENCHMARKS.md's
# runs use): byte-level BPE (the LM default, char, is a poor unit for translation) and label smoothing 0.1
# (arXiv:1512.00567). Applied to settings a config leaves out; the resolved config records them.
TRANSLATION_DEFAULTS = {"tokenizer.kind": "bpe", "train.label_smoothing": 0.1}


def _translation_defaults(config: RunConfig) -> RunConfig:
    unset = {}
    for key, value in TRANSLATION_DEFAULTS.items():
        section, field = key.split(".")
        if field not in getattr(config, section).model_fields_set and not (key == "tokenizer.kind" and config.tokenizer.path):
            unset[key] = value
    return config.with_overrides(unset) if unset else config


def prepare_translation_run(config: RunConfig, resume: bool = False) -> TranslationRun:
    """Reads the pairs, trains (or loads) the tokenizer(s), encodes and filters the pairs and builds the model.

    The model's vocabulary sizes (and ``pad_idx``) are set from the tokenizers; training pairs longer than
    ``data.max_len`` tokens (or the model's ``max_len``) on either side are dropped.
    """

    if config.task != "translate":
        raise ConfigError(f"task {config.task!r} is not a translation run; pass --task translate")
    run_dir = Path(config.out_dir)
    if not resume:
        config = _translation_defaults(config)
    train, val = _pairs(config)
    with main_first(current_dist()):
        src_tok, tgt_tok = _tokenizers(config, train, run_dir, resume)
    if config.model.family == "seq2seq_transformer" and config.model.share_embeddings and src_tok is not tgt_tok:
        raise ConfigError("model.share_embeddings needs one joint tokenizer; set data.joint_vocab=true")
    sizes = {"model.src_vocab_size": src_tok.vocab_size, "model.tgt_vocab_size": tgt_tok.vocab_size,
             "model.pad_idx": tgt_tok.pad_id}
    if any(getattr(config.model, k.split(".")[1]) != v for k, v in sizes.items()):
        if resume:
            raise CheckpointError(f"{run_dir}: the saved tokenizers do not match model sizes in config.yaml; the run folder is inconsistent")
        config = config.with_overrides(sizes)
    train_src, train_tgt = encode_pairs(train, src_tok, tgt_tok)
    max_len = min(config.data.max_len, config.model.max_len)
    keep = filter_pairs(train_src, train_tgt, max_len)
    log.info("kept %d of %d training pairs (max_len %d)", len(keep), len(train), max_len)
    val_src, val_tgt = encode_pairs(val, src_tok, tgt_tok)
    vkeep = [i for i in range(len(val)) if val_src[i] and val_tgt[i]]
    task = TranslationTask(
        [train_src[i] for i in keep], [train_tgt[i] for i in keep],
        [val_src[i][:max_len] for i in vkeep], [val_tgt[i][: max_len - 1] for i in vkeep],
        pad_id=tgt_tok.pad_id, bos_id=tgt_tok.bos_id, eos_id=tgt_tok.eos_id, max_tokens=config.data.max_tokens,
        seed=config.train.seed, label_smoothing=config.train.label_smoothing, val_text=val,
        tokenizers=(src_tok, tgt_tok), bleu_sentences=VAL_BLEU_SENTENCES,
    )
    torch.manual_seed(config.train.seed)
    model = build_model(config.model)
    return TranslationRun(config, src_tok, tgt_tok, task, model, run_dir, val)


def train_translation(config: RunConfig, *, resume: bool = False, progress: Any = None) -> dict:
    """Trains a translation model as ``config`` says and writes the run folder ``config.out_dir``.

    Args:
        config: the run config (``task: translate``; ``data.src``/``data.tgt`` name the parallel files).
        resume: continue the run in ``config.out_dir``.
        progress: the trainer's progress callback.

    Returns:
        The trainer's summary (``val_loss``, ``val_ppl``, ``val_bleu``, ``val_chrf`` (greedy, on the validation
        pairs), ...), plus ``run_dir`` and ``sample`` (a few validation translations).
    """

    with process_group(resolve_device(config.train.device)):  # joined first: rank 0 alone trains the tokenizers
        run = prepare_translation_run(config, resume=resume)
        trainer = Trainer(run.config, run.model, run.task, run_dir=run.run_dir, tokenizers=run.tokenizer_files,
                          progress=progress)
        summary = trainer.fit(resume=resume)
    summary["run_dir"] = str(run.run_dir)
    summary["train_pairs"] = len(run.task.train_src)
    summary["train_target_tokens"] = sum(len(t) + 1 for t in run.task.train_tgt)  # per epoch, with <eos>
    if trainer.dist.is_main and not summary.get("interrupted"):
        shown = run.val_pairs[:3]
        hyps = Translator(trainer.raw, run.src_tokenizer, run.tgt_tokenizer).translate([s for s, _ in shown], beam=1)
        summary["sample"] = "\n".join(f"{s}\n  => {h}" for (s, _), h in zip(shown, hyps))
    return summary


def evaluate_translation(run_dir: str | Path, src: str | Path, ref: str | Path, beam: int = 5, device: str = "cpu",
                         batch_size: int = 32, out_dir: Optional[str | Path] = None,
                         progress: Any = None) -> dict[str, Any]:
    """Translates ``src`` with a run and scores it against ``ref`` with sacreBLEU (BLEU, chrF and TER).

    Line pairs with an empty side are skipped (and counted). The hypotheses of the scored pairs are kept beside
    the scores: ``<out_dir>/<src name>.beam<N>.hyp`` (one line each) and ``<out_dir>/<src name>.beam<N>.json``
    (scores, signatures and hypotheses); ``out_dir`` defaults to the run's ``eval/`` folder.

    Returns:
        ``bleu``, ``chrf``, ``ter``, their ``*_signature``, ``bleu_details``, ``sentences``,
        ``skipped_empty_pairs``, ``beam``, ``seconds``, ``run``, ``data``, ``split``, ``hypotheses_file`` and
        ``scores_file``.

    Raises:
        CheckpointError: not a translation run folder. DataError: unreadable or misaligned files.
    """
    return _translate_and_score(run_dir, src, ref, beam, device, batch_size, out_dir, progress)[0]


def _translate_and_score(run_dir: str | Path, src: str | Path, ref: str | Path, beam: int, device: str,
                         batch_size: int, out_dir: Optional[str | Path],
                         progress: Any) -> tuple[dict[str, Any], list[str], list[str]]:
    translator = Translator.load(run_dir, device=device)
    pairs, skipped = drop_empty_pairs(read_parallel(src, ref))
    if not pairs:
        raise DataError(f"{src} / {ref}: every line pair has an empty side; nothing to score")
    refs = [r for _, r in pairs]
    figs = evaluate_translator(translator, [s for s, _ in pairs], refs, beam=beam, batch_size=batch_size,
                               progress=progress)
    hyps = figs.pop("hypotheses")
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "eval"
    stem = f"{Path(src).name}.beam{beam}"
    hyp_file, scores_file = out / f"{stem}.hyp", out / f"{stem}.json"
    figs.update(run=str(run_dir), data=str(src), split="file", skipped_empty_pairs=skipped,
                hypotheses_file=str(hyp_file), scores_file=str(scores_file))
    atomic_write_text(hyp_file, "".join(h.replace("\n", " ") + "\n" for h in hyps))
    atomic_write_json(scores_file, {**figs, "reference": str(ref), "hypotheses": hyps})
    return figs, hyps, refs


def compare_translation(run_dir: str | Path, other_run: str | Path, src: str | Path, ref: str | Path, beam: int = 5,
                        device: str = "cpu", batch_size: int = 32, n_samples: int = 1000,
                        progress: Any = None) -> dict[str, Any]:
    """Translates ``src`` with two runs and compares them with sacreBLEU's paired bootstrap resampling.

    Args:
        run_dir: the baseline run.
        other_run: the run compared with it.
        src, ref: aligned source and reference files (line pairs with an empty side are skipped).
        beam, device, batch_size, progress: as in :func:`evaluate_translation` (each run keeps its hypotheses).
        n_samples: bootstrap resamples.

    Returns:
        :func:`~lmforge.evaluation.translation.paired_bootstrap`'s figures (each system's BLEU, chrF and TER with
        mean, 95% confidence interval and, for ``other_run``, the p-value), plus ``runs`` (each run's
        :func:`evaluate_translation` figures), ``beam``, ``data`` and ``reference``.
    """
    base, base_hyps, refs = _translate_and_score(run_dir, src, ref, beam, device, batch_size, None, progress)
    other, other_hyps, _ = _translate_and_score(other_run, src, ref, beam, device, batch_size, None, progress)
    figs = paired_bootstrap([(str(run_dir), base_hyps), (str(other_run), other_hyps)], refs, n_samples=n_samples)
    return {**figs, "runs": [base, other], "beam": beam, "data": str(src), "reference": str(ref)}
