"""The chat fine-tuning job: a language-model run fine-tuned on conversations (supervised, the loss on the
replies only; the task is :class:`~lmforge.training.tasks_chat.ChatSFTTask`), written to a new run folder whose
``summary.json`` records ``chat_template`` (``tokens``, or ``jinja`` for an imported checkpoint, tuned in its own
template) and ``finetuned_from``, which ``lmforge.api.LM.load`` reads. ``train.lora_rank`` > 0 trains LoRA
adapters on the frozen model (arXiv:2106.09685); they are saved beside the base weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lmforge.errors import ConfigError
from lmforge.models.run_folder import load_run
from lmforge.models.weights import master_weights
from lmforge.training.tasks_chat import ChatSFTTask, encode_conversations, read_conversations
from lmforge.training.trainer import Trainer
from lmforge.utils.files import atomic_write_json

__all__ = ["finetune", "read_conversations", "encode_conversations", "ChatSFTTask"]


def finetune(run_dir: str | Path, data: str | Path, out_dir: str | Path, *, val_data: str | Path | None = None,
             val_fraction: float = 0.1, overrides: Optional[dict[str, Any]] = None, progress: Any = None,
             device: Optional[str] = None) -> dict:
    """Fine-tunes the language model in ``run_dir`` on the conversations in ``data``; writes a new run folder.

    Args:
        run_dir: the base run (any language-model run: Transformer or LSTM).
        data: ``conversations.jsonl``.
        out_dir: the new run folder (must differ from ``run_dir``).
        val_data: validation conversations; default the last ``val_fraction`` of ``data`` (at least one).
        val_fraction: see ``val_data``.
        overrides: ``train.*`` settings as dotted keys (``{"train.max_steps": 300, "train.lr": 1e-3}``).
        progress: the trainer's progress callback.
        device: overrides ``train.device``.

    Returns:
        The summary (also in ``out_dir/summary.json``), with ``chat_template`` and ``finetuned_from``.

    Example:
        >>> finetune("runs/base", "conversations.jsonl", "runs/chat", overrides={"train.max_steps": 500})  # doctest: +SKIP
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if run_dir.resolve() == out_dir.resolve():
        raise ConfigError(f"the fine-tuned run needs its own folder; pass an --out other than {run_dir}")
    base = load_run(run_dir)
    if base.config.task != "lm":
        raise ConfigError(f"{run_dir} is a {base.config.task!r} run; fine-tuning for chat needs a language model")
    if base.tokenizer is None:
        raise ConfigError(f"{run_dir} has no tokenizer.json; fine-tuning needs the run's tokenizer")
    convs = read_conversations(data)
    if val_data is not None:
        train_convs, val_convs = convs, read_conversations(val_data)
    else:
        n_val = max(1, int(round(len(convs) * val_fraction))) if len(convs) > 1 else 0
        train_convs, val_convs = convs[: len(convs) - n_val], convs[len(convs) - n_val:]
    sft_defaults = {"train.lr": 1e-3, "train.warmup_steps": 20, "train.eval_interval": 100, "train.epochs": 3.0,
                    "train.sample_tokens": 0, "train.lora_rank": 0}  # LoRA only when asked, never inherited
    settings = {**sft_defaults, **(overrides or {})}
    if any(k in (overrides or {}) for k in ("train.max_steps", "train.time_budget")) and "train.epochs" not in (overrides or {}):
        settings["train.epochs"] = None
    bad = sorted(k for k in settings if not k.startswith("train."))
    if bad:
        raise ConfigError(f"fine-tuning only takes train.* settings, not {', '.join(bad)}")
    config = base.config.with_overrides({**settings, "out_dir": str(out_dir)})
    block = getattr(base.model, "max_context", None) or config.block_size
    tok = base.tokenizer
    # an imported checkpoint is tuned in its own chat format; lmforge's tokenizers use the role tokens
    template = "jinja" if getattr(tok, "kind", None) == "hf" else "tokens"
    train = encode_conversations(tok, train_convs, block, template)
    val = encode_conversations(tok, val_convs, block, template) if val_convs else []
    task = ChatSFTTask(train, val, config.train.batch_size, pad_id=int(tok.pad_id), seed=config.train.seed)
    model = master_weights(base.model, frozen=bool(config.train.lora_rank))  # an imported bf16 model: float32
    model.train()
    trainer = Trainer(config, model, task, run_dir=out_dir, tokenizers=tok, progress=progress, device=device)
    summary = trainer.fit()
    summary.update({"chat_template": template, "finetuned_from": str(run_dir), "conversations": len(train),
                    "val_conversations": len(val)})
    atomic_write_json(out_dir / "summary.json", summary)
    return summary
