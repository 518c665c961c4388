"""The LoRA options shared by ``lmforge finetune`` and ``lmforge train --init-from``."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_lora_args", "lora_overrides"]


def add_lora_args(parser: argparse.ArgumentParser) -> None:
    """Adds ``--lora-rank``, ``--lora-alpha``, ``--lora-targets`` and ``--lora-dropout``."""
    g = parser.add_argument_group("LoRA (arXiv:2106.09685): train low-rank adapters on a frozen model")
    g.add_argument("--lora-rank", type=int, metavar="R", help="adapter rank; enables LoRA (adapters are saved as "
                   "adapter.safetensors beside the base weights and merged by `lmforge export`)")
    g.add_argument("--lora-alpha", type=float, metavar="A", help="scaling numerator: updates are multiplied by A / R (default 16)")
    g.add_argument("--lora-targets", metavar="NAMES", help="comma-separated linear layers to adapt (default qkv,o_proj,w_in,w_out; also lm_head)")
    g.add_argument("--lora-dropout", type=float, metavar="P", help="dropout on the adapters' input (default 0)")


def lora_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``train.lora_*`` settings the flags give."""
    out: dict[str, Any] = {}
    for flag in ("rank", "alpha", "dropout"):
        value = getattr(args, f"lora_{flag}", None)
        if value is not None:
            out[f"train.lora_{flag}"] = value
    if getattr(args, "lora_targets", None):
        out["train.lora_targets"] = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
    return out
