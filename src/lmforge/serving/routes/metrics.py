"""``GET /metrics``: Prometheus text format (see :mod:`lmforge.serving.metrics`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from lmforge.serving.openapi import errors
from lmforge.serving.state import server

__all__ = ["router"]

router = APIRouter()


@router.get("/metrics", response_class=PlainTextResponse, responses=errors())
async def metrics(request: Request) -> PlainTextResponse:
    """Request counts by route and status, tokens in and out, queue depth, active sequences and the
    time-to-first-token histogram."""
    srv = server(request)
    return PlainTextResponse(srv.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
