"""Overload is refused early, over real HTTP (issue 20): what the members cannot answer within the deadline,
and what the gateway's own event loop has no room for, get 429 with Retry-After at once; nothing waits for
the deadline, no breaker opens.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import openai
import orjson
import pytest
import uvicorn

from gateway.app import create_app
from gateway.config import parse_config
from gateway.server.connections import DeadlineProtocol
from gateway.server.loop_gate import GATE
from tests.harness import Gateway, Upstream, free_port, member

BODY = {"labels": ["positive", "negative"], "messages": [{"role": "user", "content": "fine"}]}
SDK = {"messages": BODY["messages"], "extra_body": {"labels": BODY["labels"]}}


def test_what_the_members_cannot_answer_in_time_is_refused_at_once(upstream: Upstream, gateway_factory: Any) -> None:
    upstream.reset()
    for name in ("q1", "q2"):
        upstream.script(name, answer="positive", latency_ms=400)
    gw: Gateway = gateway_factory({
        "members": [member(upstream, n, max_concurrency=2) for n in ("q1", "q2")],
        "ensembles": [{"name": "queued", "members": ["q1", "q2"], "quorum": 2, "deadline_s": 2}]})
    client = gw.openai()
    client.chat.completions.create(model="queued", **SDK)  # the members' latency is now known

    def one(_: int) -> Any:
        try:
            return client.chat.completions.create(model="queued", **SDK)
        except openai.APIStatusError as exc:
            return exc

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(one, range(24)))
    refused = [a for a in answers if isinstance(a, openai.RateLimitError)]
    served = [a for a in answers if not isinstance(a, openai.APIStatusError)]
    assert len(refused) + len(served) == 24, [a for a in answers if isinstance(a, openai.APIStatusError)]
    assert refused and len(served) >= 2, "the members' queue takes what it can answer in time"
    error = refused[0]
    assert error.body["code"] == "overloaded" and "deadline" in error.body["message"]  # type: ignore[index]
    assert int(error.response.headers["retry-after"]) >= 1
    assert all(a.choices[0].message.content == "positive" for a in served)
    assert upstream.calls("q1")["cancelled"] == 0, "no call was cut at the deadline"
    metrics = gw.get("/metrics").text
    assert 'crowd_gateway_circuit_state{member="q1"} 0.0' in metrics
    assert 'crowd_gateway_admission_refused_total{ensemble="queued",limit="members"}' in metrics


@pytest.fixture
def served(upstream: Upstream) -> Iterator[int]:
    """The app served as `crowd-gateway serve` serves it (the deadline protocol, the greedy loop), in a thread of
    this process, so the test can fill the process's loop gate."""
    upstream.reset()
    upstream.script("fast", answer="positive")
    app = create_app(parse_config({"members": [member(upstream, "fast")],
                                   "ensembles": [{"name": "solo", "members": ["fast"]}]}))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level=None, log_config=None, access_log=False,
                            loop="gateway.server.listener:GreedyLoop",
                            http=partial(DeadlineProtocol, header_timeout_s=10, body_timeout_s=10))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn stopped before serving")
        threading.Event().wait(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def read_answer(conn: socket.socket) -> tuple[bytes, dict[bytes, bytes], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(b":", 1) for line in lines)}
    while len(body) < int(headers[b"content-length"]):
        body += conn.recv(65536)
    return status, headers, body


def test_with_the_loop_gate_full_a_completion_is_refused_before_the_app(served: int) -> None:
    body = orjson.dumps({"model": "solo", **BODY})
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
               b"x-request-id: load-test-1\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    GATE.limit, GATE.active = 4, 4  # four requests of the gateway's own work already fill the loop
    try:
        with socket.create_connection(("127.0.0.1", served), timeout=10) as conn:
            conn.sendall(request)
            status, headers, answer = read_answer(conn)
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")  # the same connection, kept alive
            health, _, _ = read_answer(conn)
    finally:
        GATE.limit, GATE.active = float("inf"), 0
    assert status == b"HTTP/1.1 429 Too Many Requests"
    assert headers[b"retry-after"] == b"1" and headers[b"x-request-id"] == b"load-test-1"
    error = orjson.loads(answer)["error"]
    assert error["code"] == "overloaded" and error["type"] == "rate_limit_error"
    assert health == b"HTTP/1.1 200 OK", "health is never refused, and the refused body did not break the connection"
    ok = httpx.post(f"http://127.0.0.1:{served}/v1/chat/completions", content=body,
                    headers={"Content-Type": "application/json"}, timeout=10)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "positive"
    assert GATE.active == 0, "an answered request leaves the gate"


def test_one_turn_accepts_every_waiting_connection() -> None:
    """libuv takes one connection per loop turn; a busy gateway's backlog then fills and clients time out."""
    from gateway.server.listener import GreedyLoop, Listener

    loop = GreedyLoop()
    made: list[object] = []

    class Counted(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.append(transport)

    async def scenario() -> tuple[int, int]:
        server = await loop.create_server(Counted, "127.0.0.1", 0, backlog=512)
        assert isinstance(server, Listener)
        port = server.sockets[0].getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
        pending = len(asyncio.all_tasks())
        server._accept()  # one readiness event
        accepted = len(asyncio.all_tasks()) - pending
        while len(made) < accepted:  # each accepted connection gets its protocol in a later turn
            await asyncio.sleep(0.01)
        for client in clients:
            client.close()
        server.close()
        return accepted, len(made)

    try:
        accepted, connected = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert accepted == 300 and connected == 300
