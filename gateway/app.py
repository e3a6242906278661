"""The app factory: FastAPI app with the gateway's routes, error handlers and lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from gateway import tracing
from gateway.annotations.routes import router as annotations_router
from gateway.batches.routes import router as batches_router
from gateway.batches.service import Batches
from gateway.completions.routes import HOT, HOT_ROUTES
from gateway.config import Config, load_config
from gateway.error_handlers import (
    handle_api_error,
    handle_client_disconnect,
    handle_http_exception,
    handle_request_validation,
    handle_store_unavailable,
    handle_unexpected,
)
from gateway.errors import APIError
from gateway.server.lifecycle import on_stop_signal, run_stop_steps
from gateway.server.loop_gate import GATE
from gateway.openapi import document_routes
from gateway.quality import declare
from gateway.server.requestid import RequestIdMiddleware
from gateway.server.hotpath import GatewayApp
from gateway.routes import router
from gateway.state import GatewayState
from gateway.upstream.client import Connector, tcp_connector


def create_app(config: Config | None = None, connector: Connector = tcp_connector) -> FastAPI:
    """Build the app for `config` (default: the file named by CROWD_GATEWAY_CONFIG); `connector`: Upstreams'."""
    state = GatewayState.build(config or load_config(), connector)
    traces = tracing.configure(state.config.tracing)
    GATE.max_lag_s = state.config.gateway.max_loop_lag_ms / 1000
    declare(state.config)
    batches = Batches.build(state)

    timeout_s = state.config.gateway.shutdown_timeout_s
    stopping: set[asyncio.Task[None]] = set()

    async def stop_background() -> None:
        """No new work from here on: refits end (with their worker process), the batch worker claims nothing."""
        await asyncio.gather(state.reliability.stop(), batches.worker.stop_claiming())

    async def close_members() -> None:
        await state.grouper.close()
        await state.upstreams.close()

    async def close_store() -> None:
        await state.health.close()
        await batches.store.close()
        await state.store.close()

    stop_steps = [("background work", stop_background), ("batch lines", batches.worker.stop),
                  ("member connections", close_members), ("store connections", close_store)]
    if traces is not None:
        stop_steps.append(("traces", traces.close))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:  # a startup that fails half way still closes what it opened
            await state.upstreams.start()
            await state.reliability.start()
            await batches.start()
            # background work stops at the stop signal, while uvicorn still drains requests (half the timeout)
            on_stop_signal(lambda: stopping.add(asyncio.create_task(stop_background())), timeout_s)
            yield
        finally:
            await run_stop_steps(stop_steps, timeout_s / 2)

    # FastAPI's own OpenTelemetry hooks cost ~30 us a request; the gateway exports Prometheus metrics itself. With
    # tracing on they open each request's span, so the completion routes go through FastAPI too (no hot dispatch).
    app = GatewayApp(title="Crowd Gateway", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                     telemetry={"tracing": False, "metrics": False} if traces is None else traces.telemetry())
    app.hot = HOT if traces is None else {}
    app.state.gateway = state
    app.state.batches = batches
    app.router.routes.extend(HOT_ROUTES)
    app.include_router(router)
    app.include_router(annotations_router)
    app.include_router(batches_router)
    app.add_exception_handler(APIError, handle_api_error)
    app.add_exception_handler(ClientDisconnect, handle_client_disconnect)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(RequestValidationError, handle_request_validation)
    app.add_exception_handler(RedisError, handle_store_unavailable)
    app.add_exception_handler(OSError, handle_store_unavailable)
    app.add_exception_handler(Exception, handle_unexpected)
    app.add_middleware(RequestIdMiddleware)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_routes(get_openapi(title=app.title, version=app.version,
                                                             routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
