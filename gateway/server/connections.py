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
the event loop within `gateway.max_loop_lag_ms` (gateway/server/loop_gate.py), a completion request is answered 429
from here, before any task or app runs and without reading its body, so a refusal costs a few percent of an
answer and the CPU stays with the work already admitted (gateway/admission.py has the rest of admission).

An answer of known length leaves in one write (`OneWrite`): uvicorn writes the status line and headers, then the
body, each in its own system call, so the client's kernel gets two segments and the client often wakes twice.
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
from gateway.error_handlers import DEADLINE_PASSED
from gateway.errors import APIError
from gateway.server.loop_gate import GATE
from gateway.server.requestid import request_id

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
        self._due: float | None = None
        """When what the connection waits for is due (loop time), None when it waits for nothing; the timer follows
        it after each read (`_follow`), so a request that arrives whole in one read never starts one."""
        self._limit_s = 0.0
        self._armed_for: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect("idle", self.header_timeout_s)
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._due = None
        self._follow()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._due is None:  # a later request on a kept-alive connection: its headers are due from now
            self._expect("headers", self.header_timeout_s)
        else:  # the first request: its headers are due when the connection's first request was
            self._stage = "headers"

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._expect("body", self.body_timeout_s)

    def on_message_complete(self) -> None:
        self._due = None
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
        if scope["method"] != "HEAD":  # a HEAD answer has a length and no body to carry its head
            cycle.transport = OneWrite(cycle)
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

    def _expect(self, stage: Stage, seconds: float) -> None:
        self._stage = stage
        self._limit_s = seconds
        self._due = self.loop.time() + seconds

    def _follow(self) -> None:
        """Set the timer to `_due`: the parser's callbacks only note what is due, since they run within one read."""
        if self._armed_for == self._due:
            return
        if self._deadline is not None:
            self._deadline.cancel()
        self._armed_for = self._due
        self._deadline = None if self._due is None else self.loop.call_at(self._due, self._expired, self._limit_s)

    def _expired(self, seconds: float) -> None:
        """Close the connection: after a 408 when a request had begun and no answer has started on it; a
        connection that never sent a byte is just closed (a client about to reuse it must not read a 408 as
        its answer). The app, if it is waiting for the body, reads a disconnect and nothing it sends goes out."""
        self._deadline = self._due = self._armed_for = None
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


class OneWrite:
    """The connection as one request's answer writes to it: the head of an answer of known length is held until
    its body, and both go out in one write. A streamed answer (chunked) and anything before the answer started
    (`100 Continue`) go out at once; a head still held when the connection is closed goes out first."""

    __slots__ = ("_cycle", "_transport", "_head", "_headed")

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle
        self._transport: asyncio.Transport = cycle.transport
        self._head = b""
        self._headed = False

    def write(self, data: bytes) -> None:
        if self._head:
            data, self._head = self._head + data, b""
        elif not self._headed and self._cycle.response_started:  # uvicorn's first write once started: the head
            self._headed = True
            if self._cycle.chunked_encoding is False and self._cycle.expected_content_length:
                self._head = data  # the body is the app's next message
                return
        self._transport.write(data)

    def close(self) -> None:
        if self._head:
            self._transport.write(self._head)
            self._head = b""
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


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
