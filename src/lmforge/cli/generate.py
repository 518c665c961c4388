"""``lmforge generate RUN --prompt TEXT``: continue a prompt with a trained language model, streamed."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lmforge.errors import ConfigError

DESCRIPTION = "Generate text from a trained language model (streamed; greedy with --temperature 0)."

__all__ = ["DESCRIPTION", "configure", "run", "add_compile_arg", "add_sampling_args", "apply_compile", "sampling_kwargs"]


def add_sampling_args(parser: argparse.ArgumentParser, max_new_tokens: int = 200) -> None:
    """The sampling options shared by ``generate`` and ``chat``."""
    g = parser.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=f"tokens to generate at most (default {max_new_tokens})")
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy (default 0.8 for generate, 0.7 for chat)")
    g.add_argument("--top-k", type=int, help="sample from the k most likely tokens")
    g.add_argument("--top-p", type=float, help="nucleus sampling: the smallest set of tokens reaching probability p")
    g.add_argument("--min-p", type=float, help="drop tokens less likely than min-p times the top token")
    g.add_argument("--repetition-penalty", type=float, help="> 1 discourages tokens already seen (1 = off)")
    g.add_argument("--presence-penalty", type=float, help="OpenAI-style presence penalty (-2..2)")
    g.add_argument("--frequency-penalty", type=float, help="OpenAI-style frequency penalty (-2..2)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop at this text (repeatable)")
    g.add_argument("--seed", type=int, help="seed for reproducible sampling")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    add_compile_arg(parser)


def add_compile_arg(parser: argparse.ArgumentParser) -> None:
    """``--compile``, shared by ``generate``, ``chat`` and ``serve``; :func:`apply_compile` acts on it."""
    parser.add_argument("--compile", action="store_true",
                        help="decode with the torch.compile'd step (Llama-style Transformers on a CPU; seconds to "
                             "compile at first), except where lmforge's C step runs (x86-64 Linux with a C compiler: "
                             "the default there, and faster)")
    parser.add_argument("--quantize", choices=["int8", "int4"],
                        help="quantize the weights when loading (weight-only; `lmforge quantize` saves such a run)")


def apply_compile(engine: Any, args: argparse.Namespace) -> None:
    """Quantizes the weights when ``--quantize`` asks for it, and turns on compiled decoding when ``--compile``
    asks for it, with a note when the engine cannot use it (a model other than a Llama-style Transformer, a
    GPU, a translation run)."""
    if getattr(args, "quantize", None):
        quantize = getattr(engine, "quantize", None)
        if quantize is None:
            raise ConfigError(f"--quantize applies to language models, not to this run ({type(engine).__name__})")
        quantize(int(args.quantize.removeprefix("int")))
    compile_decoding = getattr(engine, "compile_decoding", None)
    if args.compile and not (compile_decoding is not None and compile_decoding()):
        print("note: --compile applies to Llama-style Transformers (RMSNorm, RoPE, SwiGLU) in float32 on a CPU; "
              "decoding without it", file=sys.stderr)


def sampling_kwargs(args: argparse.Namespace, default_temperature: float) -> dict[str, Any]:
    """The ``SamplingParams`` keywords the options ask for."""
    return {
        "max_new_tokens": args.max_new_tokens,
        "temperature": default_temperature if args.temperature is None else args.temperature,
        "top_k": args.top_k, "top_p": args.top_p, "min_p": args.min_p,
        "repetition_penalty": args.repetition_penalty, "presence_penalty": args.presence_penalty,
        "frequency_penalty": args.frequency_penalty, "stop": list(args.stop), "seed": args.seed,
    }


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the options of ``lmforge generate``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("examples:\n  lmforge generate runs/latest --prompt 'ROMEO:'\n"
                     "  lmforge generate runs/latest --prompt 'ROMEO:' --temperature 0 --max-new-tokens 50\n"
                     "  lmforge generate runs/latest --prompt 'To be' --num-samples 3 --seed 1 --top-p 0.9\n"
                     "  echo 'KING:' | lmforge generate runs/latest --prompt -")
    parser.add_argument("run", metavar="RUN", help="a run folder written by `lmforge train` or `lmforge finetune`")
    parser.add_argument("--prompt", default="", help="the text to continue ('-' reads standard input; default: empty)")
    parser.add_argument("--num-samples", type=int, default=1, help="independent continuations (default 1)")
    parser.add_argument("--no-echo", action="store_true", help="print only the generated text, not the prompt")
    parser.add_argument("--no-stream", action="store_true", help="print the result at the end instead of as it is generated")
    parser.add_argument("--json", action="store_true", help="print the completions as JSON (text, tokens, finish reason)")
    add_sampling_args(parser)


def run(args: argparse.Namespace) -> int:
    """Loads the run and prints the continuation(s)."""
    from lmforge.api import LM

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    lm = LM.load(args.run, device=args.device)
    apply_compile(lm, args)
    kw = sampling_kwargs(args, default_temperature=0.8)
    echo = "" if args.no_echo else prompt
    if args.json or args.no_stream or args.num_samples > 1:
        done = lm.complete([prompt], num_samples=args.num_samples, **kw)
        if args.json:
            print(json.dumps([{"text": c.text, "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                               "completion_tokens": c.completion_tokens} for c in done], indent=2, ensure_ascii=False))
            return 0
        for i, c in enumerate(done):
            if args.num_samples > 1:
                print(f"--- sample {i + 1} ---")
            print(echo + c.text)
        return 0
    out = sys.stdout
    out.write(echo)
    for chunk in lm.stream(prompt, **kw):
        out.write(chunk.text)
        out.flush()
    out.write("\n")
    return 0
