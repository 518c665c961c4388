"""An OpenAPI document that tells the truth about the server.

* :func:`errors` lists, for a route, every error status it can answer with OpenAI's error object as the schema
  (FastAPI would otherwise document a 422 this server never sends: invalid requests get 400).
* :func:`install_openapi` adds the limits that depend on the served model to the request schemas: the context
  caps ``max_tokens``, and the vocabulary caps token ids (in prompts, ``/detokenize`` and ``logit_bias`` keys),
  so a request the schema admits is one the server accepts.
"""

from __future__ import annotations

from typing import Any, Optional

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from lmforge.serving.schemas import ErrorResponse

__all__ = ["errors", "install_openapi", "range_pattern"]

_WHY = {
    400: "invalid request: malformed JSON, a wrong or unknown field, a value out of range, or a route this run "
         "does not offer",
    401: "missing or wrong API key (when the server has one)",
    404: "the model named in the request is not the one served",
    408: "the request body did not arrive in time",
    413: "the request body is larger than the server accepts",
    429: "the server is busy: every slot is taken and the waiting queue is full (see Retry-After)",
    500: "internal server error",
}


def errors(*codes: int, post: bool = False, busy: bool = False, streams: bool = False) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route: 401 and 500 always, ``codes``, 400/408/413 for a route with a body,
    429 for a route that queues model work; ``streams``: a 200 may also be server-sent events."""
    wanted = {401, 500, *codes}
    if post:
        wanted |= {400, 408, 413}
    if busy:
        wanted.add(429)
    out: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse, "description": _WHY[code]}
                                            for code in sorted(wanted)}
    if streams:
        out[200] = {"description": "a JSON object, or with stream: true server-sent events ending with "
                                   "data: [DONE]",
                    "content": {"application/json": {}, "text/event-stream": {}}}
    return out


def range_pattern(n: int) -> str:
    """A regular expression matching the decimal numbers 0 .. n-1 (no leading zeros), ``n >= 1``."""
    top = str(n - 1)
    alts = []
    if len(top) > 1:  # every shorter number
        alts.append("[0-9]" if len(top) == 2 else f"[0-9]|[1-9][0-9]{{1,{len(top) - 2}}}")
    for i, digit in enumerate(top):  # numbers of top's length, below top at position i
        low = "1" if i == 0 and len(top) > 1 else "0"
        if int(digit) > int(low):
            rest = len(top) - i - 1
            alts.append(f"{top[:i]}[{low}-{int(digit) - 1}]" + (f"[0-9]{{{rest}}}" if rest else ""))
    alts.append(top)
    return "^(" + "|".join(alts) + ")$"


def _walk(node: Any, fn: Any) -> None:
    if isinstance(node, dict):
        fn(node)
        for value in node.values():
            _walk(value, fn)
    elif isinstance(node, list):
        for value in node:
            _walk(value, fn)


def _limit(doc: dict, context: Optional[int], vocab: Optional[int]) -> None:
    schemas = doc.get("components", {}).get("schemas", {})

    def cap_ids(node: dict) -> None:
        if vocab and node.get("type") == "integer" and node.get("minimum") == 0 and "maximum" not in node \
                and node.get("title") is None:
            node["maximum"] = vocab - 1

    for name, schema in schemas.items():
        props = schema.get("properties", {})
        if context:
            for field in ("max_tokens", "max_completion_tokens"):
                for option in props.get(field, {}).get("anyOf", []):
                    if option.get("type") == "integer":
                        option["maximum"] = context
        if name in ("CompletionRequest", "DetokenizeRequest"):
            _walk(props.get("prompt" if name == "CompletionRequest" else "tokens", {}), cap_ids)
        for option in props.get("logit_bias", {}).get("anyOf", []):
            if option.get("type") == "object":  # pydantic does not write the key pattern itself
                option["propertyNames"] = {"pattern": range_pattern(vocab) if vocab else "^[0-9]{1,9}$"}


# Routes that only one kind of run offers (the others answer them with 400 unsupported_for_model).
_ONLY = {"/v1/translations": "translation", "/v1/completions": "lm", "/v1/chat/completions": "lm",
         "/v1/embeddings": "lm", "/tokenize": "lm", "/detokenize": "lm", "/tokenizer_info": "lm"}


def install_openapi(app: FastAPI, kind: str, context: Optional[int], vocab: Optional[int]) -> None:
    """Makes ``app.openapi()`` return the corrected document (built once), listing only the routes the
    served ``kind`` of run offers."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                              description=app.description)
            doc["paths"] = {p: ops for p, ops in doc.get("paths", {}).items() if _ONLY.get(p, kind) == kind}
            for path in doc.get("paths", {}).values():
                for op in path.values():
                    op.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                doc.get("components", {}).get("schemas", {}).pop(name, None)
            _limit(doc, context, vocab)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
