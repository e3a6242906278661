"""The app's exception handlers: an `APIError` raised by a route, and anything unexpected, as OpenAI's error body.

Why beside the app and not with `APIError` (gateway/errors.py): the error is data the service and the batch
worker use too; only these handlers need Starlette's request and response types.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway import metrics
from gateway.answer import Answer
from gateway.errors import APIError
from gateway.http import render
from gateway.server.requestid import REQUEST_ID

log = logging.getLogger("crowd_gateway")

DEADLINE_PASSED = "crowd_gateway.deadline_passed"
"""Scope key set by gateway/server/connections.py when it closed the request's connection (it logged that already)."""


def error_response(exc: APIError) -> Response:
    return render(Answer.error(exc))


async def handle_api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc)


async def handle_http_exception(_: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 for unknown routes, in OpenAI's shape."""
    assert isinstance(exc, StarletteHTTPException)
    code = "unknown_url" if exc.status_code == 404 else None
    return error_response(APIError(exc.status_code, str(exc.detail), code=code))


async def handle_request_validation(_: Request, exc: Exception) -> Response:
    """FastAPI's parameter validation (query and path parameters), as a 400 naming the parameter."""
    errors = getattr(exc, "errors", lambda: [])()
    first = errors[0] if errors else {}
    param = str(first.get("loc", ("", ""))[-1]) or None
    return error_response(APIError(400, f"{param}: {first.get('msg', 'invalid value')}", param=param,
                                   code="invalid_value"))


async def handle_store_unavailable(request: Request, exc: Exception) -> Response:
    """A store outage (Redis unreachable or stalled, a socket error on the way) on any route: 503, never a traceback.

    One handler for every store route (feedback, annotations, review, refit, params, files, batches): they
    reach the store directly, and the outage is the same for all of them. It is logged once per outage
    (gateway/store/health.py), by the request that met it first. The completion routes never get here: they
    answer without storing (`stored: false`, gateway/completions/service.py)."""
    request.app.state.gateway.health.failed("store routes", exc)
    return error_response(APIError(503, "the gateway's store is unavailable; retry later", code="store_unavailable",
                                   headers={"Retry-After": "1"}))


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
    return error_response(APIError(500, "internal error in the gateway; the server log has the details",
                                   type="server_error", code="internal_error", headers=headers))
