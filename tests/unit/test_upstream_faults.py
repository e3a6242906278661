"""Upstream faults, in-process: a dead member, every member down, a slow member cut at the deadline, retries after
503/429 with Retry-After, and the circuit breaker opening and recovering on an injected clock."""

from __future__ import annotations

import logging
import time
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.harness import Clock, Upstream, member
from tests.harness.inprocess import InProcessGateway

LABELS = ["positive", "negative", "neutral"]
RESET_AFTER_S = 30.0


def gateway_config(upstream: Upstream) -> dict[str, Any]:
    dead = {"name": "dead", "base_url": "http://127.0.0.1:9/v1", "model": "dead", "timeout_s": 1, "retries": 0}
    return {
        "gateway": {"breaker": {"failure_threshold": 3, "reset_after_s": RESET_AFTER_S}},
        "members": [member(upstream, n, timeout_s=2) for n in ("a", "b", "slow", "down2", "dropper", "brk", "base")]
        + [member(upstream, "flaky", timeout_s=2, retries=2), dead],
        "ensembles": [
            {"name": "withdead", "members": ["a", "b", "dead"], "quorum": 2},
            {"name": "alldown", "members": ["down2", "dropper"], "quorum": 1},
            {"name": "deadline", "members": ["a", "b", "slow"], "quorum": 2, "deadline_s": 0.5},
            {"name": "retry", "members": ["flaky"], "quorum": 1},
            {"name": "breaker", "members": ["brk"], "quorum": 1},
            {"name": "nochat", "members": ["a", "b", "base"], "quorum": 2},
        ],
    }


def ask(client: OpenAI, model: str) -> Any:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Great film!"}],
                                          extra_body={"labels": LABELS})


def test_member_down_degrades_answer(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("a", answer="negative")
    upstream.script("b", answer="negative")
    r = ask(client, "withdead")
    ann = r.model_extra["annotation"]
    assert ann["label"] == "negative"
    dead = next(v for v in ann["votes"] if v["member"] == "dead")
    assert dead["label"] is None and ("connection failed" in dead["error"] or "circuit open" in dead["error"])


def test_all_down_is_503_naming_members(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("down2", fail=[500] * 5)
    upstream.script("dropper", drop=True)
    with pytest.raises(openai.InternalServerError) as err:
        ask(client, "alldown")
    assert err.value.status_code == 503
    message = err.value.body["message"]
    assert "down2" in message and "dropper" in message and "quorum" in message


def test_slow_member_cut_at_deadline(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("a", answer="positive")
    upstream.script("b", answer="positive")
    upstream.script("slow", answer="negative", latency_ms=1500)
    started = time.monotonic()
    r = ask(client, "deadline")
    assert time.monotonic() - started < 1.2
    slow = next(v for v in r.model_extra["annotation"]["votes"] if v["member"] == "slow")
    assert slow["label"] is None and "deadline" in slow["error"]


def test_retry_after_503_then_success(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("flaky", answer="neutral", fail=[503, 429], retry_after="0.05")
    r = ask(client, "retry")
    assert r.choices[0].message.content == "neutral"
    assert upstream.calls("flaky")["calls"] == 3


def test_circuit_opens_then_recovers(client: OpenAI, upstream: Upstream, gateway: InProcessGateway) -> None:
    clock = Clock()
    gateway.state.upstreams.clients["brk"].breaker.clock = clock
    upstream.script("brk", fail=[500] * 3)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            ask(client, "breaker")
    assert upstream.calls("brk")["calls"] == 3
    with pytest.raises(openai.InternalServerError) as err:
        ask(client, "breaker")
    assert "circuit open" in err.value.body["message"]
    assert upstream.calls("brk")["calls"] == 3  # refused without calling the member
    assert 'crowd_gateway_circuit_state{member="brk"} 2.0' in gateway.get("/metrics").text
    clock.advance(RESET_AFTER_S - 0.1)
    with pytest.raises(openai.InternalServerError, match="circuit open"):
        ask(client, "breaker")  # still open just before reset_after_s
    clock.advance(0.1)
    upstream.script("brk", answer="positive")
    r = ask(client, "breaker")  # the half-open probe succeeds and closes the circuit
    assert r.choices[0].message.content == "positive"
    assert 'crowd_gateway_circuit_state{member="brk"} 0.0' in gateway.get("/metrics").text


def test_a_member_refusing_every_call_of_a_kind_is_logged_once_and_unhealthy(
        client: OpenAI, upstream: Upstream, gateway: InProcessGateway, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 23: a base model without a chat template answers each chat call with 400; the votes of the others still
    meet the quorum. The refusals are one log line (member, path, the upstream's message), and the member is
    unhealthy in /readyz (with the reason) and in crowd_gateway_member_healthy, though its server's probe passes."""
    upstream.script("a", answer="positive")
    upstream.script("b", answer="positive")
    upstream.script("base", fail=[400] * 8)
    assert gateway.get("/readyz").json()["members"]["base"] is True
    with caplog.at_level(logging.WARNING, logger="crowd_gateway.upstream"):
        for _ in range(8):
            ann = ask(client, "nochat").model_extra["annotation"]
            assert ann["label"] == "positive"
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refused == ["member base refused a call to /chat/completions: HTTP 400: scripted failure 400"], refused
    ready = gateway.get("/readyz").json()
    assert ready["members"]["base"] is False and ready["members"]["a"] is True
    assert ready["problems"] == {"base": "refused its last 8 calls to /chat/completions (HTTP 400: scripted failure 400)"}
    assert "crowd_gateway_member_healthy{member=\"base\"} 0.0" in gateway.get("/metrics").text
    ask(client, "nochat")  # the member answers again: healthy again
    assert gateway.get("/readyz").json()["members"]["base"] is True
