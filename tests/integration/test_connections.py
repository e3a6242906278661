"""Client connections against a real `crowd-gateway serve` (issue 12): a connection that idles or trickles its
request is closed within `gateway.connections` while other clients are served, and a client that drops its
connection costs one short log line, never a traceback."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from openai import OpenAI

from tests.harness import Upstream, member, start_gateway

LIMIT_S = 1.0


@contextmanager
def served(upstream: Upstream, tmp_path: Path, **gateway: Any) -> Iterator[tuple[int, Callable[[], str]]]:
    """`crowd-gateway serve` on a free port, its log in a file; yields (port, a function returning the log so far)."""
    config = {"gateway": gateway, "members": [member(upstream, n) for n in ("conn-a", "conn-b")],
              "ensembles": [{"name": "crowd", "members": ["conn-a", "conn-b"], "quorum": 1}]}
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(config))
    log = tmp_path / "serve.log"
    gw = start_gateway(tmp_path / "gw.yaml", tmp_path, env={"CROWD_GATEWAY_API_KEYS": ""}, output=log)
    try:
        yield gw.port, log.read_text
    finally:
        gw.close()


def watch(port: int, first: bytes, trickle: bytes = b"", within: float = 10.0) -> tuple[float, bytes]:
    """Open a connection, send `first`, then `trickle` every 0.1 s until the server closes it; (seconds it stayed
    open, what the server sent)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(0.1)
        started = time.monotonic()
        s.sendall(first)
        got = b""
        while time.monotonic() - started < within:
            try:
                if trickle:
                    s.sendall(trickle)
                data = s.recv(65536)
                if not data:
                    break
                got += data
            except TimeoutError:
                continue
            except OSError:  # reset by the server while trickling
                break
        return time.monotonic() - started, got


def json_of(reply: bytes) -> dict[str, Any]:
    return orjson.loads(reply.partition(b"\r\n\r\n")[2])


def test_idle_and_trickling_connections_are_closed_while_other_clients_are_served(upstream: Upstream,
                                                                                    tmp_path: Path) -> None:
    upstream.script("conn-a", answer="positive")
    upstream.script("conn-b", answer="positive")
    limits = {"keep_alive_s": LIMIT_S, "header_timeout_s": LIMIT_S, "body_timeout_s": LIMIT_S}
    with served(upstream, tmp_path, connections=limits) as (port, _):
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        cases = {
            "idle": (b"", b""),
            "slow headers": (head, b"X"),
            "slow body": (head + b"Content-Length: 100000\r\n\r\n{", b" "),
            "kept alive": (b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n", b""),
            **{f"idle {i}": (b"", b"") for i in range(40)},
        }
        results: dict[str, tuple[float, bytes]] = {}
        threads = [threading.Thread(target=lambda n=name, c=case: results.__setitem__(n, watch(port, *c)))
                   for name, case in cases.items()]
        for t in threads:
            t.start()
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        served_s = []
        while any(t.is_alive() for t in threads):
            began = time.monotonic()
            r = client.chat.completions.create(model="crowd", messages=[{"role": "user", "content": "fine"}],
                                               extra_body={"labels": ["positive", "negative"]})
            assert r.choices[0].message.content == "positive"
            served_s.append(time.monotonic() - began)
        for t in threads:
            t.join()
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    for name, (held_s, _) in results.items():
        assert LIMIT_S * 0.9 <= held_s <= LIMIT_S + 1.5, (name, held_s)
    assert all(not got for name, (_, got) in results.items() if name.startswith("idle"))  # closed, no answer
    for name in ("slow headers", "slow body"):
        got = results[name][1]
        assert got.startswith(b"HTTP/1.1 408 ") and b"connection: close" in got
        assert json_of(got)["error"]["code"] == "request_timeout"
    assert results["kept alive"][1].startswith(b"HTTP/1.1 200 ")  # answered, then closed after keep_alive_s
    assert len(served_s) >= 3 and max(served_s) < 1.0  # the normal client was served all along
    assert 'crowd_gateway_connection_timeouts_total{stage="idle"} 41.0' in metrics
    assert 'crowd_gateway_connection_timeouts_total{stage="headers"} 1.0' in metrics
    assert 'crowd_gateway_connection_timeouts_total{stage="body"} 1.0' in metrics


def drop(port: int, body: bytes, *, partial: bool = False, reset: bool = False, read: int = 0) -> None:
    """Send a completion request (all of its body, or half), wait a little, read `read` bytes, and go away
    (with a TCP reset when `reset`)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        s.sendall(head + (body[:len(body) // 2] if partial else body))
        time.sleep(0.05)
        if read:
            s.recv(read)


def test_a_dropped_client_is_one_short_log_line_never_a_traceback(upstream: Upstream, tmp_path: Path) -> None:
    upstream.script("conn-a", answer="positive " * 2000, latency_ms=200)  # a long stream, a slow answer
    upstream.script("conn-b", answer="positive", latency_ms=200)
    messages = [{"role": "user", "content": "hi"}]
    ensemble = json.dumps({"model": "crowd", "labels": ["positive", "negative"], "messages": messages}).encode()
    bodies = {"ensemble": ensemble,
              "ensemble stream": json.dumps({**json.loads(ensemble), "stream": True}).encode(),
              "passthrough": json.dumps({"model": "conn-b", "messages": messages}).encode(),
              "passthrough stream": json.dumps({"model": "conn-a", "messages": messages, "stream": True}).encode()}
    rounds = 10
    with served(upstream, tmp_path) as (port, log):
        for _ in range(rounds):
            drop(port, ensemble, partial=True)  # went away before its body arrived
            drop(port, ensemble, partial=True, reset=True)
            for body in bodies.values():  # went away while its answer was being made or streamed
                drop(port, body, read=64)
        time.sleep(0.6)  # the abandoned answers finish
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        lines = [line for line in log().splitlines() if line.strip()]
    assert "Traceback" not in "\n".join(lines) and not any("Exception in ASGI" in line for line in lines)
    gone = [line for line in lines if "client went away" in line]
    assert len(gone) == 2 * rounds and all(len(line) < 160 for line in gone)
    assert f"crowd_gateway_client_disconnects_total {2 * rounds}.0" in metrics
    assert len(lines) < len(gone) + 12  # the startup lines, one line per body-less drop, nothing else


def test_a_connection_answered_before_its_body_arrived_is_still_closed_when_idle(upstream: Upstream,
                                                                                  tmp_path: Path) -> None:
    with served(upstream, tmp_path, connections={"keep_alive_s": LIMIT_S}) as (port, _):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v1/no-such-route HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\n")
            s.settimeout(5)
            answer = s.recv(65536)  # a 404 before the body was sent (its head and body may come in two reads)
            while not answer.endswith(b"}") and (more := s.recv(65536)):
                answer += more
            s.sendall(b"hello")
            sent = time.monotonic()
            s.settimeout(LIMIT_S + 5)
            rest = s.recv(65536)
            idle_s = time.monotonic() - sent
    assert answer.startswith(b"HTTP/1.1 404 ") and rest == b""
    assert LIMIT_S * 0.9 <= idle_s <= LIMIT_S + 1.5
