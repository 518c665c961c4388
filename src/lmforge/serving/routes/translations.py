"""``POST /v1/translations`` (lmforge's own): translate sentences with a translation run."""

from __future__ import annotations

from fastapi import APIRouter, Request

from lmforge.serving.openapi import errors
from lmforge.serving.schemas import TranslationRequest
from lmforge.serving.state import server

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/translations", responses=errors(404, post=True, busy=True))
async def translations(req: TranslationRequest, request: Request) -> dict:
    """One translation per input sentence (beam search of width ``beam``)."""
    srv = server(request)
    srv.check_model(req.model)
    srv.need("translation", "/v1/translations")
    texts = list(req.input)
    outputs = await srv.backend.call(lambda: srv.engine.translate(texts, beam=req.beam, max_len=req.max_len))
    return {"object": "list", "model": srv.name,
            "data": [{"object": "translation", "index": i, "text": t} for i, t in enumerate(outputs)]}
