"""Multi-turn chat: templates, a session that trims its history to the context, and a small REPL.

Three templates are registered in ``CHAT_TEMPLATES``:

* ``tokens``: the fixed role tokens of every lmforge tokenizer, ``<|system|>``, ``<|user|>``, ``<|assistant|>``,
  each turn closed by ``<|end|>`` (the end-of-turn stop). What ``lmforge finetune`` trains.
* ``jinja``: an imported checkpoint's own Jinja template (:mod:`lmforge.inference.jinja_chat`).
* ``plain``: ``"User: ...\\nAssistant: ..."`` lines of ordinary text, for a model trained from scratch on raw text
  written in that form; a reply ends at a new ``"\\nUser:"`` line (or end of sequence).

``tokens`` and ``plain`` encode a conversation piece by piece (role marker, then the content), so the ids a model sees when it
chats are the ids it was fine-tuned on, and :func:`render_chat_with_mask` marks the assistant replies (and the
end-of-turn that closes them) for a loss masked to the replies.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, TextIO

from lmforge.errors import ConfigError, DataError
from lmforge.inference.generation import Completion, TextChunk, generate, stream
from lmforge.inference.jinja_chat import JinjaChatTemplate
from lmforge.inference.sampling import SamplingParams
from lmforge.registry import Registry
from lmforge.utils.files import atomic_write_json

__all__ = [
    "ChatTemplate",
    "CHAT_TEMPLATES",
    "render_chat",
    "render_chat_with_mask",
    "trim_messages",
    "prompt_budget",
    "ChatSession",
    "run_chat_repl",
    "REPL_HELP",
]

ROLES = ("system", "user", "assistant")
SYSTEM_ID, USER_ID, ASSISTANT_ID, END_ID = 4, 5, 6, 7  # fixed in every lmforge tokenizer


@dataclass(frozen=True)
class ChatTemplate:
    """How a conversation becomes token ids, and how a reply ends.

    Attributes:
        name: registry name.
        stop: stop strings of a reply. stop_token_ids: stop tokens of a reply.
    """

    name: str
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()

    def segments(self, tokenizer: Any, message: dict) -> list[tuple[list[int], bool]]:
        """``(ids, is_reply)`` pieces of one message; ``is_reply`` marks what the assistant must produce."""
        role, content = message["role"], message["content"]
        if self.name == "tokens":
            role_id = {"system": SYSTEM_ID, "user": USER_ID, "assistant": ASSISTANT_ID}[role]
            reply = role == "assistant"
            return [([role_id], False), (tokenizer.encode(content) + [END_ID], reply)]
        return [(tokenizer.encode(f"{role.capitalize()}:"), False),
                (tokenizer.encode(f" {content}\n"), role == "assistant")]

    def generation_prompt(self, tokenizer: Any) -> list[int]:
        """The ids that open the assistant's turn."""
        return [ASSISTANT_ID] if self.name == "tokens" else tokenizer.encode("Assistant:")

    def clean(self, text: str) -> str:
        """The reply as shown to a user."""
        return text.strip()


CHAT_TEMPLATES: Registry[ChatTemplate] = Registry("chat template")
CHAT_TEMPLATES.add("tokens", ChatTemplate("tokens", stop_token_ids=(END_ID,)))
CHAT_TEMPLATES.add("plain", ChatTemplate("plain", stop=("\nUser:", "\nSystem:", "\nAssistant:")))
CHAT_TEMPLATES.add("jinja", JinjaChatTemplate())  # an imported checkpoint's own template (lmforge import)


def _template(template: str | ChatTemplate) -> ChatTemplate:
    return CHAT_TEMPLATES.get(template) if isinstance(template, str) else template


def _check_messages(messages: Sequence[dict]) -> None:
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(
                f"message {i} must be a mapping with 'role' (one of {', '.join(ROLES)}) and a text 'content'; got {m!r:.80}"
            )


def render_chat_with_mask(tokenizer: Any, messages: Sequence[dict], template: str | ChatTemplate = "tokens",
                          add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """Ids of a conversation and, per id, whether it is part of an assistant reply (the training targets).

    Example:
        >>> ids, mask = render_chat_with_mask(tok, [{"role": "user", "content": "hi"},
        ...                                         {"role": "assistant", "content": "hello"}])  # doctest: +SKIP
    """
    _check_messages(messages)
    tpl = _template(template)
    if hasattr(tpl, "render_with_mask"):  # renders whole conversations (jinja)
        return tpl.render_with_mask(tokenizer, messages, add_generation_prompt)
    if tpl.name == "tokens" and getattr(tokenizer, "kind", None) == "hf":
        raise ConfigError("an imported checkpoint's tokenizer has no lmforge role tokens; use its own chat template "
                          "(template 'jinja') or 'plain'")
    ids: list[int] = []
    mask: list[bool] = []
    for m in messages:
        for piece, is_reply in tpl.segments(tokenizer, m):
            ids += piece
            mask += [is_reply] * len(piece)
    if add_generation_prompt:
        gp = tpl.generation_prompt(tokenizer)
        ids += gp
        mask += [False] * len(gp)
    return ids, mask


def render_chat(tokenizer: Any, messages: Sequence[dict], add_generation_prompt: bool = True,
                template: str | ChatTemplate = "tokens") -> list[int]:
    """Token ids of ``messages`` (``[{"role": ..., "content": ...}]``), ending with the assistant's turn opener
    when ``add_generation_prompt``."""
    return render_chat_with_mask(tokenizer, messages, template, add_generation_prompt)[0]


def trim_messages(tokenizer: Any, messages: Sequence[dict], budget: Optional[int],
                  template: str | ChatTemplate = "tokens") -> list[dict]:
    """Drops the oldest turns until the rendered prompt fits in ``budget`` tokens.

    A leading system message always stays; the newest message always stays (if even that does not fit,
    generation keeps the most recent tokens of the prompt).
    """
    messages = list(messages)
    if budget is None:
        return messages
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    rest = messages[len(system):]
    while len(rest) > 1 and len(render_chat(tokenizer, system + rest, True, template)) > budget:
        # drop the oldest turn: a user message and the assistant reply that follows it
        drop = 2 if len(rest) > 2 and rest[0]["role"] == "user" and rest[1]["role"] == "assistant" else 1
        rest = rest[drop:]
    return system + rest


def prompt_budget(max_context: Optional[int], max_new_tokens: int) -> Optional[int]:
    """Tokens a chat prompt may use: the context minus the room kept for the reply (``max_new_tokens``, but at
    most a quarter of the context, so a long ``max_new_tokens`` never crowds out the conversation)."""
    if max_context is None:
        return None
    return max_context - min(max_new_tokens, max_context // 4)


class ChatSession:
    """A conversation with a language model: history, system prompt, trimming, streamed replies.

    Args:
        model: a CausalLM.
        tokenizer: its tokenizer.
        template: ``"tokens"`` (fine-tuned chat models) or ``"plain"`` (raw-text models), or a ChatTemplate.
        system: an optional system prompt, kept through trimming.
        params: default sampling settings (``max_new_tokens`` is also the room kept free for the reply).
        max_context: the token budget of a prompt plus reply; default the model's ``max_context`` (none for
            an LSTM, whose history is then never trimmed).
        use_context: False makes every message stand alone (no history).
    """

    def __init__(self, model: Any, tokenizer: Any, template: str | ChatTemplate = "tokens",
                 system: Optional[str] = None, params: Optional[SamplingParams] = None,
                 max_context: Optional[int] = None, use_context: bool = True) -> None:
        if tokenizer is None:
            raise ConfigError("chat needs a tokenizer: load a run folder that has tokenizer.json, or attach one to the model")
        self.model = model
        self.tokenizer = tokenizer
        self.template = _template(template)
        self.system = system
        self.params = params or SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=128)
        self.max_context = max_context if max_context is not None else getattr(model, "max_context", None)
        self.use_context = use_context
        self.history: list[dict] = []

    @property
    def messages(self) -> list[dict]:
        """The whole conversation, system prompt first."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + list(self.history)

    def clear(self) -> None:
        """Forgets the history (the system prompt stays)."""
        self.history.clear()

    def set_system(self, text: Optional[str]) -> None:
        """Sets (or, with an empty text, removes) the system prompt."""
        self.system = text or None

    def _sampling(self, overrides: dict) -> SamplingParams:
        p = SamplingParams.from_kwargs(self.params, **overrides)
        return SamplingParams.from_kwargs(
            p, stop=list(p.stop) + list(self.template.stop),
            stop_token_ids=list(p.stop_token_ids) + list(self.template.stop_token_ids))

    def prompt_ids(self, text: str, max_new_tokens: Optional[int] = None) -> list[int]:
        """The ids the model sees for a new user message ``text``: system + trimmed history + message."""
        history = self.history if self.use_context else []
        head = [{"role": "system", "content": self.system}] if self.system else []
        messages = head + history + [{"role": "user", "content": text}]
        budget = prompt_budget(self.max_context, max_new_tokens or self.params.max_new_tokens)
        return render_chat(self.tokenizer, trim_messages(self.tokenizer, messages, budget, self.template), True, self.template)

    def _record(self, text: str, reply: str) -> None:
        if self.use_context:
            self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]

    def send(self, text: str, **sampling: Any) -> str:
        """Sends a user message and returns the assistant's reply (also added to the history)."""
        return self.complete(text, **sampling).text

    def complete(self, text: str, **sampling: Any) -> Completion:
        """Like :meth:`send`, returning the whole :class:`Completion` (token counts, finish reason)."""
        p = self._sampling(sampling)
        done = generate(self.model, self.tokenizer, [self.prompt_ids(text, p.max_new_tokens)], p)[0]
        done.text = self.template.clean(done.text)
        self._record(text, done.text)
        return done

    def stream(self, text: str, **sampling: Any) -> Iterator[TextChunk]:
        """Streams the reply to a user message; the history is updated when the stream ends."""
        p = self._sampling(sampling)
        pieces: list[str] = []
        started = False
        for chunk in stream(self.model, self.tokenizer, self.prompt_ids(text, p.max_new_tokens), p):
            if not started:  # the reply as shown starts at its first visible character
                chunk.text = chunk.text.lstrip()
                started = bool(chunk.text)
            pieces.append(chunk.text)
            yield chunk
        self._record(text, self.template.clean("".join(pieces)))

    def save(self, path: str | Path) -> None:
        """Writes the conversation as JSON ``{"messages": [...]}`` (atomically)."""
        atomic_write_json(path, {"template": self.template.name, "messages": self.messages})


REPL_HELP = """commands:
  /help          show this help
  /clear         forget the conversation (the system prompt stays)
  /system TEXT   set the system prompt (empty TEXT removes it)
  /save FILE     save the conversation as JSON
  /exit          leave (also /quit, Ctrl-D)"""


def run_chat_repl(session: ChatSession, lines: Optional[Iterable[str]] = None, out: Optional[TextIO] = None,
                  interactive: bool = True, read: Callable[[str], str] = input, **sampling: Any) -> int:
    """The chat loop behind ``lmforge chat`` and ``lmforge.chatbot.ChatInterface.start_chat``.

    Interactive: prompts with ``you> `` and streams each reply. Otherwise every line of ``lines`` is one user
    message and each reply is written on its own line, so a chat can be scripted. Returns the number of replies.
    """
    out = out or sys.stdout
    source = iter(lines) if lines is not None else None
    replies = 0
    if interactive:
        out.write("Type a message, or /help for commands.\n")
    while True:
        try:
            if source is not None:
                line = next(source)
            else:
                line = read("you> " if interactive else "")
        except (EOFError, StopIteration):
            break
        line = line.rstrip("\n")
        cmd, _, arg = line.strip().partition(" ")
        if not line.strip():
            continue
        if cmd in ("/exit", "/quit"):
            break
        if cmd == "/help":
            out.write(REPL_HELP + "\n")
        elif cmd == "/clear":
            session.clear()
            out.write("(conversation cleared)\n")
        elif cmd == "/system":
            session.set_system(arg.strip())
            out.write(f"(system prompt {'set' if arg.strip() else 'removed'})\n")
        elif cmd == "/save":
            if not arg.strip():
                out.write("usage: /save FILE\n")
            else:
                session.save(arg.strip())
                out.write(f"(saved to {arg.strip()})\n")
        elif cmd.startswith("/") and cmd[1:].isalpha():
            out.write(f"unknown command {cmd}; type /help\n")
        else:
            if interactive:
                out.write("bot> ")
            for chunk in session.stream(line, **sampling):
                out.write(chunk.text)
                out.flush()
            out.write("\n")
            out.flush()
            replies += 1
    return replies
