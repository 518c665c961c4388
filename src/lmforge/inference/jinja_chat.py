"""The ``jinja`` chat template: a checkpoint's own Jinja chat template (``tokenizer_config.json``), rendered with
``jinja2`` (the ``hf`` extra) the way ``transformers``' ``apply_chat_template`` renders it.

The template source travels in the run's ``hf`` tokenizer (:class:`~lmforge.tokenizers.hf.HFTokenizer`), with the
checkpoint's special tokens: the template sees ``messages``, ``add_generation_prompt``, ``bos_token``,
``eos_token``, ``pad_token`` and ``unk_token``, and ``raise_exception``/``strftime_now`` as globals. The rendered
text is encoded with special tokens recognised, as ``apply_chat_template`` does.

For fine-tuning, the assistant replies are found by rendering prefixes of the conversation: reply *i* is the
text between the rendering of messages ``[:i]`` with the generation prompt and the rendering of ``[:i+1]`` (so
it includes the template's end-of-turn marker, which the model must learn to produce). A template whose
rendering of a prefix is not a prefix of the whole is refused with a clear error.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Sequence

from lmforge.errors import ConfigError, DataError

__all__ = ["JinjaChatTemplate", "render_jinja"]


@lru_cache(maxsize=8)
def _compile(source: str) -> Any:
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:  # pragma: no cover - jinja2 is in the hf extra
        raise ConfigError("the checkpoint's chat template needs jinja2: pip install 'lmforge[hf]'") from None

    def raise_exception(message: str) -> None:
        raise DataError(f"the chat template refused the conversation: {message}")

    def tojson(value: Any, indent: Any = None, **_: Any) -> str:
        return json.dumps(value, ensure_ascii=False, indent=indent)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateError as err:
        raise ConfigError(f"the checkpoint's chat template is not valid Jinja ({err}); fix chat_template in tokenizer_config.json") from None


def _source(tokenizer: Any) -> str:
    source = getattr(tokenizer, "chat_template", None)
    if not source:
        raise ConfigError("this run's tokenizer has no chat template; use --template tokens or plain, or import a "
                          "checkpoint whose tokenizer_config.json has a chat_template")
    return source


def render_jinja(tokenizer: Any, messages: Sequence[dict], add_generation_prompt: bool) -> str:
    """The text of ``messages`` rendered by the tokenizer's chat template."""
    special = {k: v for k, v in (getattr(tokenizer, "special", None) or {}).items()}
    return _compile(_source(tokenizer)).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                              **{k: v or "" for k, v in special.items()})


class JinjaChatTemplate:
    """A chat template rendered from the tokenizer's Jinja source (registered as ``jinja`` in
    :data:`~lmforge.inference.chat.CHAT_TEMPLATES`); its stops are the tokenizer's ``stop_ids``, which generation
    always honours.

    Attributes:
        name: registry name. stop, stop_token_ids: empty (the tokenizer holds the stops).
    """

    name = "jinja"
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()

    def clean(self, text: str) -> str:
        """The reply as shown to a user."""
        return text.strip()

    def render_with_mask(self, tokenizer: Any, messages: Sequence[dict],
                         add_generation_prompt: bool) -> tuple[list[int], list[bool]]:
        """Ids of the rendered conversation and, per id, whether it belongs to an assistant reply."""
        text = render_jinja(tokenizer, messages, add_generation_prompt)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = len(render_jinja(tokenizer, messages[:i], True))
            whole = render_jinja(tokenizer, messages[: i + 1], False)
            if not text.startswith(whole) or len(whole) < start:
                raise DataError("the chat template renders a conversation differently from its beginning, so the "
                                "assistant replies cannot be located for fine-tuning")
            spans.append((start, len(whole)))
        ids, offsets = tokenizer.encode_with_offsets(text)
        mask = [any(lo <= a < hi for lo, hi in spans) for a, _ in offsets]
        return ids, mask
