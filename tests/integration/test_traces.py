"""Traces end to end: a `crowd-gateway serve` process exporting over OTLP/HTTP (configured only by the standard
OTEL_* variables) to a real OTLP receiver in this test, the official openai client, the scripted upstream
recording each call's headers. One server span per request, joined to the client's trace; under it one span
per member vote with its member, outcome, tokens, cost and whether it came from the cache; each member got the
`traceparent` of its own span."""

from __future__ import annotations

import gzip
import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from openai import OpenAI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.harness import Gateway, Upstream, free_port, member, start_gateway, stop

MEMBERS = ["t1", "t2", "t3"]
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver (protobuf, as the SDK's exporter sends it): keeps every span it is sent."""

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.spans: list[Span] = []
        self.services: set[str] = set()
        """service.name of every resource that sent spans."""
        self.lock = threading.Lock()

    def wait_for(self, trace_id: str, count: int, timeout: float = 15.0) -> list[Span]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [s for s in self.spans if s.trace_id.hex() == trace_id]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{len(found)} of {count} spans of trace {trace_id} arrived")


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        receiver: Receiver = self.server  # type: ignore[assignment]
        with receiver.lock:
            receiver.spans += [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
            receiver.services |= {a.value.string_value for rs in request.resource_spans
                                  for a in rs.resource.attributes if a.key == "service.name"}
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver(free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def gateway(upstream: Upstream, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Stopped before the receiver (it exports its last spans as it stops)."""
    config = {"cache": {"enabled": True}, "batches": {"poll_s": 0.05},
              "members": [member(upstream, n, price=(1.0, 2.0)) for n in MEMBERS],
              "ensembles": [{"name": "crowd", "members": MEMBERS, "quorum": 2}]}
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_port}", "OTEL_BSP_SCHEDULE_DELAY": "50",
           "OTEL_SERVICE_NAME": "gateway-under-test"}
    served = start_gateway(config, tmp_path_factory.mktemp("traced"), env=env)
    yield served
    served.http.close()
    stop(served.proc)


@pytest.fixture
def client(gateway: Gateway, upstream: Upstream) -> OpenAI:
    upstream.reset()
    for name in MEMBERS:
        upstream.script(name, answer="positive", usage=[10, 1])
    return gateway.openai()


def attributes(span: Span) -> dict[str, Any]:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


def ask(client: OpenAI, trace_id: str, text: str) -> Any:
    parent = f"00-{trace_id}-00f067aa0ba902b7-01"
    return client.chat.completions.create(model="crowd", messages=[{"role": "user", "content": text}],
                                          extra_body={"labels": ["positive", "negative"]},
                                          extra_headers={"traceparent": parent})


def tree(receiver: Receiver, trace_id: str, members: int) -> tuple[Span, dict[str, Span]]:
    spans = receiver.wait_for(trace_id, members + 1)
    servers = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    assert len(servers) == 1, [s.name for s in spans]
    request = servers[0]
    votes = {attributes(s)["crowd.member"]: s for s in spans if s.name.startswith("member ")}
    assert len(spans) == members + 1 and len(votes) == members
    assert all(s.parent_span_id == request.span_id for s in votes.values())
    return request, votes


def test_one_request_span_with_a_child_per_member_and_the_traceparent_sent(client: OpenAI, receiver: Receiver,
                                                                           upstream: Upstream) -> None:
    upstream.script("t3", fail=[500])
    trace_id = CLIENT_TRACE[:-4] + "0001"
    answer = ask(client, trace_id, f"Great film {time.time_ns()}")
    request, votes = tree(receiver, trace_id, 3)
    assert receiver.services == {"gateway-under-test"}  # OTEL_SERVICE_NAME, read by the SDK
    assert request.parent_span_id == bytes.fromhex("00f067aa0ba902b7")  # joined the client's trace
    assert request.name == "POST /v1/chat/completions" and attributes(request)["url.path"] == "/v1/chat/completions"
    assert attributes(request)["http.response.status_code"] == 200
    said = attributes(request)
    assert said["crowd.ensemble"] == "crowd" and said["crowd.label"] == "positive" and said["crowd.votes"] == 3
    assert said["crowd.cost_usd"] == pytest.approx(answer.usage.model_extra["cost_usd"])
    for name in ("t1", "t2"):
        seen = attributes(votes[name])
        assert votes[name].kind == Span.SPAN_KIND_CLIENT
        assert seen["crowd.outcome"] == "ok" and seen["crowd.cached"] is False and seen["crowd.label"] == "positive"
        assert seen["gen_ai.usage.input_tokens"] == 10 and seen["gen_ai.usage.output_tokens"] == 1
        assert seen["crowd.cost_usd"] == pytest.approx((10 * 1 + 1 * 2) / 1e6)
    failed = votes["t3"]
    assert attributes(failed)["crowd.outcome"] == "http" and failed.status.code == failed.status.STATUS_CODE_ERROR
    for name in MEMBERS:  # each member's call carried its own span's context
        sent = {k.lower(): v for k, v in upstream.calls(name)["headers"].items()}["traceparent"]
        assert sent == f"00-{trace_id}-{votes[name].span_id.hex()}-01"


def test_cached_votes_are_spans_without_a_call(client: OpenAI, receiver: Receiver, upstream: Upstream) -> None:
    text = f"Great film {time.time_ns()}"
    ask(client, CLIENT_TRACE[:-4] + "0002", text)
    trace_id = CLIENT_TRACE[:-4] + "0003"
    ask(client, trace_id, text)
    request, votes = tree(receiver, trace_id, 3)
    assert attributes(request)["crowd.votes_cached"] == 3
    assert all(attributes(s)["crowd.cached"] is True and attributes(s)["crowd.cost_usd"] == 0 for s in votes.values())
    assert sum(upstream.calls(name)["calls"] for name in MEMBERS) == 3  # the first request's only


def test_other_routes_get_a_server_span(client: OpenAI, gateway: Gateway, receiver: Receiver) -> None:
    trace_id = CLIENT_TRACE[:-4] + "0004"
    r = gateway.get("/v1/models", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    assert r.status_code == 200
    (span,) = receiver.wait_for(trace_id, 1)
    assert span.kind == Span.SPAN_KIND_SERVER and attributes(span)["url.path"] == "/v1/models"


def test_a_batch_line_is_the_request_span_of_its_votes(client: OpenAI, receiver: Receiver) -> None:
    line = {"custom_id": "traced-line", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "crowd", "labels": ["positive", "negative"],
                     "messages": [{"role": "user", "content": f"Great film {time.time_ns()}"}]}}
    file = client.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode())), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 30
    while batch.status != "completed" and time.monotonic() < deadline:
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    deadline = time.monotonic() + 15
    while not (lines := [s for s in receiver.spans if s.name == "batch line"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    (span,) = lines
    assert attributes(span)["crowd.batch.custom_id"] == "traced-line" and attributes(span)["crowd.votes"] == 3
    votes = receiver.wait_for(span.trace_id.hex(), 4)
    assert sorted(s.name for s in votes if s.parent_span_id == span.span_id) == [f"member {n}" for n in MEMBERS]
