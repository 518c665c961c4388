"""``lmforge chat RUN``: a multi-turn chat with streamed replies; scripted when standard input is not a terminal."""

from __future__ import annotations

import argparse
import sys

from lmforge.cli.generate import add_sampling_args, apply_compile, sampling_kwargs

DESCRIPTION = ("Chat with a language model: streamed replies, /help /clear /system TEXT /save FILE /exit. "
               "When standard input is not a terminal, each line is one user message.")

__all__ = ["DESCRIPTION", "configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the options of ``lmforge chat``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("examples:\n  lmforge chat runs/chat\n  lmforge chat runs/chat --system 'Answer briefly.' --temperature 0\n"
                     "  printf 'i am ada\\nmy name?\\n' | lmforge chat runs/chat --temperature 0")
    parser.add_argument("run", metavar="RUN", help="a run folder (fine-tuned by `lmforge finetune`, or any language model)")
    parser.add_argument("--system", help="a system prompt")
    parser.add_argument("--template", choices=["tokens", "plain"],
                        help="chat template (default: what the run records; 'plain' User:/Assistant: text otherwise)")
    parser.add_argument("--no-context", action="store_true", help="answer each message on its own, without history")
    add_sampling_args(parser, max_new_tokens=128)


def run(args: argparse.Namespace) -> int:
    """Runs the chat loop until /exit or end of input."""
    from lmforge.api import LM, chat_repl

    lm = LM.load(args.run, device=args.device, chat_template=args.template)
    apply_compile(lm, args)
    kw = sampling_kwargs(args, default_temperature=0.7)
    session = lm.chat_session(system=args.system, use_context=not args.no_context, **kw)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {lm.name} ({lm.family}, {lm.chat_template} template); /help for commands", file=sys.stderr)
    chat_repl(session, lines=None if interactive else sys.stdin, out=sys.stdout, interactive=interactive)
    return 0
