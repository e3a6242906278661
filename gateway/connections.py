"""Deadlines for what a client sends: a connection that idles or trickles its request is closed.

uvicorn closes a kept-alive connection `timeout_keep_alive` after its last answer, but has no deadline for a
request to arrive: a connection that never sends a byte, or sends its headers or body a few bytes at a time, is
held as long as the client likes (issue 12: 2,500 of them held for 88 s), and no ASGI middleware can help, since
the app runs only once the headers are in. This is uvicorn's httptools protocol plus one timer per connection:
the request's headers are due `header_timeout_s` after the connection opened (or after the first byte of a later
request on a kept-alive one), its body `body_timeout_s` after its headers. Past either, the connection is closed,
after a 408 in OpenAI's error shape when a request had begun and no answer has started. Total deadlines, not gaps
between reads: a byte every few seconds does not extend them. `cli.serve` installs it with the settings of
`gateway.connections`.

It is also where the gateway's own overload is refused: past the number of completion requests that keeps
the event loop within `gateway.max_loop_lag_ms` (gateway/loop_gate.py), a completion request is answered 429
from here, before any task or app runs and without reading its body, so a refusal costs a few percent of an
answer and the CPU stays with the work already admitted (gateway/admission.py has the rest of admission).
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any, Literal

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway import metrics
from gateway.errors import DEADLINE_PASSED, APIError
from gateway.loop_gate import GATE
from gateway.requestid import request_id

Stage = Literal["idle", "headers", "body"]
"""What a connection was waiting for when its deadline passed: a first request, a request's headers, its body."""
log = logging.getLogger("crowd_gateway")


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools) with a deadline for the request's headers and for its body."""

    def __init__(self, *args: Any, header_timeout_s: float, body_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self._deadline: asyncio.TimerHandle | None = None
        self._stage: Stage = "idle"

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("idle", self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a later request on a kept-alive connection: its headers are due from now
            self._arm("headers", self.header_timeout_s)
        else:  # the first request: its headers are due when the connection's first request was
            self._stage = "headers"

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm("body", self.body_timeout_s)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and not self.pipeline \
                and self.timeout_keep_alive_task is None and not self.transport.is_closing():
            # Answered before its body had all arrived (a 401, a 404): uvicorn armed the keep-alive timer when the
            # answer went out and cancelled it on the next byte of body, so nothing would ever close the connection.
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)

    def _start_asgi_task(self, cycle: Any, app: ASGIApp) -> None:
        """A completion request runs counted by the loop gate, or is refused at once when the gate is full."""
        scope = cycle.scope
        if scope["method"] == "POST" and scope["path"] in COMPLETION_PATHS:
            if not GATE.admit():
                self._refuse(cycle)
                return
            app = partial(_counted, app)
        super()._start_asgi_task(cycle, app)

    def _refuse(self, cycle: Any) -> None:
        """Answer 429 at once; uvicorn drops the body as it arrives, and keeps the connection when it may."""
        metrics.child(metrics.ADMISSION_REFUSED, "-", "gateway").inc()
        metrics.child(metrics.REQUESTS, "-", "overloaded").inc()
        cycle.response_started = cycle.response_complete = True
        self.transport.write(_overloaded(request_id(cycle.scope["headers"]), cycle.keep_alive))
        if cycle.keep_alive:
            self.on_response_complete()
        else:
            self.transport.close()

    def _arm(self, stage: Stage, seconds: float) -> None:
        self._disarm()
        self._stage = stage
        self._deadline = self.loop.call_later(seconds, self._expired, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, seconds: float) -> None:
        """Close the connection: after a 408 when a request had begun and no answer has started on it; a
        connection that never sent a byte is just closed (a client about to reuse it must not read a 408 as
        its answer). The app, if it is waiting for the body, reads a disconnect and nothing it sends goes out."""
        self._deadline = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return
        stage, cycle = self._stage, self.cycle
        if stage == "body":
            answer = cycle is not None and not cycle.response_started
        else:
            answer = stage == "headers" and (cycle is None or cycle.response_complete)
        if answer and not self.pipeline:
            self.transport.write(_timeout_response(stage, seconds))
        if stage == "body" and cycle is not None and not cycle.response_complete:
            cycle.scope[DEADLINE_PASSED] = stage  # type: ignore[literal-required]  # the app logs nothing more
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()
        metrics.child(metrics.CONNECTION_TIMEOUTS, stage).inc()
        what = "sent no request" if stage == "idle" else f"did not send its request {stage}"
        log.info("closed a connection from %s: it %s within %gs (gateway.connections)", _peer(self.client), what,
                 seconds)


COMPLETION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
"""What the loop-lag gate refuses: the work. Health, metrics, files and feedback are always answered."""
RETRY_AFTER_S = 1


async def _counted(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    try:
        await app(scope, receive, send)
    finally:
        GATE.leave()


def _overloaded(rid: bytes, keep_alive: bool) -> bytes:
    body = orjson.dumps(APIError(429, f"overloaded: the gateway is running {GATE.active} requests and its event loop "
                                      f"is {GATE.lag_s * 1000:.0f} ms late; retry after {RETRY_AFTER_S}s",
                                 code="overloaded").body())
    head = (b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"retry-after: %d\r\nx-request-id: %s\r\n" % (len(body), RETRY_AFTER_S, rid))
    return head + (b"\r\n" if keep_alive else b"connection: close\r\n\r\n") + body


def _timeout_response(stage: Stage, seconds: float) -> bytes:
    body = orjson.dumps(APIError(408, f"the request {stage} did not arrive within {seconds:g}s",
                                 code="request_timeout").body())
    head = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % len(body))
    return head + body


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown peer"
