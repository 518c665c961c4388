"""``lmforge`` entry point: a table of commands, each a module with ``configure(parser)`` and ``run(args)``.

A command's module is imported only when that command runs, so ``lmforge --help`` stays fast and nothing
heavy (torch) is imported to print help. Errors a user can fix (:class:`~lmforge.errors.LMForgeError`) are
printed as one line on stderr with a non-zero exit code, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from lmforge.errors import LMForgeError

__all__ = ["COMMANDS", "main", "build_parser"]

# name -> (module, one-line help). Keep in step with the modules in lmforge/cli/ (tests check both ways).
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("lmforge.cli.train", "train a model on text and print its figures and a sample"),
    "prepare": ("lmforge.cli.prepare", "stream a corpus of any size into token shards for training"),
    "data": ("lmforge.cli.data", "corpus figures: `lmforge data stats DATA` (documents, tokens, lengths, top tokens)"),
    "eval": ("lmforge.cli.eval", "evaluate a run: loss, perplexity, bits per char/byte (or BLEU for translation)"),
    "generate": ("lmforge.cli.generate", "generate text from a language model, streamed"),
    "chat": ("lmforge.cli.chat", "chat with a language model (streamed; scripted from stdin)"),
    "finetune": ("lmforge.cli.finetune", "fine-tune a language model on conversations for chat"),
    "embed": ("lmforge.cli.embed", "embed texts with a language model into vectors"),
    "search": ("lmforge.cli.search", "rank documents by embedding similarity to a query"),
    "list": ("lmforge.cli.list", "list presets, model families and components"),
    "tokenizer": ("lmforge.cli.tokenizer", "train a tokenizer or encode text with one"),
    "compare": ("lmforge.cli.compare", "train models on the same data and budget and compare them in a report"),
    "serve": ("lmforge.cli.serve", "serve a run over an OpenAI-compatible HTTP API with a web chat page"),
    "translate": ("lmforge.cli.translate", "translate text with a translation run, one sentence per line"),
    "export": ("lmforge.cli.export", "export a Transformer to a Hugging Face folder, ONNX or a GGUF file for llama.cpp"),
    "import": ("lmforge.cli.import_hf", "import a local Hugging Face checkpoint (Llama, Mistral, Qwen2, GPT-2) as a run"),
    "quantize": ("lmforge.cli.quantize", "write a run with int8 or int4 weights (faster CPU decoding, smaller files)"),
}


def _top_parser() -> argparse.ArgumentParser:
    from lmforge import __version__

    width = max(len(n) for n in COMMANDS)
    lines = "\n".join(f"  {name.ljust(width)}  {helptext}" for name, (_, helptext) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Train, compare and use small LSTM and Transformer language models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"commands:\n{lines}\n\nRun `lmforge COMMAND --help` for a command's options.",
        usage="lmforge [-h] [--version] COMMAND ...",
    )
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    parser.add_argument("command", nargs="?", help=argparse.SUPPRESS)
    return parser


def build_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    """The argument parser of command ``name`` and its module."""
    module_name, helptext = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"lmforge {name}", description=getattr(module, "DESCRIPTION", helptext))
    module.configure(parser)
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``lmforge`` command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = _top_parser()
        if argv and not argv[0].startswith("-"):
            parser.print_usage(sys.stderr)
            print(f"lmforge: error: unknown command {argv[0]!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        parser.parse_args(argv)  # handles -h / --version
        parser.print_help()
        return 0
    # OpenMP's wait policy is left to the user (OMP_WAIT_POLICY, read once when torch loads). On an idle CPU the
    # default (spin briefly, then sleep) trains 12% and decodes 25% faster than PASSIVE; on a CPU crowded by
    # other processes PASSIVE avoids spinning on descheduled peers (BENCHMARKS.md, "Threads").
    parser, module = build_parser(argv[0])
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except LMForgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
