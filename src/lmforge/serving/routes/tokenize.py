"""vLLM's tokenizer endpoints: ``POST /tokenize``, ``POST /detokenize`` and ``GET /tokenizer_info``.

Field names follow vLLM's OpenAI-compatible server: ``/tokenize`` takes ``prompt`` (or chat ``messages``) and
``add_special_tokens``, and answers ``{"count", "max_model_len", "tokens", "token_strs"}``; ``/detokenize``
takes ``tokens`` and answers ``{"prompt"}``; ``/tokenizer_info`` describes the tokenizer (lm-evaluation-harness
reads ``eos_token`` from it to decide that it can tokenize through the server).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from lmforge.serving.openapi import errors
from lmforge.serving.responses import APIError
from lmforge.serving.schemas import DetokenizeRequest, TokenizeChatRequest, TokenizeRequest
from lmforge.serving.state import ServerState, server

__all__ = ["router"]

router = APIRouter()


def _tokenizer(srv: ServerState, route: str) -> Any:
    srv.need("lm", route)
    tok = getattr(srv.engine, "tokenizer", None)
    if tok is None:
        raise APIError(400, f"{route} needs a run with a tokenizer", code="unsupported_for_model")
    return tok


@router.post("/tokenize", responses=errors(404, post=True))
async def tokenize(req: TokenizeRequest, request: Request) -> dict:
    """Token ids of ``prompt``, or of chat ``messages`` rendered with the run's chat template. lmforge's
    tokenizers add no special tokens to plain text, so ``add_special_tokens`` changes nothing."""
    srv = server(request)
    srv.check_model(req.model)
    tok = _tokenizer(srv, "/tokenize")
    if isinstance(req, TokenizeChatRequest):
        ids, _ = srv.engine.chat_request([m.as_dict() for m in req.messages])
    else:
        ids = list(tok.encode(req.prompt))
    body: dict[str, Any] = {"count": len(ids), "max_model_len": srv.context, "tokens": ids}
    body["token_strs"] = [srv.token_text(t) for t in ids] if req.return_token_strs else None
    return body


@router.post("/detokenize", responses=errors(404, post=True))
async def detokenize(req: DetokenizeRequest, request: Request) -> dict:
    """The text of ``tokens`` (special tokens left out)."""
    srv = server(request)
    srv.check_model(req.model)
    tok = _tokenizer(srv, "/detokenize")
    srv.check_token_ids(req.tokens, "tokens")
    return {"prompt": tok.decode(req.tokens)}


@router.get("/tokenizer_info", responses=errors(400))
async def tokenizer_info(request: Request) -> dict:
    """The tokenizer's kind, size and special tokens (vLLM's ``/tokenizer_info`` fields)."""
    srv = server(request)
    tok = _tokenizer(srv, "/tokenizer_info")
    specials = getattr(tok, "special_tokens", {}) or {}
    by_id = {v: k for k, v in specials.items()}
    name = lambda attr: by_id.get(getattr(tok, attr, None))  # noqa: E731
    return {"tokenizer_class": type(tok).__name__, "vocab_size": srv.vocab_size, "model_max_length": srv.context,
            "eos_token": name("eos_id"), "bos_token": name("bos_id"), "pad_token": name("pad_id"),
            "unk_token": name("unk_id"), "chat_template": None, "added_tokens": dict(sorted(specials.items()))}
