"""``POST /v1/completions``: text completions, with ``logprobs``, ``echo`` (prompt scoring, as
lm-evaluation-harness uses it) and prompts given as text or token ids."""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Request

from lmforge.serving.format import CompletionLogprobs
from lmforge.serving.openapi import errors
from lmforge.serving.responses import ChunkHead, event_stream
from lmforge.serving.schemas import CompletionRequest, Usage, new_id, now
from lmforge.serving.state import ServerState, server

__all__ = ["router"]

router = APIRouter()


class _Choice:
    """One choice being assembled: its text, finish reason and log-probabilities."""

    def __init__(self, srv: ServerState, req: CompletionRequest, ids: list[int], prompt: Any) -> None:
        self.text = ""
        self.reason: Optional[str] = None
        self.logprobs = CompletionLogprobs(srv.token_text, req.logprobs or 0) if req.logprobs is not None else None
        self.echo = (prompt if isinstance(prompt, str) else srv.engine.tokenizer.decode(ids)) if req.echo else ""
        self.ids = ids

    def add(self, event: Any) -> None:
        self.text += event.text
        self.reason = event.finish_reason or self.reason
        if self.logprobs is not None:
            for lp in event.logprobs:
                self.logprobs.add(lp.token_id, lp)


async def _prompt_part(srv: ServerState, req: CompletionRequest, choices: list[_Choice]) -> None:
    """With ``echo``: the prompt's tokens (and their log-probabilities) open each choice's logprobs."""
    if not req.echo or req.logprobs is None:
        return
    scored: dict[tuple, list[Any]] = {}
    for choice in choices:
        key = tuple(choice.ids)
        if key not in scored:
            scored[key] = await srv.backend.score(choice.ids, req.logprobs or 0)
        choice.logprobs.add_prompt(choice.ids, scored[key])  # type: ignore[union-attr]


def _body(choice: _Choice, index: int, text: str, reason: Optional[str], logprobs: Any) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}


@router.post("/v1/completions", responses=errors(404, post=True, busy=True, streams=True))
async def completions(req: CompletionRequest, request: Request) -> Any:
    """Completes each prompt ``n`` times (choice ``p * n + c`` is choice ``c`` of prompt ``p``)."""
    srv = server(request)
    srv.check_model(req.model)
    srv.need("lm", "/v1/completions")
    max_tokens = srv.max_new(req)
    prompts = req.prompts()
    ids = [srv.backend.prompt_ids(p) for p in prompts]
    for p, row in zip(prompts, ids):
        if not isinstance(p, str):
            srv.check_token_ids(row, "prompt")
    srv.check_token_ids(list(req.bias()), "logit_bias")
    choices = [_Choice(srv, req, ids[i // req.n], prompts[i // req.n]) for i in range(len(prompts) * req.n)]
    await _prompt_part(srv, req, choices)
    head = {"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": srv.name}
    prompt_tokens = sum(len(row) for row in ids)
    if max_tokens == 0:  # score only (lm-evaluation-harness's loglikelihood requests)
        srv.metrics.tokens(prompt_tokens, 0)
        return {**head, "choices": [_body(c, i, c.echo, "length", c.logprobs.take() if c.logprobs else None)
                                    for i, c in enumerate(choices)], "usage": Usage.of(prompt_tokens).body()}
    gen = await srv.backend.complete(prompts, req.sampling(max_tokens), req.n, req.logprobs, req.bias())
    if not req.stream:
        async for event in gen:
            choices[event.index].add(event)
        return {**head, "choices": [
            _body(c, i, c.echo + c.text, c.reason, c.logprobs.take() if c.logprobs else None)
            for i, c in enumerate(choices)], "usage": Usage.of(gen.prompt_tokens, gen.completion_tokens).body()}

    chunk = ChunkHead(head)

    def render(event: Any) -> list[bytes]:
        choice = choices[event.index]
        before = len(choice.logprobs.tokens) if choice.logprobs else 0
        choice.add(event)
        has_lp = choice.logprobs is not None and len(choice.logprobs.tokens) > before
        if not event.text and not event.finish_reason and not has_lp:
            return []
        lp = choice.logprobs.take() if choice.logprobs else None
        return [chunk.choices([_body(choice, event.index, event.text, event.finish_reason, lp)])]

    start = []
    for i, c in enumerate(choices):
        if c.echo:
            start.append(chunk.choices([_body(c, i, c.echo, None, c.logprobs.take() if c.logprobs else None)]))

    def finish() -> list[bytes]:
        if not req.include_usage:
            return []
        return [chunk.usage(Usage.counts(gen.prompt_tokens, gen.completion_tokens))]

    return event_stream(gen, render, start, finish, srv.stream_interval)
