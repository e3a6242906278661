"""The gateway's HTTP protocol (gateway/server/connections.py) in this process, on uvicorn's own protocol and request/response
cycle with a transport that records each write: an answer of known length leaves in one write, while a streamed
answer's head, a `100 Continue` and a head whose body never comes still go out when they should; a request that
arrives in one read starts no deadline timer, one that arrives in pieces does until its last piece.
(tests/integration/test_connections.py has the deadlines themselves, against a real server.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from starlette.responses import Response, StreamingResponse
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.server import ServerState

from gateway.server.connections import DeadlineProtocol, OneWrite


class Recorder(asyncio.Transport):
    """A transport that keeps what is written to it, one entry per write call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)


def cycle(transport: Recorder, expect_100_continue: bool = False) -> RequestResponseCycle:
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
    made = RequestResponseCycle(scope=scope, transport=transport, flow=FlowControl(transport),  # type: ignore[arg-type]
                                logger=logging.getLogger("test"), access_logger=logging.getLogger("test"),
                                access_log=False, default_headers=[(b"server", b"uvicorn")],
                                message_event=asyncio.Event(), expect_100_continue=expect_100_continue,
                                keep_alive=True, on_response=lambda: None)
    made.transport = OneWrite(made)  # type: ignore[assignment]
    return made


async def answer(made: RequestResponseCycle, response: Response) -> None:
    await response(made.scope, made.receive, made.send)  # type: ignore[arg-type]


def test_an_answer_of_known_length_is_one_write() -> None:
    transport = Recorder()
    asyncio.run(answer(cycle(transport), Response(b'{"id":"x"}', media_type="application/json")))
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 10" in head
    assert body == b'{"id":"x"}'


def test_a_streamed_answer_sends_its_head_before_its_first_chunk() -> None:
    transport = Recorder()
    written_before_first_chunk: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        written_before_first_chunk.append(len(transport.writes))
        yield b"data: 1\n\n"
        yield b"data: [DONE]\n\n"

    asyncio.run(answer(cycle(transport), StreamingResponse(chunks(), media_type="text/event-stream")))
    assert written_before_first_chunk == [1]
    assert transport.writes[0].endswith(b"\r\n\r\n") and b"transfer-encoding: chunked" in transport.writes[0]
    assert b"".join(transport.writes[1:]).endswith(b"0\r\n\r\n")


def test_a_held_head_goes_out_when_the_connection_is_closed() -> None:
    transport = Recorder()
    made = cycle(transport)

    async def start_only() -> None:
        await made.send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        assert transport.writes == []  # held for the body
        made.transport.close()  # what uvicorn does when the app returns without its body

    asyncio.run(start_only())
    assert len(transport.writes) == 1 and transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.closed


def test_100_continue_goes_out_at_once() -> None:
    transport = Recorder()
    made = cycle(transport, expect_100_continue=True)

    async def read_then_answer() -> None:
        made.body, made.more_body = bytearray(b"{}"), False
        made.message_event.set()
        message = await made.receive()
        assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
        assert message["body"] == b"{}"  # type: ignore[typeddict-item]
        await answer(made, Response(b"ok"))

    asyncio.run(read_then_answer())
    assert len(transport.writes) == 2 and transport.writes[1].endswith(b"\r\n\r\nok")


async def _ok(scope: object, receive: object, send: object) -> None:
    await Response(b"ok")(scope, receive, send)  # type: ignore[arg-type]


def timers_of(*reads: bytes) -> list[asyncio.TimerHandle]:
    """The deadline timers a new connection starts while it receives `reads` (each a separate read), in order
    (uvicorn's keep-alive timer, started once an answer is out, is not one)."""
    loop = asyncio.new_event_loop()
    started: list[asyncio.TimerHandle] = []
    call_at = loop.call_at

    def counted(when: float, callback: object, *args: object, context: object = None) -> asyncio.TimerHandle:
        handle = call_at(when, callback, *args, context=context)  # type: ignore[arg-type]
        if getattr(callback, "__func__", None) is DeadlineProtocol._expired:
            started.append(handle)
        return handle

    loop.call_at = counted  # type: ignore[method-assign]
    config = Config(app=_ok, log_config=None)
    config.load()
    protocol = DeadlineProtocol(config=config, server_state=ServerState(), app_state={}, _loop=loop,
                                header_timeout_s=5.0, body_timeout_s=5.0)
    protocol.connection_made(Recorder())
    for data in reads:
        protocol.data_received(data)
    loop.run_until_complete(asyncio.sleep(0))  # the app answers what arrived whole
    pending = asyncio.all_tasks(loop)
    for task in pending:  # an app still waiting for its body
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending))
    loop.close()
    return started


def test_a_request_that_arrives_in_one_read_starts_no_timer() -> None:
    started = timers_of(b"POST /v1/files HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}")
    assert len(started) == 1 and started[0].cancelled()  # the connection's own: its first request was due


def test_a_request_in_pieces_has_a_deadline_until_its_last_piece() -> None:
    started = timers_of(b"POST /v1/files HTTP/1.1\r\nHost: gw\r\n", b"Content-Length: 2\r\n\r\n", b"{", b"}")
    assert len(started) == 2  # the headers were due with the connection's first request; then the body's
    first, body = started
    assert first.cancelled() and body.cancelled()
    assert body.when() > first.when()


def test_a_request_whose_body_is_late_keeps_its_body_deadline() -> None:
    started = timers_of(b"POST /v1/files HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{")
    assert [handle.cancelled() for handle in started] == [True, False]
