"""Issue 12's reliability rules, each tried with a fault-injecting upstream or a hostile client.

A member's reply, however odd, is at worst that member's failed vote; a client's body is at worst
its own 400; votes are stored or the answer says they were not; overload is refused early; keys
are tenants; item ids cannot reach another item's keys.
"""

from __future__ import annotations

import concurrent.futures
import io
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.harness import Gateway, Upstream, free_port, redis_argv, stop, wait_redis
from tests.harness.faults import ODD_LOGPROBS, ODD_REPLIES

FIVE = ["f1", "f2", "f3", "f4", "odd"]
def members(upstream: Upstream, names: list[str], **extra: Any) -> list[dict[str, Any]]:
    return [{"name": n, "base_url": upstream.base_url(n), "model": n, "retries": 0, **extra} for n in names]


@pytest.fixture(scope="module")
def gateway(upstream: Upstream, gateway_factory: Any) -> Gateway:
    config = {
        "gateway": {"max_labels": 100, "max_label_chars": 50, "breaker": {"failure_threshold": 1000}},
        "members": members(upstream, FIVE) + members(upstream, ["r429"]),
        "ensembles": [{"name": "five", "members": FIVE, "quorum": 3},
                      {"name": "limited", "members": ["f1", "r429"], "quorum": 1, "deadline_s": 3}],
    }
    return gateway_factory(config)


@pytest.fixture
def client(gateway: Gateway, upstream: Upstream) -> OpenAI:
    upstream.reset()
    for name in FIVE[:4]:
        upstream.script(name, answer="positive")
    return OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)


def label(client: OpenAI, model: str = "five", item_id: str | None = None, **extra: Any) -> Any:
    body: dict[str, Any] = {"labels": ["positive", "negative"], **extra}
    if item_id:
        body["item_id"] = item_id
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "fine"}],
                                          extra_body=body)


@pytest.mark.parametrize("raw", ODD_REPLIES)
def test_an_odd_reply_is_that_members_failed_vote(client: OpenAI, upstream: Upstream, gateway: Gateway,
                                                    raw: Any) -> None:
    upstream.script("odd", raw=raw)
    r = label(client)
    assert r.choices[0].message.content == "positive"
    odd = next(v for v in r.model_extra["annotation"]["votes"] if v["member"] == "odd")
    assert odd["label"] is None and odd["error"].startswith("malformed reply")


def test_odd_replies_open_the_members_breaker(upstream: Upstream, gateway_factory: Any) -> None:
    upstream.reset()
    for name in FIVE[:4]:
        upstream.script(name, answer="positive")
    upstream.script("odd", raw={"choices": [{"message": {"content": 3}}]})
    gw = gateway_factory({"gateway": {"breaker": {"failure_threshold": 3, "reset_after_s": 30}},
                          "members": members(upstream, FIVE), "ensembles": [{"name": "five", "members": FIVE}]})
    client = OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
    for _ in range(4):
        assert label(client).choices[0].message.content == "positive"
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'crowd_gateway_circuit_state{member="odd"} 2.0' in metrics
    assert 'crowd_gateway_upstream_requests_total{member="odd",outcome="malformed"}' in metrics


@pytest.mark.parametrize("logprobs", ODD_LOGPROBS)
def test_odd_logprobs_leave_the_hard_vote(client: OpenAI, upstream: Upstream, logprobs: Any) -> None:
    upstream.script("odd", raw={"choices": [{"message": {"content": "negative"}, "logprobs": logprobs}]})
    odd = next(v for v in label(client).model_extra["annotation"]["votes"] if v["member"] == "odd")
    assert odd["label"] == "negative" and odd["probs"] is None


def test_passthrough_relays_a_reply_with_bad_usage(gateway: Gateway, upstream: Upstream) -> None:
    upstream.reset()
    upstream.script("odd", raw={"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": "x"}})
    r = httpx.post(f"{gateway.v1}/chat/completions", json={"model": "odd", "messages": [{"role": "user", "content": "q"}]})
    assert r.status_code == 200 and r.headers["x-crowd-cost-usd"] == "0.0000000000"


@pytest.mark.parametrize("hint", ["garbage", "1.5s", "nan", "inf", "Wed, 99 Foo 2099 99:99:99 GMT"])
def test_unparseable_retry_after_is_ignored(client: OpenAI, upstream: Upstream, gateway: Gateway, hint: str) -> None:
    upstream.script("r429", fail=[429, 429, 429], retry_after=hint)
    started = time.monotonic()
    r = label(client, model="limited")
    assert r.choices[0].message.content == "positive" and time.monotonic() - started < 2.5
    vote = next(v for v in r.model_extra["annotation"]["votes"] if v["member"] == "r429")
    assert vote["label"] is None and "429" in vote["error"]


def test_a_huge_label_list_is_refused_quickly(gateway: Gateway) -> None:
    labels = [f"label-{i}" for i in range(8000)] + ["label-7"]
    started = time.monotonic()
    r = httpx.post(f"{gateway.v1}/chat/completions", timeout=10,
                   json={"model": "five", "labels": labels, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "labels"
    assert time.monotonic() - started < 1.0
    long = httpx.post(f"{gateway.v1}/chat/completions",
                      json={"model": "five", "labels": ["a" * 51, "b"], "messages": [{"role": "user", "content": "x"}]})
    assert long.status_code == 400 and "max_label_chars" in long.json()["error"]["message"]


@pytest.mark.parametrize("body, param", [
    ({"response_format": {"type": "json_schema", "json_schema": "oops"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": [1]}}, "response_format.json_schema"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages"),
    ({"temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user"}]}, "messages.0"),
])
def test_bad_client_input_is_a_400(gateway: Gateway, body: dict[str, Any], param: str) -> None:
    full = {"model": "five", "labels": ["a", "b"], "messages": [{"role": "user", "content": "x"}], **body}
    if "response_format" in body:  # the label set would come from it
        del full["labels"]
    r = httpx.post(f"{gateway.v1}/chat/completions", json=full)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


@pytest.mark.parametrize("url", ["/v1/batches?limit=%C2%B2", "/v1/batches?limit=100000", "/v1/review?limit=abc",
                                 *(f"/v1/{route}?limit={'9' * 5000}" for route in ("batches", "files", "review"))])
def test_bad_query_parameters_are_openai_400s(gateway: Gateway, url: str) -> None:
    """Past 4,300 digits Python will not convert a string to an int: still the client's 400, never a 500."""
    r = httpx.get(gateway.url + url)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.json()["error"]["param"] == "limit"


def test_reasking_an_item_replaces_its_votes(client: OpenAI, gateway: Gateway) -> None:
    for _ in range(3):
        label(client, item_id="again-1")
    stored = httpx.get(f"{gateway.v1}/annotations/again-1").json()
    members_voted = [v["member"] for v in stored["votes"]]
    assert sorted(members_voted) == sorted(set(members_voted)) and len(members_voted) == len(FIVE)


def test_votes_that_cannot_be_stored_are_said_so(upstream: Upstream, gateway_factory: Any,
                                                  tmp_path: Path) -> None:
    """A Redis outage after startup: the label is still answered, and the answer says its votes were lost; the
    store routes answer 503 store_unavailable (not 500), and /readyz says the store is down."""
    upstream.reset()
    upstream.script("f1", answer="positive")
    port = free_port()
    redis = subprocess.Popen(redis_argv(port, tmp_path), stdout=subprocess.DEVNULL)
    try:
        wait_redis(port, redis)
        config = {"store": {"backend": "redis", "pool_timeout_s": 0.5}, "members": members(upstream, ["f1"]),
                  "ensembles": [{"name": "one", "members": ["f1"]}]}
        gw = gateway_factory(config, env={"CROWD_GATEWAY_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    finally:
        stop(redis)
    r = httpx.post(f"{gw.v1}/chat/completions", timeout=30, json={
        "model": "one", "labels": ["positive", "negative"], "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200 and r.json()["annotation"]["stored"] is False
    assert r.headers["x-crowd-votes-stored"] == "false"
    assert 'crowd_gateway_votes_not_stored_total{ensemble="one"} 1.0' in httpx.get(f"{gw.url}/metrics").text
    for path in ("/v1/review", "/v1/files", "/v1/batches", "/v1/files/file-x"):
        r = httpx.get(f"{gw.url}{path}", timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable", (path, r.text)
    r = httpx.post(f"{gw.v1}/annotations/feedback", timeout=30,
                   json={"item_id": "i", "label": "positive", "source": "gold", "labels": ["positive", "negative"]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
    ready = httpx.get(f"{gw.url}/readyz", timeout=30)
    assert ready.status_code == 503 and ready.json()["ready"] is False and ready.json()["store"] != "ok"


def test_item_ids_cannot_reach_another_items_keys(upstream: Upstream, gateway_factory: Any, redis_url: str) -> None:
    upstream.reset()
    for name in ("f1", "f2"):
        upstream.script(name, answer="positive")
    config = {"store": {"backend": "redis"}, "members": members(upstream, ["f1", "f2"]),
              "ensembles": [{"name": "two", "members": ["f1", "f2"]}]}
    gw = gateway_factory(config, env={"CROWD_GATEWAY_REDIS_URL": redis_url})
    client = OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
    label(client, model="two", item_id="victim")
    label(client, model="two", item_id="victim:votes")
    label(client, model="two", item_id="victim")
    victim = httpx.get(f"{gw.v1}/annotations/victim")
    assert victim.status_code == 200 and len(victim.json()["votes"]) == 2
    assert httpx.post(f"{gw.v1}/annotations/refit").status_code == 200


def test_keys_are_tenants(upstream: Upstream, gateway_factory: Any) -> None:
    upstream.reset()
    upstream.script("f1", answer="positive")
    config = {"gateway": {"tenants": [{"name": "team-a", "keys_env": "TEAM_A_KEYS"}]},
              "members": members(upstream, ["f1"]), "ensembles": [{"name": "one", "members": ["f1"]}]}
    gw = gateway_factory(config, env={"TEAM_A_KEYS": "a1,a2", "CROWD_GATEWAY_API_KEYS": "b1"})
    a1, a2, b = (OpenAI(base_url=gw.v1, api_key=k, max_retries=0) for k in ("a1", "a2", "b1"))
    line = ('{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "one", '
            '"labels": ["positive", "negative"], "messages": [{"role": "user", "content": "hi"}]}}\n')
    file = a1.files.create(file=("in.jsonl", io.BytesIO(line.encode())), purpose="batch")
    batch = a1.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    label(a1, model="one", item_id="secret-item")
    assert a2.files.retrieve(file.id).id == file.id, "keys of one tenant share its objects"
    for call in (lambda: b.files.retrieve(file.id), lambda: b.files.content(file.id),
                 lambda: b.batches.retrieve(batch.id), lambda: b.batches.cancel(batch.id),
                 lambda: b.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert b.batches.list().data == []
    auth = {"Authorization": "Bearer b1"}
    assert httpx.get(f"{gw.v1}/annotations/secret-item", headers=auth).status_code == 404
    gold = httpx.post(f"{gw.v1}/annotations/feedback", headers=auth,
                      json={"item_id": "secret-item", "label": "negative", "source": "gold"})
    assert gold.status_code == 404
    mine = httpx.get(f"{gw.v1}/annotations/secret-item", headers={"Authorization": "Bearer a2"})
    assert mine.status_code == 200 and mine.json()["item_id"] == "secret-item" and mine.json()["gold"] is None


def test_overload_is_refused_early_and_opens_no_breaker(upstream: Upstream, gateway_factory: Any) -> None:
    upstream.reset()
    upstream.script("f1", answer="positive", latency_ms=300)
    config = {"gateway": {"max_items_in_flight": 4}, "members": members(upstream, ["f1"]),
              "ensembles": [{"name": "slow", "members": ["f1"], "deadline_s": 5}]}
    gw = gateway_factory(config)

    def one(_: int) -> httpx.Response:
        return httpx.post(f"{gw.v1}/chat/completions", timeout=10, json={
            "model": "slow", "labels": ["positive", "negative"], "messages": [{"role": "user", "content": "x"}]})

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(16)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses.count(200) >= 4 and set(statuses) <= {200, 429}, statuses
    refused = [r for r in answers if r.status_code == 429]
    assert refused and all(r.headers["retry-after"] == "1" for r in refused)
    assert refused[0].json()["error"]["code"] == "overloaded"
    assert time.monotonic() - started < 3
    assert 'crowd_gateway_circuit_state{member="f1"} 0.0' in httpx.get(f"{gw.url}/metrics").text


def test_a_huge_reply_is_that_members_failed_vote(upstream: Upstream, gateway_factory: Any) -> None:
    upstream.reset()
    upstream.script("f1", answer="positive")
    upstream.script("big", raw={"choices": [{"message": {"content": "positive" + " " * 300_000}}]})
    gw = gateway_factory({"members": members(upstream, ["f1"]) + members(upstream, ["big"], max_reply_bytes=100_000),
                          "ensembles": [{"name": "two", "members": ["f1", "big"]}]})
    r = httpx.post(f"{gw.v1}/chat/completions", timeout=30, json={
        "model": "two", "labels": ["positive", "negative"], "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
    big = next(v for v in r.json()["annotation"]["votes"] if v["member"] == "big")
    assert big["label"] is None and big["error"] == "connection failed: ReplyTooLarge"
    assert "127.0.0.1" not in r.text, "no member host or port reaches the client"


def test_credentials_in_a_member_url_are_a_config_error() -> None:
    from gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="must not carry credentials"):
        parse_config({"members": [{"name": "m", "base_url": "https://user:secret@api.example/v1", "model": "x"}]})
