"""``GET /`` (the chat page) and ``GET /health``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from lmforge.serving.state import server

__all__ = ["router", "PUBLIC_PATHS"]

router = APIRouter()

PUBLIC_PATHS = ("/", "/health", "/index.html")
_PAGE_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
             "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'")


@router.get("/", include_in_schema=False)
@router.get("/index.html", include_in_schema=False)
async def index(request: Request) -> HTMLResponse:
    srv = server(request)
    return HTMLResponse(srv.page, headers={"Content-Security-Policy": _PAGE_CSP, "X-Content-Type-Options": "nosniff"})


@router.get("/health")
async def health(request: Request) -> dict:
    """Liveness, the served model and the load: sequences running and requests waiting."""
    srv = server(request)
    return {"status": "ok", "model": srv.name, "kind": srv.kind, "batching": srv.backend.batching,
            "active": srv.backend.active, "queued": srv.backend.queued}
