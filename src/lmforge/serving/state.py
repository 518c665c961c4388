"""What every route of one server shares: the served model's facts, the backend, the metrics and the checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from fastapi import Request

from lmforge.serving.metrics import Metrics
from lmforge.serving.responses import APIError

__all__ = ["ServerState", "server"]


@dataclass
class ServerState:
    """One server's shared state (``app.state.server``).

    Attributes:
        engine: the facade object (``LM`` or ``Translator``, or anything with the same methods).
        backend: a :class:`~lmforge.serving.backend.BatchBackend` or ``SerialBackend``.
        name: the model id clients send as ``model``.
        kind: ``"lm"`` or ``"translation"``.
        context: the model's context in tokens (``None`` when unlimited).
        vocab_size: tokens in the vocabulary (``None`` when unknown).
        stream_interval: the least seconds between two writes of one stream after its first (0: a write per
            event; see :func:`~lmforge.serving.responses.event_stream`).
    """

    engine: Any
    backend: Any
    metrics: Metrics
    name: str
    kind: str
    context: Optional[int]
    vocab_size: Optional[int]
    created: int
    default_max_tokens: int
    page: str
    stream_interval: float = 0.0

    def check_model(self, model: Optional[str]) -> None:
        """404 unless ``model`` is omitted or names the served model."""
        if model is not None and model != self.name:
            raise APIError(404, f"the model {model!r} does not exist; this server serves {self.name!r}",
                           param="model", code="model_not_found")

    def need(self, wanted: str, route: str) -> None:
        """400 unless the served run is of the kind ``route`` needs."""
        if self.kind != wanted:
            other = "/v1/translations" if self.kind == "translation" else "/v1/chat/completions or /v1/completions"
            what = "language model" if wanted == "lm" else "translation"
            mine = "translation" if self.kind == "translation" else "language"
            raise APIError(400, f"{route} needs a {what} run, but {self.name!r} is a {mine} model; use {other}",
                           code="unsupported_for_model")

    def max_new(self, req: Any) -> int:
        """Tokens to generate: the request's ``max_completion_tokens`` or ``max_tokens`` (400 above the
        context), else the server's default capped by the context."""
        for param in ("max_tokens", "max_completion_tokens"):
            value = getattr(req, param, None)
            if value is not None and self.context is not None and value > self.context:
                raise APIError(400, f"{param}={value} is above the model's context of {self.context} tokens; "
                               f"ask for at most {self.context}", param=param, code="context_length_exceeded")
        asked = getattr(req, "max_completion_tokens", None)
        if asked is None:
            asked = req.max_tokens
        if asked is not None:
            return int(asked)
        return min(self.default_max_tokens, self.context) if self.context else self.default_max_tokens

    def check_token_ids(self, ids: list[int], param: str) -> None:
        """400 when a token id is outside the vocabulary."""
        if self.vocab_size is not None and any(t >= self.vocab_size for t in ids):
            raise APIError(400, f"{param} holds a token id outside the vocabulary (ids are 0..{self.vocab_size - 1})",
                           param=param, code="invalid_value")

    def token_text(self, token_id: int) -> str:
        """The text of one token (special tokens by name), for ``logprobs`` and ``/tokenize``."""
        tok = getattr(self.engine, "tokenizer", None)
        return tok.decode([int(token_id)], skip_special=False) if tok is not None else str(token_id)


def server(request: Request) -> ServerState:
    """The state of the app serving ``request``. The routes call it rather than declare it as a FastAPI
    dependency: solving a dependency costs ~25 us per request, a few percent of a streamed request's CPU."""
    return request.app.state.server
