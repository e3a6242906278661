"""HTTP in and out for every route: the API-key check, bounded JSON bodies, JSON answers, the service's answers."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from gateway.answer import Answer
from gateway.errors import APIError, bad_request
from gateway.state import GatewayState
from gateway.tenancy import DEFAULT


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def render(answer: Answer) -> Response:
    """The service's answer as the HTTP response: the one place an `Answer` meets Starlette."""
    if answer.stream is not None:
        return StreamingResponse(answer.stream, answer.status, answer.headers, answer.media_type)
    return Response(answer.body, answer.status, answer.headers, answer.media_type)


def int_param(value: str, param: str, low: int, high: int) -> int:
    """A query parameter as an integer from `low` to `high`, else a 400 naming it. The length is checked before the
    conversion: Python refuses to convert more than 4,300 digits (a ValueError, once a 500 here)."""
    if not (value.isascii() and value.isdigit()) or len(value) > len(str(high)) or not low <= int(value) <= high:
        raise bad_request(f"{param} must be an integer from {low} to {high}", param)
    return int(value)


def too_large(declared: str, limit: int) -> bool:
    """A Content-Length header past `limit` (however many digits it has)."""
    return declared.isdigit() and (len(declared) > len(str(limit)) or int(declared) > limit)


def authorize(state: GatewayState, request: Request) -> str:
    """The caller's tenant; 401 without a valid key (when keys are configured)."""
    if not state.api_keys:
        return DEFAULT
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    tenant = state.api_keys.get(key.strip()) if scheme.lower() == "bearer" else None
    if tenant is None:
        raise APIError(401, "missing or invalid API key: send Authorization: Bearer <key>", code="invalid_api_key")
    return tenant


async def read_json(state: GatewayState, request: Request) -> tuple[dict[str, Any], bytes]:
    """The body as (dict, raw bytes), refusing oversized or malformed ones before any work."""
    limit = state.config.gateway.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and too_large(declared, limit):
        raise APIError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                       code="request_too_large")
    raw = await _read_body(request, limit)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_body")
    return body, raw


async def _read_body(request: Request, limit: int) -> bytes:
    """The body as it arrives, counted against `limit` (a chunked one has no declared size). Read from the ASGI
    channel itself: Starlette's `Request.body()` goes through an async generator, whose bookkeeping (the loop's
    registry of generators, its finalizer) costs a passthrough request more than the read."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
