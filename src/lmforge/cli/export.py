"""``lmforge export MODEL_DIR --format hf --out DIR``: write a model in another library's format."""

from __future__ import annotations

import argparse

DESCRIPTION = ("Export a model folder or run folder. --format hf writes a Llama-format folder that "
               "transformers.AutoModelForCausalLM.from_pretrained loads (RMSNorm, pre-norm, RoPE, SwiGLU, "
               "mha/gqa/mqa Transformers only).")

__all__ = ["DESCRIPTION", "configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the model folder, ``--format``, ``--out`` and ``--dtype``."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="a model folder (config.json + model.safetensors) or a run folder")
    parser.add_argument("--format", choices=["hf"], default="hf", help="output format (hf: Hugging Face Llama)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="dtype of the written weights")


def run(args: argparse.Namespace) -> int:
    """Exports ``args.model_dir`` to ``args.out``."""
    import torch

    from lmforge.interop.hf import export_model_dir

    out = export_model_dir(args.model_dir, args.out, dtype=getattr(torch, args.dtype))
    print(f"wrote a Hugging Face folder to {out} (load it with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0
