"""OpenAI's response shapes for token log-probabilities, built from the engine's events.

* Chat (``logprobs: true``): ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}, ...]}``.
* Completions (``logprobs: k``): ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``, four lists
  with one entry per token; with ``echo`` the prompt's tokens come first (the very first has ``None`` for its
  log-probability and alternatives, as in OpenAI's and vLLM's answers).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

__all__ = ["chat_logprobs", "CompletionLogprobs"]

TokenText = Callable[[int], str]


def _entry(token_text: TokenText, token_id: int, logprob: float) -> dict[str, Any]:
    text = token_text(token_id)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(token_text: TokenText, logprobs: Sequence[Any], top: int) -> Optional[dict[str, Any]]:
    """The chat ``logprobs`` object of some generated tokens (``TokenLogprob`` s); ``top`` alternatives each."""
    content = []
    for lp in logprobs:
        item = _entry(token_text, lp.token_id, lp.logprob)
        item["top_logprobs"] = [_entry(token_text, t, v) for t, v in lp.top[:top]]
        content.append(item)
    return {"content": content}


class CompletionLogprobs:
    """Accumulates the completions ``logprobs`` object of one choice.

    Args:
        token_text: token id -> its text.
        top: alternatives per token (the request's ``logprobs``).
    """

    def __init__(self, token_text: TokenText, top: int) -> None:
        self.token_text = token_text
        self.top = top
        self.tokens: list[str] = []
        self.token_logprobs: list[Optional[float]] = []
        self.top_logprobs: list[Optional[dict[str, float]]] = []
        self.text_offset: list[int] = []
        self.offset = 0

    def add(self, token_id: int, lp: Any) -> None:
        """One token; ``lp`` is its ``TokenLogprob``, or ``None`` for a prompt's first token."""
        text = self.token_text(token_id)
        self.tokens.append(text)
        self.text_offset.append(self.offset)
        self.offset += len(text)
        if lp is None:
            self.token_logprobs.append(None)
            self.top_logprobs.append(None)
            return
        self.token_logprobs.append(lp.logprob)
        alternatives: dict[str, float] = {}
        for t, v in lp.top[:self.top]:
            alternatives.setdefault(self.token_text(t), v)
        self.top_logprobs.append(alternatives)

    def add_prompt(self, ids: Sequence[int], scored: Sequence[Any]) -> None:
        for token_id, lp in zip(ids, scored):
            self.add(token_id, lp)

    def take(self) -> dict[str, Any]:
        """The object so far, and start a new one (for streamed chunks) keeping the text offset."""
        out = {"tokens": self.tokens, "token_logprobs": self.token_logprobs, "top_logprobs": self.top_logprobs,
               "text_offset": self.text_offset}
        self.tokens, self.token_logprobs, self.top_logprobs, self.text_offset = [], [], [], []
        return out
