"""The gateway app in this process: `create_app(parse_config(...))` with its lifespan run on a private event
loop thread, requests sent through httpx.ASGITransport. Tests stay synchronous and may share one app (and its
upstream connections) across a module; the official openai client works against it through `openai()`.

No port, no process. Its calls to members go over TCP, or, with `connector` (an `InProcessUpstream`'s), to the fake
upstream in this process without a socket (tests/harness/memory.py). With `port`,
uvicorn also serves the app on 127.0.0.1 (on the same loop) for a client that needs a URL, such as a CLI run in
the test; metrics are this process's, so a test that reads them from outside wants a gateway process instead."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI
from openai import OpenAI

from gateway.app import create_app
from gateway.config import parse_config
from gateway.upstream.client import Connector, tcp_connector
from tests.harness.gateway import Served

T = TypeVar("T")
BASE = "http://gateway.test"


class _Bridge(httpx.BaseTransport):
    """A synchronous transport that hands each request to the ASGI app on the app's own event loop."""

    def __init__(self, app: InProcessGateway) -> None:
        self.app = app

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()

        async def send() -> httpx.Response:
            copy = httpx.Request(request.method, request.url, headers=request.headers, content=body)
            response = await self.app.transport.handle_async_request(copy)
            content = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=content,
                                  request=request)

        return self.app.run(send())


class InProcessGateway(Served):
    """One gateway app for `config` (a dict, as in the YAML file), started and stopped with its lifespan."""

    url = BASE
    v1 = f"{BASE}/v1"

    def __init__(self, config: dict[str, Any], port: int | None = None, connector: Connector = tcp_connector) -> None:
        self.app: FastAPI = create_app(parse_config(config), connector)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="in-process-gateway", daemon=True)
        self.thread.start()
        self.transport = httpx.ASGITransport(app=self.app)
        self._lifespan: AbstractAsyncContextManager[Any] = self.app.router.lifespan_context(self.app)
        self.run(self._lifespan.__aenter__())
        self.http = httpx.Client(transport=_Bridge(self), base_url=BASE, timeout=60)
        self.server: uvicorn.Server | None = None
        if port is not None:
            self._serve(port)

    def _serve(self, port: int) -> None:
        # no log_level or log_config: uvicorn would set its loggers' levels for the whole test session
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, lifespan="off",
                                                    log_level=None, log_config=None, access_log=False))
        self._serving = asyncio.run_coroutine_threadsafe(self.server.serve(), self.loop)
        while not self.server.started:
            if self._serving.done():
                self._serving.result()  # raises what stopped it
                raise RuntimeError(f"uvicorn stopped before serving on port {port}")
            threading.Event().wait(0.01)
        self.url = f"http://127.0.0.1:{port}"
        self.v1 = f"{self.url}/v1"

    @property
    def state(self) -> Any:
        """The app's GatewayState (config, upstreams with their breakers, store)."""
        return self.app.state.gateway

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        """Run a coroutine on the app's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def openai(self, api_key: str = "unused") -> OpenAI:
        """The official client, talking to this app without a socket."""
        return OpenAI(base_url=self.v1, api_key=api_key, max_retries=0,
                      http_client=httpx.Client(transport=_Bridge(self), timeout=60))

    def close(self) -> None:
        self.http.close()
        if self.server is not None:
            self.server.should_exit = True
            self._serving.result(timeout=30)
        try:
            self.run(self._lifespan.__aexit__(None, None, None))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()
