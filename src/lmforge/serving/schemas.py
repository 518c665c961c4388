"""Request and response bodies of the OpenAI-compatible server (Pydantic v2).

Requests are strict (no string-to-number coercion, ``True`` is not an integer) and reject unknown fields, the
way OpenAI's own API does, so a typo such as ``"temprature"`` is an error rather than silently ignored.
Responses follow OpenAI's shapes field for field, so the official clients parse them unchanged.
lmforge's own sampling knobs (``top_k``, ``min_p``, ``repetition_penalty``) are accepted as extra fields.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ChatMessage",
    "ChatCompletionRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "TranslationRequest",
    "StreamOptions",
    "ResponseFormat",
    "TokenizeRequest",
    "TokenizeCompletionRequest",
    "TokenizeChatRequest",
    "DetokenizeRequest",
    "ErrorResponse",
    "UNSUPPORTED_FIELDS",
    "Usage",
    "error_body",
    "new_id",
    "now",
]

MAX_STOP = 4  # OpenAI allows up to four stop sequences
MAX_N = 8  # choices per request; each one is a full generation on this machine
MAX_BATCH = 256  # texts per embeddings / translations request
MAX_TOP_LOGPROBS = 20  # alternatives per token (OpenAI's limit for chat)

# Known OpenAI request fields lmforge cannot honour: a request naming one gets a 400 with the reason.
UNSUPPORTED_FIELDS = {
    "tools": "lmforge models cannot call tools",
    "tool_choice": "lmforge models cannot call tools",
    "functions": "lmforge models cannot call functions",
    "function_call": "lmforge models cannot call functions",
    "parallel_tool_calls": "lmforge models cannot call tools",
    "suffix": "inserting text between a prompt and a suffix is not supported",
    "best_of": "server-side best-of ranking is not supported; ask for n choices and rank them yourself",
    "audio": "lmforge models read and write text only",
    "modalities": "lmforge models read and write text only",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "lmforge models have no reasoning mode",
    "web_search_options": "lmforge does not search the web",
    "store": "lmforge does not store completions",
    "metadata": "lmforge does not store completions, so it keeps no metadata",
    "service_tier": "lmforge has one service tier",
    "dimensions": "embeddings have the model's width; they cannot be shortened",
}

TokenId = Annotated[int, Field(ge=0)]
NonEmpty = Annotated[str, Field(min_length=1)]


def _whole_numbers(value: Any) -> Any:
    """JSON Schema counts 2.0 as an integer: turn such floats into ints before strict validation (a float
    field still accepts the int)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    return value


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _integers(cls, data: Any) -> Any:
        return _whole_numbers(data)


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
    stop: Optional[Union[NonEmpty, Annotated[list[NonEmpty], Field(max_length=MAX_STOP)]]] = None
    seed: Optional[int] = Field(None, ge=0, description="any size; used modulo 2**63")
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
    logit_bias: Optional[dict[Annotated[str, Field(pattern=r"^[0-9]{1,9}$")], Annotated[float, Field(ge=-100, le=100)]]] = (
        Field(None, description="token id (as a string) -> value added to its logit, -100..100"))
    response_format: Optional["ResponseFormat"] = None

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
                kwargs[name] = value % 2**63 if name == "seed" else value
        if self.stop:
            kwargs["stop"] = list(self.stop)
        return kwargs

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def bias(self) -> dict[int, float]:
        """``logit_bias`` with integer token ids."""
        return {int(k): float(v) for k, v in (self.logit_bias or {}).items()}


class ResponseFormat(_Request):
    """Only ``{"type": "text"}``: lmforge cannot constrain its output to JSON."""

    type: Literal["text"]


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1, description="OpenAI's newer name for max_tokens")
    logprobs: bool = Field(False, description="return each generated token's log-probability")
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                        description="alternatives per token (needs logprobs: true)")


Prompt = Union[str, Annotated[list[str], Field(min_length=1, max_length=MAX_BATCH)],
               Annotated[list[TokenId], Field(min_length=1)],
               Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=MAX_BATCH)]]


class CompletionRequest(_Sampling):
    """``POST /v1/completions``. ``prompt`` is a string, a list of strings, a list of token ids, or a list of
    such lists (one set of ``n`` choices per prompt)."""

    prompt: Prompt
    max_tokens: Optional[int] = Field(None, ge=0, description="0 with echo: score the prompt only")
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                    description="return token log-probabilities with this many alternatives")
    echo: bool = Field(False, description="return the prompt before the completion (with its logprobs)")

    def prompts(self) -> list[Union[str, list[int]]]:
        """The prompts, each a text or a list of token ids."""
        value = self.prompt
        if isinstance(value, str):
            return [value]
        if value and isinstance(value[0], int):
            return [list(value)]  # type: ignore[arg-type]
        return list(value)  # type: ignore[arg-type]


_Sampling.model_rebuild()
ChatCompletionRequest.model_rebuild()
CompletionRequest.model_rebuild()


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

    input: Union[NonEmpty, Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_BATCH)]]
    model: Optional[str] = None
    encoding_format: Literal["float", "base64"] = "float"
    user: Optional[str] = None

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: Union[str, list[str]]) -> list[str]:
        return _check_texts(value, "input")


class TranslationRequest(_Request):
    """``POST /v1/translations`` (lmforge's own): ``{"input": ["a sentence", ...], "beam": 5}``."""

    input: Union[NonEmpty, Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_BATCH)]]
    model: Optional[str] = None
    beam: int = Field(5, ge=1, le=16)
    max_len: Optional[int] = Field(None, ge=1)

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: Union[str, list[str]]) -> list[str]:
        return _check_texts(value, "input")


class TokenizeCompletionRequest(_Request):
    """``POST /tokenize`` with ``prompt`` text (vLLM's fields)."""

    prompt: str
    model: Optional[str] = None
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(_Request):
    """``POST /tokenize`` with chat ``messages``, rendered with the run's chat template (vLLM's fields)."""

    messages: list[ChatMessage] = Field(..., min_length=1)
    model: Optional[str] = None
    add_special_tokens: bool = False
    add_generation_prompt: bool = True
    return_token_strs: bool = False


TokenizeRequest = Union[TokenizeCompletionRequest, TokenizeChatRequest]


class DetokenizeRequest(_Request):
    """``POST /detokenize`` (vLLM's fields)."""

    tokens: list[TokenId]
    model: Optional[str] = None


class Usage(BaseModel):
    """Token counts of a response (OpenAI's ``usage``)."""

    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int

    @classmethod
    def of(cls, prompt: int, completion: int = 0) -> "Usage":
        return cls(**cls.counts(prompt, completion))

    @staticmethod
    def counts(prompt: int, completion: int = 0) -> dict[str, int]:
        """``Usage.of(prompt, completion).body()`` without building the model (once per streamed response)."""
        return {"prompt_tokens": int(prompt), "completion_tokens": int(completion),
                "total_tokens": int(prompt) + int(completion)}

    def body(self, completion: bool = True) -> dict[str, int]:
        """The JSON object (embeddings leave out ``completion_tokens``)."""
        return self.model_dump() if completion else {"prompt_tokens": self.prompt_tokens,
                                                     "total_tokens": self.total_tokens}


class _ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    """OpenAI's error object, the body of every 4xx and 5xx answer."""

    error: _ErrorDetail


def error_body(message: str, type_: str, param: Optional[str] = None, code: Optional[str] = None) -> dict:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def new_id(prefix: str) -> str:
    """A fresh response id such as ``chatcmpl-3f2a...``."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    """Unix time in seconds, OpenAI's ``created`` field."""
    return int(time.time())
