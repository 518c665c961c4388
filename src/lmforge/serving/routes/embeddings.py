"""``POST /v1/embeddings``: unit-length vectors of texts, as floats or base64 float32."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from lmforge.serving.openapi import errors
from lmforge.serving.schemas import EmbeddingRequest, Usage
from lmforge.serving.state import server

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/embeddings", responses=errors(404, post=True, busy=True))
async def embeddings(req: EmbeddingRequest, request: Request) -> dict:
    """One vector per input text."""
    srv = server(request)
    srv.check_model(req.model)
    srv.need("lm", "/v1/embeddings")
    texts = list(req.input)
    engine = srv.engine

    def work() -> tuple[Any, int]:
        return engine.embed(texts), sum(int(engine.count_tokens(t)) for t in texts)

    vectors, tokens = await srv.backend.call(work)
    data = []
    for i, vec in enumerate(vectors):
        if req.encoding_format == "base64":
            value: Any = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
        else:
            value = [float(x) for x in vec]
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": srv.name, "usage": Usage.of(tokens).body(completion=False)}
