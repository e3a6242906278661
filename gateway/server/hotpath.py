"""The completion routes, dispatched before FastAPI's middleware stack.

Why: a passthrough request spends more of the gateway's CPU walking FastAPI's and Starlette's layers (error
and exception middlewares, telemetry, body limit, exit stack, router, route, request/response wrappers: a
dozen coroutine frames, about a fifth of its Python time at 400 requests/s) than in its own handler, and at
a low rate every one of them runs cold. The handlers need none of it: they read their body themselves
(gateway/http.py) and turn their own errors into OpenAI bodies. What the layers did for them is kept here:
the request id (set here, as gateway/server/requestid.py does, and added to the response's own headers rather than through
a wrapper of `send`), and the app's exception handlers for anything that escapes (found as Starlette finds them).
Every other route, and any other method on these paths, goes through FastAPI as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.error_handlers import handle_unexpected
from gateway.server.requestid import REQUEST_ID, request_id

Handler = Callable[[Request], Awaitable[Response]]


class GatewayApp(FastAPI):
    """FastAPI, with `hot` routes (path -> handler, POST only) served without its middleware stack."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.hot: dict[str, Handler] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.hot:
            scope["app"] = self
            await self._dispatch(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = request_id(scope["headers"])
        REQUEST_ID.set(rid.decode())
        request = Request(scope, receive, send)
        try:
            response = await self.hot[scope["path"]](request)
        except Exception as exc:  # noqa: BLE001 - as the skipped middlewares would: the app's handler for it
            handler = next((self.exception_handlers[cls] for cls in type(exc).__mro__
                            if cls in self.exception_handlers), handle_unexpected)
            response = await handler(request, exc)  # type: ignore[misc]
        response.raw_headers.append((b"x-request-id", rid))
        await response(scope, receive, send)
