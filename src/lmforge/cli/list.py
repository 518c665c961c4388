"""``lmforge list presets|models|components``: what can be trained and how it can be built."""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any

from lmforge.errors import LMForgeError

DESCRIPTION = "List the presets (with their parameter counts), the model families and the component registries."

__all__ = ["DESCRIPTION", "configure", "run", "COMPONENT_REGISTRIES"]

# label -> "module:attribute" of a Registry; imported on demand, and skipped when the module is not there.
COMPONENT_REGISTRIES: dict[str, str] = {
    "norms": "lmforge.models.transformer.norms:NORMS",
    "positions": "lmforge.models.transformer.positions:POSITIONS",
    "attention": "lmforge.models.transformer.attention:ATTENTION",
    "ffn (mlps)": "lmforge.models.transformer.ffn:MLPS",
    "activations": "lmforge.models.transformer.ffn:ACTIVATIONS",
    "tokenizers": "lmforge.tokenizers.serialization:TOKENIZERS",
    "samplers": "lmforge.inference.sampling:SAMPLERS",
    "chat templates": "lmforge.inference.chat:CHAT_TEMPLATES",
    "pooling": "lmforge.inference.embeddings:POOLING",
    "schedules": "lmforge.training.schedule:SCHEDULES",
}

# The bundled Tiny Shakespeare has 65 distinct characters; with the 8 special tokens a char tokenizer has 73.
_CHAR_VOCAB = 73


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds ``what`` (presets, models or components) and the output options."""
    parser.add_argument("what", choices=["presets", "models", "components"], help="what to list")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="presets: count parameters at this vocabulary size (default: each preset's documented one)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    """Prints the requested listing; returns 0."""
    rows, columns, title = {
        "presets": (_presets, ["name", "family", "task", "parameters", "vocab", "description"], "Presets"),
        "models": (_models, ["family", "capabilities", "class", "config", "description"], "Model families"),
        "components": (_components, ["registry", "names"], "Components"),
    }[args.what]
    data = rows(args) if args.what == "presets" else rows()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        _print_table(title, columns, data)
    return 0


def _presets(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from lmforge.config import PRESETS, RunConfig, get_preset
    from lmforge.config.presets import PARAMETER_COUNTS
    from lmforge.models import build_model
    from lmforge.models.run_folder import count_parameters

    out = []
    for name in sorted(PRESETS):
        cfg = RunConfig.parse(get_preset(name), source=f"preset {name}")
        model_cfg = cfg.model
        vocab = args.vocab_size
        if vocab is None:
            if name in PARAMETER_COUNTS:
                vocab = PARAMETER_COUNTS[name][1]
            else:
                vocab = _CHAR_VOCAB if cfg.tokenizer.kind == "char" else cfg.tokenizer.vocab_size
        keys = ("src_vocab_size", "tgt_vocab_size") if hasattr(model_cfg, "src_vocab_size") else ("vocab_size",)
        model_cfg = model_cfg.model_copy(update={k: vocab for k in keys})
        try:
            with torch.device("meta"):  # shapes only: no memory, no initialisation
                params: int | None = count_parameters(build_model(model_cfg))
        except (ImportError, AttributeError):
            params = None  # the family's module is not installed
        out.append({"name": name, "family": model_cfg.family, "task": cfg.task, "parameters": params, "vocab": vocab,
                    "description": PRESETS[name].get("description", "")})
    return out


def _models() -> list[dict[str, Any]]:
    from lmforge.models.run_folder import config_class_for
    from lmforge.models.capabilities import family_capabilities
    from lmforge.models.registry import MODELS

    out = []
    for family in MODELS.names():
        entry = MODELS.get(family)
        target = entry if isinstance(entry, str) else f"{entry.__module__}:{entry.__qualname__}"
        doc, config = "", ""
        try:
            obj = _load(entry) if isinstance(entry, str) else entry
            doc = _first_line(obj.__doc__ or "")
            config = config_class_for(family).__name__
        except (ImportError, AttributeError, LMForgeError):
            doc = "(module not available)"
        out.append({"family": family, "capabilities": sorted(family_capabilities(family)), "class": target,
                    "config": config, "description": doc})
    return out


def _components() -> list[dict[str, Any]]:
    out = []
    for label, target in COMPONENT_REGISTRIES.items():
        try:
            registry = _load(target)
        except (ImportError, AttributeError):
            continue  # not written yet, or an optional part that is not installed
        out.append({"registry": label, "names": list(registry.names())})
    return out


def _first_line(doc: str) -> str:
    """The first line of a docstring, with Sphinx roles (:class:`~a.b.C`) reduced to their name (C)."""
    import re

    line = doc.strip().splitlines()[0] if doc.strip() else ""
    return re.sub(r":\w+:`~?(?:[\w.]*\.)?(\w+)`", r"\1", line)


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _print_table(title: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    wrap = {"description", "names", "capabilities"}
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if col in ("parameters", "vocab") else "left",
                         no_wrap=col not in wrap, ratio=1 if col in wrap else None, min_width=16 if col in wrap else None)
    for row in rows:
        table.add_row(*(_cell(col, row[col]) for col in columns))
    console = Console()
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console = Console(width=160)
    console.print(table)


def _cell(column: str, value: Any) -> str:
    if column == "parameters":
        return "n/a" if value is None else f"{value / 1e6:.2f}M"
    if isinstance(value, list):
        return ", ".join(value)
    return str(value)
