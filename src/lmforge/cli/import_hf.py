"""``lmforge import HF_FOLDER --out RUN``: a local Hugging Face checkpoint as an lmforge run folder."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = ("Import a local Hugging Face causal-LM folder (config.json, *.safetensors, tokenizer.json, "
               "tokenizer_config.json) as a run folder that generate, chat, serve, eval, embed, finetune and "
               "`train --init-from` use. Llama, Mistral, Qwen2 and GPT-2 architectures; nothing is downloaded.")

__all__ = ["DESCRIPTION", "configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the folder, ``--out``, ``--dtype`` and ``--context``."""
    parser.add_argument("folder", metavar="HF_FOLDER", help="a local Hugging Face model folder (download hub models first)")
    parser.add_argument("--out", required=True, metavar="RUN", help="the run folder to create")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                        help="weights' dtype in the run (default: the checkpoint's own)")
    parser.add_argument("--context", type=int, metavar="TOKENS",
                        help="cap the context window (and the KV cache) at this many tokens (default: the checkpoint's)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    """Imports ``args.folder`` into ``args.out``."""
    from lmforge.interop.hf_import import import_hf

    summary = import_hf(args.folder, args.out, dtype=args.dtype, block_size=args.context)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"imported a {summary['architecture']} model ({summary['parameters']:,} parameters, {summary['dtype']}) "
          f"in {summary['import_seconds']:.1f} s into {args.out}; chat template: {summary['chat_template']}")
    print(f"try: lmforge generate {args.out} --prompt 'Hello'   or   lmforge chat {args.out}")
    return 0
