"""The completion routes: read the body, answer it with the service (gateway/completions/service.py), render.

They are served before FastAPI's middleware stack (gateway/server/hotpath.py), and are also plain Starlette routes for
the OpenAPI document and a 405 to other methods.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import metrics
from gateway.answer import Answer
from gateway.budgets import metered
from gateway.completions.service import OUTCOMES, execute
from gateway.errors import APIError
from gateway.http import authorize, read_json, render
from gateway.state import GatewayState
from gateway.task import Kind


async def _complete(request: Request, kind: Kind, path: str) -> Response:
    state: GatewayState = request.app.state.gateway
    try:
        tenant = authorize(state, request)
        body, raw = await read_json(state, request)
    except APIError as exc:
        metrics.child(metrics.REQUESTS, "-", OUTCOMES.get(exc.status, "error")).inc()
        return render(Answer.error(exc))
    if (limits := state.metered.get(tenant)) is not None:
        return render(await metered(state, body, raw, kind, path, tenant, limits))
    return render(await execute(state, body, raw, kind, path, tenant))


async def chat_completions(request: Request) -> Response:
    return await _complete(request, "chat", "/chat/completions")


async def completions(request: Request) -> Response:
    return await _complete(request, "completion", "/completions")


HOT: dict[str, Callable[[Request], Awaitable[Response]]] = {"/v1/chat/completions": chat_completions,
                                                             "/v1/completions": completions}
"""Served before FastAPI's middleware stack (gateway/server/hotpath.py)."""
HOT_ROUTES = [Route(path, handler, methods=["POST"]) for path, handler in HOT.items()]
"""The same as plain Starlette routes, for the OpenAPI document and a 405 to other methods."""
