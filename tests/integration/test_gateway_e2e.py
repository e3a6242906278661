"""End to end: the official openai client -> a real gateway process -> real scripted upstream servers.
Also what only a real process shows: streaming over HTTP, metrics merged across workers, startup refusing a
bad config. Upstream faults (deadline, retry, breaker) are exercised in-process in tests/unit/test_upstream_faults.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.harness import Gateway, Upstream, member, run_serve

LABELS = ["positive", "negative", "neutral"]
gateway_workers = 2  # one process pair for every test here, the metrics merge across workers included


def gateway_config(upstream: Upstream) -> dict[str, Any]:
    return {
        "gateway": {"max_body_bytes": 4096},
        "members": [member(upstream, n, timeout_s=2) for n in ("a", "b", "c")]
        + [member(upstream, "llama", dialect="llamacpp"), member(upstream, "oai", dialect="openai")],
        "ensembles": [
            {"name": "crowd", "members": ["a", "b", "c"], "quorum": 2, "deadline_s": 5},
            {"name": "soft", "members": ["a", "b", "c"], "aggregator": "weighted", "quorum": 2},
            {"name": "dialects", "members": ["a", "llama", "oai"], "quorum": 3},
        ],
        "tasks": [{"name": "sentiment", "labels": ["positive", "negative"],
                   "instructions": "Sentiment? Answer {labels}.",
                   "examples": [{"text": "I love it", "label": "positive"}], "prompt_style": "completion"}],
    }


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
    r = gateway.post("/v1/chat/completions", json={
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


def test_streaming_passthrough(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("a", answer="one two", usage=[5, 6])
    stream = client.chat.completions.create(model="a", messages=[{"role": "user", "content": "hi"}], stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two " * 3
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_stream_cut_mid_answer_raises(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("a", answer="a b c d", cut_stream=True)
    stream = client.chat.completions.create(model="a", messages=[{"role": "user", "content": "hi"}], stream=True)
    received = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 2 and "stream was cut" in str(err.value.message) + str(err.value.body)




def requests_ok(gateway: Gateway, ensemble: str) -> float:
    prefix = f'crowd_gateway_requests_total{{ensemble="{ensemble}",outcome="ok"}} '
    text = gateway.get("/metrics").text
    return next((float(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix)), 0.0)


def test_metrics_merge_across_workers(gateway: Gateway, upstream: Upstream) -> None:
    before = requests_ok(gateway, "a")
    for _ in range(20):  # new connections spread over both workers
        with httpx.Client() as http:
            http.post(f"{gateway.v1}/chat/completions", json={"model": "a", "messages": [{"role": "user", "content": "x"}]})
    assert requests_ok(gateway, "a") == before + 20.0


def test_invalid_config_stops_startup_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("members:\n  - name: a\n    base_url: ftp://x\n    model: m\n    timeout_s: -1\n")
    proc = run_serve(path)
    assert proc.returncode == 2
    assert "members.0.base_url" in proc.stderr and "members.0.timeout_s" in proc.stderr
    assert "Traceback" not in proc.stderr
