"""``POST /v1/chat/completions``: chat replies, streamed or not, with ``logprobs`` / ``top_logprobs``."""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Request

from lmforge.serving.format import chat_logprobs
from lmforge.serving.openapi import errors
from lmforge.serving.responses import ChunkHead, event_stream
from lmforge.serving.schemas import ChatCompletionRequest, Usage, new_id, now
from lmforge.serving.state import server

__all__ = ["router"]

router = APIRouter()


def _choice(index: int, delta_or_message: dict, reason: Optional[str], logprobs: Any, stream: bool) -> dict:
    key = "delta" if stream else "message"
    return {"index": index, key: delta_or_message, "logprobs": logprobs, "finish_reason": reason}


@router.post("/v1/chat/completions", responses=errors(404, post=True, busy=True, streams=True))
async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
    """The assistant's reply to ``messages`` (``n`` independent choices, generated as one batch).
    ``top_logprobs`` counts only with ``logprobs: true``."""
    srv = server(request)
    srv.check_model(req.model)
    srv.need("lm", "/v1/chat/completions")
    srv.check_token_ids(list(req.bias()), "logit_bias")
    messages = [m.as_dict() for m in req.messages]
    top = int(req.top_logprobs or 0) if req.logprobs else 0
    gen = await srv.backend.chat(messages, req.sampling(srv.max_new(req)), req.n,
                                 top if req.logprobs else None, req.bias())
    head = {"id": new_id("chatcmpl"), "created": now(), "model": srv.name}

    def lp(event: Any) -> Any:
        return chat_logprobs(srv.token_text, event.logprobs, top) if req.logprobs else None

    if not req.stream:
        texts, reasons, logs = [""] * req.n, [None] * req.n, [[] for _ in range(req.n)]
        async for event in gen:
            texts[event.index] += event.text
            reasons[event.index] = event.finish_reason or reasons[event.index]
            logs[event.index].extend(event.logprobs)
        choices = [_choice(i, {"role": "assistant", "content": srv.backend.clean_reply(texts[i])}, reasons[i],
                           chat_logprobs(srv.token_text, logs[i], top) if req.logprobs else None, False)
                   for i in range(req.n)]
        return {**head, "object": "chat.completion", "choices": choices,
                "usage": Usage.of(gen.prompt_tokens, gen.completion_tokens).body()}

    chunk = ChunkHead({**head, "object": "chat.completion.chunk"})
    started = [False] * req.n

    def render(event: Any) -> list[bytes]:
        text = event.text
        if not started[event.index]:  # a reply starts at its first non-space character
            text = text.lstrip()
            started[event.index] = bool(text)
        out = []
        if text or (req.logprobs and event.logprobs):
            out.append(chunk.choices([_choice(event.index, {"content": text}, None, lp(event), True)]))
        if event.finish_reason:
            out.append(chunk.choices([_choice(event.index, {}, event.finish_reason, None, True)]))
        return out

    opening = [chunk.choices([_choice(i, {"role": "assistant", "content": ""}, None, None, True)])
               for i in range(req.n)]

    def finish() -> list[bytes]:
        if not req.include_usage:
            return []
        return [chunk.usage(Usage.counts(gen.prompt_tokens, gen.completion_tokens))]

    return event_stream(gen, render, opening, finish, srv.stream_interval)
