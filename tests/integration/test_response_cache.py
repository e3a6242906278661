"""The response cache end to end: the official openai client, real `crowd-gateway serve` processes (the memory
store, and a real redis-server), the scripted upstream counting every call it gets. Asking exactly the same
again costs nothing and calls no member; `cache: false`, another tenant, another sampling parameter or a call
that failed are asked again; a re-run batch and a re-run `crowd-gateway annotate` make zero member calls."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from gateway.cli import main
from tests.harness import Gateway, Upstream, member

MEMBERS = ["c1", "c2", "c3"]
KEYS_ENV = "CACHE_TEST_KEYS"
LABELS = ["positive", "negative"]


def config(upstream: Upstream, store: dict[str, Any]) -> dict[str, Any]:
    return {"gateway": {"api_keys_env": KEYS_ENV}, "store": store, "cache": {"enabled": True, "ttl_s": 3600},
            "batches": {"poll_s": 0.05},
            "members": [member(upstream, n, price=(1.0, 2.0)) for n in MEMBERS],
            "ensembles": [{"name": "crowd", "members": MEMBERS, "quorum": 2}]}


@pytest.fixture(scope="module", params=["memory", "redis"])
def gateway(request: pytest.FixtureRequest, upstream: Upstream, gateway_factory: Any) -> Gateway:
    env = {KEYS_ENV: "key-a,key-b"}
    if request.param == "redis":
        env["CROWD_GATEWAY_REDIS_URL"] = request.getfixturevalue("redis_url")
        return gateway_factory(config(upstream, {"backend": "redis"}), env=env)
    return gateway_factory(config(upstream, {"backend": "memory"}), env=env)


@pytest.fixture
def client(gateway: Gateway, upstream: Upstream) -> OpenAI:
    upstream.reset()
    for name in MEMBERS:
        upstream.script(name, keywords={"great": "positive", "awful": "negative"}, usage=[10, 1])
    return gateway.openai("key-a")


def calls(upstream: Upstream) -> int:
    return sum(upstream.calls(name)["calls"] for name in MEMBERS)


def ask(client: OpenAI, text: str, **extra: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="crowd", messages=[{"role": "user", "content": text}], extra_body={"labels": LABELS, **extra})


def unique(text: str) -> str:
    """A text no earlier test (nor the other store's run, with Redis kept between runs) has asked."""
    return f"{text} {time.time_ns()}"


def test_the_same_request_again_is_answered_from_the_cache_at_no_cost(client: OpenAI, upstream: Upstream) -> None:
    text = unique("a great film")
    first = ask(client, text)
    assert calls(upstream) == 3
    answer = first.parse()
    assert [v["cached"] for v in answer.model_extra["annotation"]["votes"]] == [False] * 3
    assert answer.usage.model_extra["cost_usd"] == pytest.approx(3 * (10 * 1 + 1 * 2) / 1e6)

    again = ask(client, text)
    assert calls(upstream) == 3  # no member was called
    cached = again.parse()
    votes = cached.model_extra["annotation"]["votes"]
    assert [(v["member"], v["label"], v["cached"], v["cost_usd"]) for v in votes] == [
        (name, "positive", True, 0) for name in MEMBERS]
    assert all(v["prompt_tokens"] == v["completion_tokens"] == 0 for v in votes)
    assert cached.choices[0].message.content == "positive"
    assert cached.model_extra["annotation"]["distribution"] == answer.model_extra["annotation"]["distribution"]
    assert cached.usage.model_extra["cost_usd"] == 0 and cached.usage.prompt_tokens == 0
    assert float(again.headers["x-crowd-cost-usd"]) == 0


def test_cache_false_another_tenant_or_other_sampling_asks_the_members(client: OpenAI, gateway: Gateway,
                                                                          upstream: Upstream) -> None:
    text = unique("an awful film")
    ask(client, text)
    assert calls(upstream) == 3
    fresh = ask(client, text, cache=False).parse()
    assert calls(upstream) == 6
    assert not any(v["cached"] for v in fresh.model_extra["annotation"]["votes"])
    assert fresh.usage.model_extra["cost_usd"] > 0

    other_tenant = ask(gateway.openai("key-b"), text).parse()  # key-a's votes are not key-b's
    assert calls(upstream) == 9 and not any(v["cached"] for v in other_tenant.model_extra["annotation"]["votes"])

    ask(client, text, temperature=0.7)  # another sampling parameter: another request
    assert calls(upstream) == 12
    assert upstream.calls("c1")["last"]["temperature"] == 0.7
    ask(client, text, temperature=0.7)
    assert calls(upstream) == 12


def test_a_failed_call_is_asked_again(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("c3", keywords={"great": "positive"}, fail=[500])
    text = unique("a great film")
    first = ask(client, text).parse()
    assert next(v for v in first.model_extra["annotation"]["votes"] if v["member"] == "c3")["label"] is None
    assert calls(upstream) == 3
    second = ask(client, text).parse()
    assert calls(upstream) == 4  # c3 only
    assert {v["member"]: v["cached"] for v in second.model_extra["annotation"]["votes"]} == {
        "c1": True, "c2": True, "c3": False}


def test_bad_cache_field_is_a_400(client: OpenAI, gateway: Gateway) -> None:
    r = gateway.post("/v1/chat/completions", headers={"Authorization": "Bearer key-a"},
                     json={"model": "crowd", "labels": LABELS, "cache": "sometimes",
                           "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "cache"


def run_batch(client: OpenAI, texts: list[str]) -> tuple[Any, list[dict[str, Any]]]:
    lines = [{"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "crowd", "labels": LABELS, "messages": [{"role": "user", "content": text}]}}
             for i, text in enumerate(texts)]
    file = client.files.create(file=("in.jsonl", io.BytesIO("\n".join(map(json.dumps, lines)).encode())),
                               purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 30
    while batch.status not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    out = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    return batch, out


def test_a_rerun_batch_makes_no_member_call(client: OpenAI, upstream: Upstream) -> None:
    texts = [unique(f"{'a great' if i % 2 else 'an awful'} film {i}") for i in range(8)]
    first, _ = run_batch(client, texts)
    assert calls(upstream) == 3 * 8 and first.usage.model_extra["cost_usd"] > 0
    second, out = run_batch(client, texts)
    assert calls(upstream) == 3 * 8
    assert second.usage.model_extra["cost_usd"] == 0
    votes = [v for line in out for v in line["response"]["body"]["annotation"]["votes"]]
    assert len(votes) == 3 * 8 and all(v["cached"] and v["cost_usd"] == 0 for v in votes)


def annotate(gateway: Gateway, source: Path, out: Path, *flags: str) -> list[dict[str, str]]:
    """`crowd-gateway annotate` as a user runs it (its main, in this process: the gateway is a real process)."""
    code = main(["annotate", str(source), "--labels", ",".join(LABELS), "--ensemble", "crowd", "--out", str(out),
                 "--gateway", gateway.url, "--api-key", "key-a", "--concurrency", "4", *flags])
    assert code == 0
    with out.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_rerun_annotate_job_costs_nothing_unless_no_cache(client: OpenAI, gateway: Gateway, upstream: Upstream,
                                                            tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    with source.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["id", "text"])
        writer.writeheader()
        writer.writerows({"id": f"r{i}", "text": unique(f"a great film {i}")} for i in range(10))
    first = annotate(gateway, source, tmp_path / "first.csv")
    assert calls(upstream) == 30 and all(float(r["crowd_cost_usd"]) > 0 for r in first)
    second = annotate(gateway, source, tmp_path / "second.csv")
    assert calls(upstream) == 30
    assert all(float(r["crowd_cost_usd"]) == 0 for r in second)
    assert all(v["cached"] for r in second for v in json.loads(r["crowd_votes"]))
    assert [r["crowd_label"] for r in second] == [r["crowd_label"] for r in first]
    annotate(gateway, source, tmp_path / "third.csv", "--no-cache")
    assert calls(upstream) == 60


def test_hits_and_misses_are_counted(client: OpenAI, gateway: Gateway) -> None:
    text = unique("a great film")
    ask(client, text)
    ask(client, text)
    metrics = httpx.get(f"{gateway.url}/metrics").text
    for outcome in ("hit", "miss"):
        assert f'crowd_gateway_cache_lookups_total{{member="c1",outcome="{outcome}"}}' in metrics
    saved = next(line for line in metrics.splitlines() if line.startswith('crowd_gateway_cache_saved_usd_total{member="c1"}'))
    assert float(saved.split()[-1]) > 0
