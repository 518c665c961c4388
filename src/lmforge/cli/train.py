"""``lmforge train``: train a language model (or, with ``--task translate``, a translation model).

With no arguments it trains the ``shakespeare-char`` preset (a char-level Transformer on the bundled Tiny
Shakespeare, two minutes of training) and prints the validation figures, a sample and the run folder.

Config resolution, later wins: ``--preset`` (default ``shakespeare-char``) -> ``--config FILE`` -> the
model-choice options (``--model``/``--model-size``) -> the other options -> dotted ``key=value`` overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from lmforge.cli.lora_args import add_lora_args, lora_overrides
from lmforge.errors import ConfigError

DESCRIPTION = "Train a model: point it at text, get a trained model, its figures and a sample."


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the options of ``lmforge train``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("examples:\n  lmforge train\n  lmforge train --data notes.txt --tokenizer bpe --time-budget 300\n"
                     "  lmforge train --model lstm --max-steps 2000 train.lr=3e-3\n"
                     "  torchrun --nproc_per_node=2 -m lmforge train --device cpu\n"
                     "  lmforge train --task translate --src train.de --tgt train.en")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. model.d_model=256 train.lr=3e-4")
    g = parser.add_argument_group("what to train")
    g.add_argument("--preset", help="a preset name (see `lmforge list presets`); default shakespeare-char")
    g.add_argument("--config", metavar="FILE", help="a YAML/JSON run config (applied over --preset when both are given)")
    g.add_argument("--model", "--model-type", dest="model", choices=["transformer", "lstm"], help="model family")
    g.add_argument("--model-size", choices=["tiny", "small", "medium", "large"], help="model size preset of the family")
    g.add_argument("--task", choices=["lm", "translate"], help="language model (default) or translation")
    g.add_argument("--data", metavar="PATH", help="raw text (file, folder, .jsonl(.gz), .parquet, datasets folder: prepared "
                   "first, in the `lmforge prepare` cache) or a prepared folder (default: bundled Tiny Shakespeare)")
    g.add_argument("--src", metavar="FILE", help="translate: source sentences, one a line (or a TSV of pairs)")
    g.add_argument("--tgt", metavar="FILE", help="translate: target sentences aligned with --src")
    g.add_argument("--tokenizer", choices=["char", "bpe", "word", "hf"], help="tokenizer kind, trained on the training "
                   "split (hf: only with --init-from an imported run, whose tokenizer is reused)")
    g.add_argument("--tokenizer-file", metavar="FILE", help="use this tokenizer.json instead of training one")
    g.add_argument("--vocab-size", type=int, help="bpe/word vocabulary size")
    b = parser.add_argument_group("budget and optimisation")
    b.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    b.add_argument("--epochs", type=float, help="stop after this many passes over the training tokens")
    b.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop after this much training time, then evaluate")
    b.add_argument("--batch-size", type=int, help="global batch size (split across ranks)")
    b.add_argument("--lr", type=float, help="peak learning rate")
    b.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="numeric precision (auto: bf16 on GPUs, fp32 on CPU)")
    b.add_argument("--mixed-precision", action="store_true", help="mixed precision: bf16 where supported, else fp16 with loss scaling")
    b.add_argument("--compile", action="store_true", help="torch.compile the model (opt-in)")
    b.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="where to train (default auto)")
    b.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    b.add_argument("--seed", type=int, help="random seed")
    add_lora_args(parser)
    o = parser.add_argument_group("output")
    o.add_argument("--out", metavar="DIR", help="run folder (default runs/latest)")
    o.add_argument("--resume", nargs="?", const=True, default=None, metavar="DIR",
                   help="continue the run in DIR (or in --out) from its last checkpoint")
    o.add_argument("--init-from", metavar="RUN", help="continue training the weights of RUN (trained or imported by "
                   "`lmforge import`) with a new optimiser; its tokenizer is reused (see also --lora-rank)")
    o.add_argument("--json", action="store_true", help="print the summary as JSON instead of text")
    o.add_argument("--quiet", action="store_true", help="no progress bar")


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _model_choice(data: dict, family: str | None, size: str | None) -> dict:
    from lmforge.config import get_preset

    task = data.get("task", "lm")
    current = (data.get("model") or {}).get("family", "transformer")
    if family is None and size is None:
        return data
    family = family or current.removeprefix("seq2seq_")
    if task == "translate":
        family = f"seq2seq_{family}"
    if size is None and family == current:
        return data
    return {**data, "model": get_preset(f"{family}-{size or 'small'}")["model"]}


def build_config(args: argparse.Namespace, torch_cuda: Any = None) -> tuple[Any, bool]:
    """Resolves the run config from the options; returns ``(config, resume)``."""
    from lmforge.config import RunConfig, get_preset, parse_overrides, read_config_file
    from lmforge.config.presets import DEFAULT_PRESET

    resume = args.resume is not None
    if args.init_from and not resume:  # the base run's model and tokenizer settings; data and training from the flags
        base = Path(args.init_from)
        if not (base / "config.yaml").is_file():
            raise ConfigError(f"--init-from {base}: not a run folder (no config.yaml); pass a trained or imported run")
        data = {k: v for k, v in read_config_file(base / "config.yaml").items() if k in ("task", "model", "tokenizer", "train")}
        data["train"] = {k: v for k, v in (data.get("train") or {}).items() if not k.startswith("lora_")}
        data["out_dir"] = "runs/latest"
    elif resume:
        run_dir = Path(args.resume if isinstance(args.resume, str) else (args.out or "runs/latest"))
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"nothing to resume in {run_dir} (no config.yaml); pass the run folder: --resume DIR")
        data = read_config_file(run_dir / "config.yaml")
        data["out_dir"] = str(run_dir)
    else:
        if args.preset:
            data = get_preset(args.preset)
        elif args.config or args.task == "translate":
            data = get_preset("seq2seq_transformer-small") if args.task == "translate" and not args.config else {}
        else:
            data = get_preset(DEFAULT_PRESET)
        if args.config:
            data = _deep_merge(data, read_config_file(args.config))
        if args.task:
            data["task"] = args.task
        data = _model_choice(data, args.model, args.model_size)
    sets: dict[str, Any] = {}
    for flag, key in (("data", "data.path"), ("src", "data.src"), ("tgt", "data.tgt"), ("tokenizer", "tokenizer.kind"),
                      ("tokenizer_file", "tokenizer.path"), ("vocab_size", "tokenizer.vocab_size"),
                      ("max_steps", "train.max_steps"), ("epochs", "train.epochs"), ("time_budget", "train.time_budget"),
                      ("batch_size", "train.batch_size"), ("lr", "train.lr"), ("precision", "train.precision"),
                      ("device", "train.device"), ("seed", "train.seed"), ("out", "out_dir")):
        value = getattr(args, flag)
        if value is not None and not (resume and flag == "out"):
            sets[key] = str(Path(value)) if flag in ("data", "src", "tgt", "tokenizer_file") else value
    if args.compile:
        sets["train.compile"] = True
    if args.mixed_precision:
        sets["train.precision"] = "fp16" if torch_cuda is not None and torch_cuda.is_available() \
            and not torch_cuda.is_bf16_supported() else "bf16"
    if (args.max_steps or args.epochs) and args.time_budget is None:
        sets["train.time_budget"] = None  # an explicit step/epoch budget replaces the preset's time budget
    from lmforge.config import apply_overrides

    sets.update(lora_overrides(args))
    data = apply_overrides(data, sets)
    data = apply_overrides(data, parse_overrides(args.overrides))
    return RunConfig.parse(data, source=args.config or args.preset or "config"), resume


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class _ProgressBar:
    """A rich progress bar fed by the trainer's events (step, loss, lr, tokens/s, ETA)."""

    def __init__(self, quiet: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.quiet = quiet or not _is_main_process()
        self.progress = None
        self.task = None
        self.by_time = False
        self.data_bar = None

    def _data_bar(self):
        if self.data_bar is None:
            from lmforge.cli.prepare import PrepareProgress

            self.data_bar = PrepareProgress(console=self.console)
        return self.data_bar

    def __call__(self, ev: dict) -> None:
        kind = ev["event"]
        if self.quiet:
            return
        if kind in ("prepare", "eval_progress"):
            if self.progress is not None:  # the final evaluation: one live display at a time
                self.progress.stop()
                self.progress = None
            self._data_bar().event(ev)
        elif kind == "start":
            if self.data_bar is not None:
                self.data_bar.close()
            self._start(ev)
        elif kind == "step" and self.progress is not None:
            done = ev["elapsed"] if self.by_time else ev["step"]
            eta = ev.get("eta")
            self.progress.update(self.task, completed=done, step=ev["step"], loss=ev["loss"], lr=ev["lr"],
                                 tps=ev["tokens_per_s"], eta="-" if eta is None else f"{int(eta) // 60}:{int(eta) % 60:02d}")
        elif kind == "eval":
            mark = " *" if ev.get("best") else ""
            self.console.print(f"step {ev['step']:>6}  train loss {ev['train_loss']:.4f}  val loss {ev['val_loss']:.4f}{mark}")
        elif kind == "warning":
            self.console.print(f"[yellow]warning:[/] {ev['message']}")
        elif kind == "end":
            self.close()
        if kind == "end" and self.data_bar is not None:
            self.data_bar.close()

    def _start(self, ev: dict) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.by_time = ev.get("max_steps") is None
        total = ev["time_budget"] if self.by_time else ev["max_steps"]
        self.console.print(f"training {ev['parameters']:,} parameters on {ev['device']} ({ev['precision']}"
                           f"{', %d ranks' % ev['world_size'] if ev['world_size'] > 1 else ''})")
        self.progress = Progress(
            TextColumn("step {task.fields[step]}"), BarColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("lr {task.fields[lr]:.2e}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
            TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn(), console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, completed=0, step=ev["step"], loss=float("nan"),
                                           lr=0.0, tps=0.0, eta="-")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.data_bar is not None:
            self.data_bar.close()


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _report(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    if summary.get("interrupted"):
        print(f"interrupted at step {summary['steps']}; checkpoint saved. Continue with: lmforge train --resume {summary['run_dir']}")
    else:
        figs = [f"val loss {_fmt(summary.get('val_loss'), '.4f')}", f"perplexity {_fmt(summary.get('val_ppl'), '.2f')}"]
        if summary.get("val_bits_per_char") is not None:
            figs.append(f"bits/char {summary['val_bits_per_char']:.4f}")
        if summary.get("val_bleu") is not None:
            figs.append(f"BLEU {summary['val_bleu']:.2f}")
        print(" | ".join(figs) + f"  ({summary['steps']} steps, {summary.get('train_time', 0):.0f} s, "
              f"{summary.get('train_tokens_per_s', 0):,.0f} tok/s, {summary['parameters']:,} parameters)")
    if summary.get("sample"):
        print("--- sample ---")
        print(summary["sample"])
        print("--------------")
    print(f"run folder: {summary['run_dir']}")


def run(args: argparse.Namespace) -> int:
    """Trains as the options say and prints the figures, a sample and the run folder."""
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    config, resume = build_config(args, torch.cuda)
    bar = _ProgressBar(args.quiet or args.json)
    if not resume and (Path(config.out_dir) / "trainer_state.pt").is_file() and _is_main_process():
        bar.console.print(f"note: replacing the run in {config.out_dir} (use --resume to continue it, --out DIR to keep it)")
    try:
        if config.task == "translate":
            from lmforge.workflows.translate_run import train_translation

            summary = train_translation(config, resume=resume, progress=bar)
        else:
            from lmforge.workflows.lm_run import train_lm

            summary = train_lm(config, resume=resume, progress=bar, init_from=None if resume else args.init_from)
    finally:
        bar.close()
    if _is_main_process():
        summary.setdefault("run_dir", config.out_dir)
        _report(summary, args.json)
    sys.stdout.flush()
    return 130 if summary.get("interrupted") else 0
