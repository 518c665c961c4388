"""``lmforge export MODEL_DIR --format hf|onnx|gguf --out PATH``: write a model in another library's format."""

from __future__ import annotations

import argparse

from lmforge.errors import ConfigError

DESCRIPTION = ("Export a model folder or run folder (LoRA adapters merged). --format hf writes a folder that "
               "transformers.AutoModelForCausalLM.from_pretrained loads: Llama-style Transformers (RMSNorm, pre-norm, "
               "RoPE, SwiGLU, mha/gqa/mqa) and imported Mistral, Qwen2 and GPT-2 models. --format onnx writes "
               "model.onnx (dynamic batch and sequence axes), checked against the model with onnxruntime. "
               "--format gguf writes one GGUF file (with the byte-level BPE tokenizer) that llama.cpp, Ollama and "
               "LM Studio load (Llama-style Transformers).")

__all__ = ["DESCRIPTION", "configure", "run"]

_HF_DTYPES = ("float32", "bfloat16", "float16")
_GGUF_DTYPES = ("f32", "f16", "q8_0", "q4_0")


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the model folder, ``--format``, ``--out`` and ``--dtype``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("examples:\n  lmforge export runs/latest --format hf --out llama_out\n"
                     "  lmforge export runs/latest --format gguf --dtype q8_0 --out model.gguf")
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="a model folder (config.json + model.safetensors) or a run folder")
    parser.add_argument("--format", choices=["hf", "onnx", "gguf"], default="hf",
                        help="hf: a Hugging Face folder; onnx: model.onnx (needs lmforge[onnx]); gguf: one llama.cpp "
                             "file (needs lmforge[gguf]); default hf")
    parser.add_argument("--out", required=True, metavar="PATH", help="folder (hf, onnx) or .gguf file (gguf) to write")
    parser.add_argument("--dtype", choices=_HF_DTYPES + _GGUF_DTYPES,
                        help="weights: float32|bfloat16|float16 for hf (default float32; onnx is float32), "
                             "f32|f16|q8_0|q4_0 for gguf (default f32)")


def run(args: argparse.Namespace) -> int:
    """Exports ``args.model_dir`` to ``args.out``."""
    if args.format == "gguf":
        dtype = args.dtype or "f32"
        if dtype not in _GGUF_DTYPES:
            raise ConfigError(f"--dtype {dtype} is not a GGUF type; choose one of {', '.join(_GGUF_DTYPES)}")
        from lmforge.interop.gguf import export_run_gguf

        out = export_run_gguf(args.model_dir, args.out, dtype=dtype)
        print(f"wrote {out} ({dtype}; load it with llama.cpp, e.g. llama-cli -m {out})")
        return 0
    dtype = args.dtype or "float32"
    if dtype not in _HF_DTYPES:
        raise ConfigError(f"--dtype {dtype} is not a torch dtype for --format {args.format}; choose one of "
                          f"{', '.join(_HF_DTYPES)}")
    if args.format == "onnx":
        from lmforge.interop.onnx import export_model_dir_onnx

        info = export_model_dir_onnx(args.model_dir, args.out)
        print(f"wrote {info['path']} (onnxruntime logits within {info['max_abs_diff']:.1e} of the model's)")
        return 0
    import torch

    from lmforge.interop.hf import export_model_dir

    out = export_model_dir(args.model_dir, args.out, dtype=getattr(torch, dtype))
    print(f"wrote a Hugging Face folder to {out} (load it with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0
