"""End to end: the official openai client -> a real gateway process -> real scripted upstream servers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import Gateway, Upstream

LABELS = ["positive", "negative", "neutral"]


def member(up: Upstream, name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "base_url": up.base_url(name), "model": f"{name}-model", "dialect": "vllm",
            "timeout_s": 2, "retries": 0, "price": {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}, **extra}


@pytest.fixture(scope="module")
def gateway(upstream: Upstream, gateway_factory: Any) -> Gateway:
    dead = {"name": "dead", "base_url": "http://127.0.0.1:9/v1", "model": "dead", "timeout_s": 1, "retries": 0}
    config = {
        "gateway": {"breaker": {"failure_threshold": 3, "reset_after_s": 1.0}, "max_body_bytes": 4096},
        "members": [member(upstream, n) for n in ("a", "b", "c", "slow", "down2", "dropper")]
        + [member(upstream, "flaky", retries=2), member(upstream, "brk"), dead,
           member(upstream, "llama", dialect="llamacpp"), member(upstream, "oai", dialect="openai")],
        "ensembles": [
            {"name": "crowd", "members": ["a", "b", "c"], "quorum": 2, "deadline_s": 5},
            {"name": "soft", "members": ["a", "b", "c"], "aggregator": "weighted", "quorum": 2},
            {"name": "withdead", "members": ["a", "b", "dead"], "quorum": 2},
            {"name": "alldown", "members": ["down2", "dropper"], "quorum": 1},
            {"name": "deadline", "members": ["a", "b", "slow"], "quorum": 2, "deadline_s": 0.5},
            {"name": "retry", "members": ["flaky"], "quorum": 1},
            {"name": "breaker", "members": ["brk"], "quorum": 1},
            {"name": "dialects", "members": ["a", "llama", "oai"], "quorum": 3},
        ],
        "tasks": [{"name": "sentiment", "labels": ["positive", "negative"],
                   "instructions": "Sentiment? Answer {labels}.",
                   "examples": [{"text": "I love it", "label": "positive"}], "prompt_style": "completion"}],
    }
    return gateway_factory(config)


@pytest.fixture
def client(gateway: Gateway, upstream: Upstream) -> Iterator[OpenAI]:
    upstream.reset()
    yield OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)


def ask(client: OpenAI, model: str = "crowd", labels: list[str] | None = None, **extra: Any) -> Any:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Great film!"}],
                                          extra_body={"labels": labels or LABELS, **extra})


def test_majority_label_distribution_votes_and_cost(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("a", answer="positive")
    upstream.script("b", answer=" Positive.")
    upstream.script("c", answer="negative", usage=[20, 3])
    r = ask(client)
    ann = r.model_extra["annotation"]
    assert r.choices[0].message.content == "positive"
    assert ann["label"] == "positive" and ann["aggregator"] == "majority"
    assert ann["distribution"] == pytest.approx({"positive": 2 / 3, "negative": 1 / 3, "neutral": 0.0}, abs=1e-5)
    assert ann["confidence"] == pytest.approx(2 / 3, abs=1e-5)
    assert {v["member"]: v["label"] for v in ann["votes"]} == {"a": "positive", "b": "positive", "c": "negative"}
    assert r.usage.prompt_tokens == 40 and r.usage.completion_tokens == 5
    # price: 1 USD per M input, 2 USD per M output
    assert r.usage.model_extra["cost_usd"] == pytest.approx((40 * 1 + 5 * 2) / 1e6)
    # each member got the constrained request of its dialect with the upstream model id
    sent = upstream.calls("a")["last"]
    assert sent["structured_outputs"] == {"choice": LABELS} and sent["model"] == "a-model"
    assert sent["logprobs"] is True and sent["top_logprobs"] == 5


def test_cost_and_confidence_headers(gateway: Gateway, upstream: Upstream) -> None:
    upstream.reset()
    for name in "abc":
        upstream.script(name, answer="neutral")
    r = httpx.post(f"{gateway.v1}/chat/completions", json={
        "model": "crowd", "labels": LABELS, "messages": [{"role": "user", "content": "ok"}]})
    assert r.status_code == 200
    assert float(r.headers["x-crowd-confidence"]) == pytest.approx(1.0)
    assert float(r.headers["x-crowd-cost-usd"]) == pytest.approx(3 * (10 + 2) / 1e6)


def test_tie_is_deterministic_and_visible(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("a", answer="negative")
    upstream.script("b", answer="positive")
    upstream.script("c", answer="gibberish")
    r = ask(client)
    ann = r.model_extra["annotation"]
    assert ann["distribution"]["positive"] == ann["distribution"]["negative"] == pytest.approx(0.5)
    assert ann["label"] == "positive"  # the earlier label of the set wins a tie
    bad = next(v for v in ann["votes"] if v["member"] == "c")
    assert bad["label"] is None and "matches no label" in bad["error"] and bad["raw"] == "gibberish"


def test_soft_votes_from_logprobs(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("a", answer="positive", logprobs={"pos": -0.105, "neg": -2.303})
    upstream.script("b", answer="negative", logprobs={"neg": -0.223, "pos": -1.609})
    upstream.script("c", answer="negative")
    r = ask(client, model="soft", labels=["positive", "negative"])
    ann = r.model_extra["annotation"]
    a = next(v for v in ann["votes"] if v["member"] == "a")
    assert a["probs"] == pytest.approx([0.9, 0.1], abs=1e-3)
    # linear pool: (0.9 + 0.2 + 0) / 3 for positive
    assert ann["distribution"]["positive"] == pytest.approx((0.9 + 0.2) / 3, abs=1e-3)
    assert ann["label"] == "negative" and ann["aggregator"] == "weighted"


def test_member_down_degrades_answer(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("a", answer="negative")
    upstream.script("b", answer="negative")
    r = ask(client, model="withdead")
    ann = r.model_extra["annotation"]
    assert ann["label"] == "negative"
    dead = next(v for v in ann["votes"] if v["member"] == "dead")
    assert dead["label"] is None and ("connection failed" in dead["error"] or "circuit open" in dead["error"])


def test_all_down_is_503_naming_members(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("down2", fail=[500] * 5)
    upstream.script("dropper", drop=True)
    with pytest.raises(openai.InternalServerError) as err:
        ask(client, model="alldown")
    assert err.value.status_code == 503
    message = err.value.body["message"]
    assert "down2" in message and "dropper" in message and "quorum" in message


def test_slow_member_cut_at_deadline(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("a", answer="positive")
    upstream.script("b", answer="positive")
    upstream.script("slow", answer="negative", latency_ms=1500)
    started = time.monotonic()
    r = ask(client, model="deadline")
    assert time.monotonic() - started < 1.2
    slow = next(v for v in r.model_extra["annotation"]["votes"] if v["member"] == "slow")
    assert slow["label"] is None and "deadline" in slow["error"]


def test_retry_after_503_then_success(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("flaky", answer="neutral", fail=[503, 429], retry_after="0.05")
    r = ask(client, model="retry")
    assert r.choices[0].message.content == "neutral"
    assert upstream.calls("flaky")["calls"] == 3


def test_circuit_opens_then_recovers(client: OpenAI, upstream: Upstream, gateway: Gateway) -> None:
    upstream.script("brk", fail=[500] * 3)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            ask(client, model="breaker")
    assert upstream.calls("brk")["calls"] == 3
    with pytest.raises(openai.InternalServerError) as err:
        ask(client, model="breaker")
    assert "circuit open" in err.value.body["message"]
    assert upstream.calls("brk")["calls"] == 3  # refused without calling the member
    assert 'crowd_gateway_circuit_state{member="brk"} 2.0' in httpx.get(f"{gateway.url}/metrics").text
    time.sleep(1.1)
    upstream.script("brk", answer="positive")
    r = ask(client, model="breaker")  # the half-open probe succeeds and closes the circuit
    assert r.choices[0].message.content == "positive"
    assert 'crowd_gateway_circuit_state{member="brk"} 0.0' in httpx.get(f"{gateway.url}/metrics").text


def test_dialects_shape_requests(client: OpenAI, upstream: Upstream) -> None:
    for name in ("a", "llama"):
        upstream.script(name, answer="negative")
    upstream.script("oai", answer='{"label": "negative"}')
    r = ask(client, model="dialects", labels=["positive", "negative"])
    assert [v["label"] for v in r.model_extra["annotation"]["votes"]] == ["negative"] * 3
    assert upstream.calls("llama")["last"]["grammar"] == 'root ::= "positive" | "negative"'
    fmt = upstream.calls("oai")["last"]["response_format"]
    assert fmt["json_schema"]["schema"]["properties"]["label"]["enum"] == ["positive", "negative"]


def test_label_set_from_response_format_returns_json(client: OpenAI, upstream: Upstream) -> None:
    for name in "abc":
        upstream.script(name, answer="negative")
    r = client.chat.completions.create(
        model="crowd", messages=[{"role": "user", "content": "meh"}],
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": {
            "type": "object", "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]}}}}})
    assert r.choices[0].message.content == '{"sentiment":"negative"}'


def test_label_set_from_structured_outputs_and_task(client: OpenAI, upstream: Upstream) -> None:
    for name in "abc":
        upstream.script(name, answer="b")
    r = client.chat.completions.create(model="crowd", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"structured_outputs": {"choice": ["a", "b"]}})
    assert r.choices[0].message.content == "b"
    for name in "abc":
        upstream.script(name, answer="positive")
    r = client.completions.create(model="crowd", prompt="What a lovely day", extra_body={"task": "sentiment"})
    assert r.choices[0].text == "positive"
    assert r.model_extra["annotation"]["schema"] == "sentiment"
    sent = upstream.calls("a")["last"]
    prompt = sent["prompt"]  # the task's few-shot completion template was used
    assert "Text: I love it\nLabel: positive" in prompt and prompt.endswith("Text: What a lovely day\nLabel:")
    # after "Label:" the answer may start with a space, as the model's tokens want
    assert sent["structured_outputs"]["choice"] == ["positive", "negative", " positive", " negative"]


def test_item_id_is_stable_or_client_given(client: OpenAI, upstream: Upstream) -> None:
    first = ask(client).model_extra["annotation"]["item_id"]
    assert ask(client).model_extra["annotation"]["item_id"] == first
    assert ask(client, item_id="row-17").model_extra["annotation"]["item_id"] == "row-17"
