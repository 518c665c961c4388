"""``lmforge export MODEL_DIR --format hf --out DIR``: write a model in another library's format."""

from __future__ import annotations

import argparse

DESCRIPTION = ("Export a model folder or run folder (LoRA adapters merged). --format hf writes a folder that "
               "transformers.AutoModelForCausalLM.from_pretrained loads: Llama-style Transformers (RMSNorm, pre-norm, "
               "RoPE, SwiGLU, mha/gqa/mqa) and imported Mistral, Qwen2 and GPT-2 models. --format onnx writes "
               "model.onnx (dynamic batch and sequence axes), checked against the model with onnxruntime.")

__all__ = ["DESCRIPTION", "configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the model folder, ``--format``, ``--out`` and ``--dtype``."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="a model folder (config.json + model.safetensors) or a run folder")
    parser.add_argument("--format", choices=["hf", "onnx"], default="hf",
                        help="output format (hf: a Hugging Face folder; onnx: model.onnx, needs lmforge[onnx])")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="dtype of the written weights (hf; onnx is written in float32)")


def run(args: argparse.Namespace) -> int:
    """Exports ``args.model_dir`` to ``args.out``."""
    import torch

    if args.format == "onnx":
        from lmforge.interop.onnx import export_model_dir_onnx

        info = export_model_dir_onnx(args.model_dir, args.out)
        print(f"wrote {info['path']} (onnxruntime logits within {info['max_abs_diff']:.1e} of the model's)")
        return 0
    from lmforge.interop.hf import export_model_dir

    out = export_model_dir(args.model_dir, args.out, dtype=getattr(torch, args.dtype))
    print(f"wrote a Hugging Face folder to {out} (load it with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0
