"""Request and response bodies of the OpenAI-compatible server (Pydantic v2).

Requests are strict (no string-to-number coercion, ``True`` is not an integer) and reject unknown fields, the
way OpenAI's own API does, so a typo such as ``"temprature"`` is an error rather than silently ignored.
Responses follow OpenAI's shapes field for field, so the official clients parse them unchanged.
lmforge's own sampling knobs (``top_k``, ``min_p``, ``repetition_penalty``) are accepted as extra fields.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ChatMessage",
    "ChatCompletionRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "TranslationRequest",
    "StreamOptions",
    "Usage",
    "error_body",
    "new_id",
    "now",
]

MAX_STOP = 4  # OpenAI allows up to four stop sequences
MAX_N = 8  # choices per request; each one is a full generation on this machine
MAX_BATCH = 256  # texts per embeddings / translations request


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    """One chat turn. ``content`` is a string or a list of ``{"type": "text", "text": ...}`` parts."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[_TextPart]]
    name: Optional[str] = None

    def text(self) -> str:
        """The message's text, with text parts joined."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def as_dict(self) -> dict[str, str]:
        """The ``{"role", "content"}`` dict lmforge's chat templates take (``developer`` counts as ``system``)."""
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.text()}


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    """Sampling fields shared by completions and chat completions."""

    model: Optional[str] = Field(None, description="the served model's id; omitted = the served model")
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    max_tokens: Optional[int] = Field(None, ge=1)
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    user: Optional[str] = None
    # lmforge's own sampling knobs, beyond OpenAI's.
    top_k: Optional[int] = Field(None, ge=1)
    min_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    repetition_penalty: Optional[float] = Field(None, gt=0.0)

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: Union[str, list[str], None]) -> Optional[list[str]]:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else list(value)
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty strings")
        return stops

    def sampling(self, max_new_tokens: int) -> dict[str, Any]:
        """The keyword arguments for lmforge's sampler (``SamplingParams`` field names); unset fields are left
        out so the sampler's defaults apply."""
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens}
        for name in (
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "repetition_penalty",
            "presence_penalty",
            "frequency_penalty",
            "seed",
        ):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        if self.stop:
            kwargs["stop"] = list(self.stop)
        return kwargs

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1, description="OpenAI's newer name for max_tokens")


class CompletionRequest(_Sampling):
    """``POST /v1/completions``; ``prompt`` is one string or a list of strings (one choice set per prompt)."""

    prompt: Union[str, list[str]]

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: Union[str, list[str]]) -> Union[str, list[str]]:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be an empty list")
        if isinstance(value, list) and len(value) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} prompts per request")
        return value

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


def _check_texts(value: Union[str, list[str]], field: str) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise ValueError(f"{field} must not be empty")
    if len(texts) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} texts per request")
    if any(not t for t in texts):
        raise ValueError(f"{field} must not contain empty strings")
    return texts


class EmbeddingRequest(_Request):
    """``POST /v1/embeddings``. ``encoding_format="base64"`` (the openai client's default) returns little-endian
    float32 bytes, base64-encoded."""

    input: Union[str, list[str]]
    model: Optional[str] = None
    encoding_format: Literal["float", "base64"] = "float"
    user: Optional[str] = None

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: Union[str, list[str]]) -> list[str]:
        return _check_texts(value, "input")


class TranslationRequest(_Request):
    """``POST /v1/translations`` (lmforge's own): ``{"input": ["a sentence", ...], "beam": 5}``."""

    input: Union[str, list[str]]
    model: Optional[str] = None
    beam: int = Field(5, ge=1, le=16)
    max_len: Optional[int] = Field(None, ge=1)

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: Union[str, list[str]]) -> list[str]:
        return _check_texts(value, "input")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


def error_body(message: str, type_: str, param: Optional[str] = None, code: Optional[str] = None) -> dict:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def new_id(prefix: str) -> str:
    """A fresh response id such as ``chatcmpl-3f2a...``."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    """Unix time in seconds, OpenAI's ``created`` field."""
    return int(time.time())
