"""OpenAI-style error bodies: every failure a client sees is `{"error": {...}}` with the right status.

Why one module: handlers raise `APIError` anywhere on the request path; the app's exception
handlers turn it (and anything unexpected) into the body the OpenAI SDK knows how to raise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import orjson
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway import metrics
from gateway.requestid import REQUEST_ID

log = logging.getLogger("crowd_gateway")

DEADLINE_PASSED = "crowd_gateway.deadline_passed"
"""Scope key set by gateway/connections.py when it closed the request's connection (it logged that already)."""

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class APIError(Exception):
    """An error with an HTTP status, rendered as OpenAI's error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        return Response(orjson.dumps(self.body()), status_code=self.status, media_type="application/json",
                        headers=self.headers)


NAMED_LABELS = 20
"""Labels an error message names at most: a label set may have 1,000 labels of 200 characters."""


def named(labels: Sequence[str]) -> str:
    """A label set for an error message, capped: the first NAMED_LABELS and how many more."""
    shown = ", ".join(repr(label) for label in labels[:NAMED_LABELS])
    return shown if len(labels) <= NAMED_LABELS else f"{shown} and {len(labels) - NAMED_LABELS} more"


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


async def handle_api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response()


async def handle_http_exception(_: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 for unknown routes, in OpenAI's shape."""
    assert isinstance(exc, StarletteHTTPException)
    code = "unknown_url" if exc.status_code == 404 else None
    return APIError(exc.status_code, str(exc.detail), code=code).response()


async def handle_request_validation(_: Request, exc: Exception) -> Response:
    """FastAPI's parameter validation (query and path parameters), as a 400 naming the parameter."""
    errors = getattr(exc, "errors", lambda: [])()
    first = errors[0] if errors else {}
    param = str(first.get("loc", ("", ""))[-1]) or None
    return APIError(400, f"{param}: {first.get('msg', 'invalid value')}", param=param, code="invalid_value").response()


async def handle_store_unavailable(request: Request, exc: Exception) -> Response:
    """A store outage (Redis unreachable or stalled, a socket error on the way) on any route: 503, never a traceback.

    One handler for every store route (feedback, annotations, review, refit, params, files, batches): they
    reach the store directly, and the outage is the same for all of them. It is logged once per outage
    (gateway/store/health.py), by the request that met it first. The completion routes never get here: they
    answer without storing (`stored: false`, gateway/serving.py)."""
    request.app.state.gateway.health.failed("store routes", exc)
    return APIError(503, "the gateway's store is unavailable; retry later", code="store_unavailable",
                    headers={"Retry-After": "1"}).response()


async def handle_client_disconnect(request: Request, exc: Exception) -> Response:
    """A client that went away before its request body arrived: one short line and a metric, no traceback.

    Dropped connections are routine (client timeouts, cancelled jobs); a traceback for each one, logged by
    this handler and again by uvicorn, turned 1,000 drops into 102k log lines and stalled /healthz (issue 12).
    The answer goes nowhere: the connection is gone."""
    if DEADLINE_PASSED not in request.scope:
        metrics.CLIENT_DISCONNECTS.inc()
        log.info("client went away before its request body arrived: %s %s", request.method, request.url.path)
    return Response(status_code=499)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    """Last resort: log the traceback server-side, never send it to the client.

    Runs outside the middleware stack (Starlette's ServerErrorMiddleware), so it adds `x-request-id` itself."""
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    headers = {"x-request-id": rid} if (rid := REQUEST_ID.get()) else None
    return APIError(500, "internal error in the gateway; the server log has the details",
                    type="server_error", code="internal_error", headers=headers).response()
