"""``GET /v1/models`` and ``GET /v1/models/{model_id}``."""

from __future__ import annotations

from fastapi import APIRouter, Request

from lmforge.serving.openapi import errors
from lmforge.serving.state import ServerState, server

__all__ = ["router"]

router = APIRouter()


def _card(srv: ServerState) -> dict:
    return {"id": srv.name, "object": "model", "created": srv.created, "owned_by": "lmforge",
            "lmforge": {"kind": srv.kind, "max_context": srv.context}}


@router.get("/v1/models", responses=errors())
async def list_models(request: Request) -> dict:
    """The served model (one per server)."""
    srv = server(request)
    return {"object": "list", "data": [_card(srv)]}


@router.get("/v1/models/{model_id}", responses=errors(404))
async def get_model(model_id: str, request: Request) -> dict:
    """The served model, if ``model_id`` names it."""
    srv = server(request)
    srv.check_model(model_id)
    return _card(srv)
