"""Budgets and rate limits per tenant (issue 22, item 1), through the official `openai` client against real
gateway processes and the fake upstream: a rate-limited client backs off on 429 and succeeds; a spent budget is
a 429 `insufficient_quota` that the client does not retry; the `x-ratelimit-*` headers on every answer; two
replicas on one real redis-server share a tenant's limit; `/v1/usage` and Prometheus show the spend; batch lines
count and fail on a spent budget; a Redis outage fails open, without a traceback."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.harness import Gateway, Upstream, member
from tests.harness.batches import finish
from tests.harness.outages import OwnRedis, wait_for
from tests.integration.test_batches_durability import db_url
from tests.harness.inprocess import InProcessGateway
from tests.integration.test_outages import own_redis  # noqa: F401 - a fixture

KEYS = {"BUDGET_BURST_KEYS": "k-burst", "BUDGET_BROKE_KEYS": "k-broke", "BUDGET_METER_KEYS": "k-meter",
        "BUDGET_FREE_KEYS": "k-free", "BUDGET_TALLY_KEYS": "k-tally",
        "BUDGET_PACE_KEYS": "k-pace"}
TRIPLETS = [f"x-ratelimit-{what}-{kind}" for kind in ("requests", "tokens") for what in ("limit", "remaining", "reset")]
LABELS = {"labels": ["yes", "no"]}
HI = [{"role": "user", "content": "hello"}]


def config(up: Upstream, **gateway: Any) -> dict[str, Any]:
    return {"gateway": {"api_keys_env": None, **gateway},
            "batches": {"poll_s": 0.05},
            "members": [member(up, "solo"), member(up, "a"), member(up, "b")],
            "ensembles": [{"name": "crowd", "members": ["a", "b"], "quorum": 2}]}


def tenants() -> list[dict[str, Any]]:
    return [{"name": "burst", "keys_env": "BUDGET_BURST_KEYS", "limits": {"requests_per_minute": 60}},
            {"name": "broke", "keys_env": "BUDGET_BROKE_KEYS", "limits": {"usd_per_day": 1e-9}},
            {"name": "meter", "keys_env": "BUDGET_METER_KEYS",
             "limits": {"requests_per_minute": 1000, "tokens_per_minute": 100_000, "usd_per_month": 100}},
            {"name": "tally", "keys_env": "BUDGET_TALLY_KEYS", "limits": {"usd_per_month": 100}},
            {"name": "pace", "keys_env": "BUDGET_PACE_KEYS", "limits": {"requests_per_minute": 60}},
            {"name": "free", "keys_env": "BUDGET_FREE_KEYS"}]


def script(up: Upstream) -> None:
    up.reset()
    for name in ("solo", "a", "b"):
        up.script(name, answer="yes", usage=[40, 2])


@pytest.fixture(scope="module")
def gw(upstream: Upstream, gateway_factory: Any) -> Gateway:
    script(upstream)
    return gateway_factory(config(upstream, tenants=tenants()), env=KEYS)


@pytest.fixture
def up(upstream: Upstream) -> Iterator[Upstream]:
    script(upstream)
    yield upstream


class Seen:
    """Every HTTP request an openai client sent and every answer it received (its retries included)."""

    def __init__(self) -> None:
        self.sent: list[float] = []
        self.answered: list[float] = []
        self.statuses: list[int] = []
        self.headers: list[httpx.Headers] = []
        self.bodies: list[Any] = []

    def _request(self, _: httpx.Request) -> None:
        self.sent.append(time.monotonic())

    def _response(self, response: httpx.Response) -> None:
        self.answered.append(time.monotonic())
        self.statuses.append(response.status_code)
        self.headers.append(response.headers)
        self.bodies.append(json.loads(response.read()) if response.status_code >= 400 else None)

    def client(self, gw: Gateway, key: str, max_retries: int) -> OpenAI:
        http = httpx.Client(event_hooks={"request": [self._request], "response": [self._response]})
        return OpenAI(base_url=gw.v1, api_key=key, max_retries=max_retries, http_client=http)


def metric(gw: Gateway, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    text = gw.get("/metrics").text
    found = re.search(rf"^{re.escape(name)}{{{re.escape(want)}}} (\S+)$", text, re.M) if labels else \
        re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def usage(gw: Gateway, key: str) -> dict[str, Any]:
    answer = gw.get("/v1/usage", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_rate_limited_client_backs_off_on_retry_after_and_succeeds(gw: Gateway, up: Upstream) -> None:
    seen = Seen()
    client = seen.client(gw, "k-burst", max_retries=3)
    for _ in range(100):  # past the minute's burst of 60, a call meets a 429, waits, and is answered
        before = len(seen.statuses)
        assert client.chat.completions.create(model="solo", messages=HI).choices[0].message.content == "yes"
        if 429 in seen.statuses[before:]:
            break
    else:
        pytest.fail("100 requests passed a limit of 60 a minute")
    assert 55 <= seen.statuses.count(200) <= 62
    refused = seen.statuses.index(429)
    assert seen.statuses[refused:] in ([429, 200], [429, 429, 200])
    error, headers = seen.bodies[refused]["error"], seen.headers[refused]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert headers["x-ratelimit-remaining-requests"] == "0" and headers["retry-after"] == "1"
    wait_ms = float(headers["retry-after-ms"])
    assert 0 < wait_ms <= 1000
    # it waited what the gateway said (the SDK's own backoff would start at 0.5 s whatever the header)
    assert seen.sent[refused + 1] - seen.answered[refused] >= wait_ms / 1000 * 0.9
    assert metric(gw, "crowd_gateway_tenant_refused_total", tenant="burst", limit="requests") >= 1


def test_a_spent_budget_is_429_insufficient_quota_and_the_client_does_not_retry(gw: Gateway, up: Upstream) -> None:
    crossing = gw.post("/v1/chat/completions", headers={"Authorization": "Bearer k-broke"},
                       json={"model": "solo", "messages": HI})
    assert crossing.status_code in (200, 429)  # the answer that crosses the budget is given (unless already spent)
    refused_before = metric(gw, "crowd_gateway_tenant_refused_total", tenant="broke", limit="day")
    calls_before = up.calls("solo")["calls"]

    seen = Seen()
    with pytest.raises(openai.RateLimitError) as caught:
        seen.client(gw, "k-broke", max_retries=3).chat.completions.create(model="solo", messages=HI)
    assert caught.value.code == "insufficient_quota" and caught.value.status_code == 429
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert seen.statuses == [429]  # one request, no retry
    assert metric(gw, "crowd_gateway_tenant_refused_total", tenant="broke", limit="day") == refused_before + 1
    assert up.calls("solo")["calls"] == calls_before  # no member was called

    spent = usage(gw, "k-broke")["data"][0]
    assert spent["period"] == "day" and spent["amount"]["value"] > spent["budget"]["value"] == 1e-9


def test_every_answer_of_a_limited_tenant_carries_the_rate_limit_headers(gw: Gateway, up: Upstream) -> None:
    meter = OpenAI(base_url=gw.v1, api_key="k-meter", max_retries=0)
    answers = [meter.chat.completions.with_raw_response.create(model="solo", messages=HI),
               meter.chat.completions.with_raw_response.create(model="crowd", messages=HI, extra_body=LABELS),
               meter.completions.with_raw_response.create(model="solo", prompt="hello")]
    with meter.chat.completions.with_streaming_response.create(model="solo", messages=HI, stream=True) as stream:
        list(stream.iter_lines())
        answers.append(stream)
    errors = [gw.post("/v1/chat/completions", headers={"Authorization": "Bearer k-meter"},
                      json={"model": "nobody", "messages": HI}),
              gw.post("/v1/chat/completions", headers={"Authorization": "Bearer k-meter"},
                      json={"model": "crowd", "messages": "not a list"})]
    assert [e.status_code for e in errors] == [404, 400]
    for answer in [*answers, *errors]:
        assert all(name in answer.headers for name in TRIPLETS), dict(answer.headers)
        assert answer.headers["x-ratelimit-limit-requests"] == "1000"
        assert answer.headers["x-ratelimit-limit-tokens"] == "100000"
        assert re.fullmatch(r"(\d+h)?(\d+m)?\d+(\.\d+)?s|\d+ms", answer.headers["x-ratelimit-reset-requests"])
        assert 0 <= int(answer.headers["x-ratelimit-remaining-requests"]) < 1000

    free = OpenAI(base_url=gw.v1, api_key="k-free", max_retries=0)
    plain = free.chat.completions.with_raw_response.create(model="solo", messages=HI)
    assert not any(name.startswith("x-ratelimit") for name in plain.headers)
    assert usage(gw, "k-free") == {"object": "tenant.usage", "tenant": "free", "metered": False, "limits": None,
                                   "data": []}


def test_usage_and_prometheus_show_a_tenants_own_spend(gw: Gateway, up: Upstream) -> None:
    meter = OpenAI(base_url=gw.v1, api_key="k-tally", max_retries=0)  # a tenant no other test uses
    answers = [meter.chat.completions.create(model="crowd", messages=HI, extra_body=LABELS),
               meter.chat.completions.create(model="solo", messages=HI)]
    streamed = list(meter.chat.completions.create(model="solo", messages=HI, stream=True,
                                                  stream_options={"include_usage": True}))
    solo_cost = (40 * 1.0 + 2 * 2.0) / 1e6  # the fake upstream's usage at member() prices
    cost = answers[0].usage.model_extra["cost_usd"] + 2 * solo_cost
    tokens = answers[0].usage.total_tokens + answers[1].usage.total_tokens + streamed[-1].usage.total_tokens
    assert answers[0].usage.total_tokens == 84 and tokens == 84 + 42 + 42

    wait_for("the stream's spend", lambda: usage(gw, "k-tally")["data"][0]["amount"]["value"] >= cost * 0.999)
    body = usage(gw, "k-tally")
    assert body["tenant"] == "tally" and body["limits"]["usd_per_month"] == 100
    day, month = body["data"]
    assert (day["period"], month["period"]) == ("day", "month")
    for bucket in (day, month):
        assert bucket["num_model_requests"] == 3 and bucket["tokens"] == tokens
        assert bucket["amount"] == {"value": pytest.approx(cost), "currency": "usd"}
    assert month["budget"] == {"value": 100, "currency": "usd"} and day["budget"] is None
    assert day["start_time"] <= time.time() < day["end_time"] and month["start_time"] <= day["start_time"]
    assert metric(gw, "crowd_gateway_tenant_spend_usd_total", tenant="tally") == pytest.approx(cost)
    assert metric(gw, "crowd_gateway_tenant_tokens_total", tenant="tally") == tokens

    other = usage(gw, "k-burst")  # a key sees its own tenant only
    assert other["tenant"] == "burst" and other["limits"]["requests_per_minute"] == 60
    assert gw.get("/v1/usage", headers={"Authorization": "Bearer wrong"}).status_code == 401


def batch(gw: Gateway, key: str, n: int) -> list[dict[str, Any]]:
    """Run a batch of `n` ensemble lines as `key`: every result line, in input order."""
    client = OpenAI(base_url=gw.v1, api_key=key, max_retries=0)
    lines = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "crowd", "messages": [{"role": "user", "content": f"item {i}"}], **LABELS}}
             for i in range(n)]
    raw = "\n".join(json.dumps(line) for line in lines).encode()
    file = client.files.create(file=("items.jsonl", io.BytesIO(raw)), purpose="batch")
    done = finish(client, client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                                completion_window="24h").id)
    results = [json.loads(line) for file_id in (done.output_file_id, done.error_file_id) if file_id
               for line in client.files.content(file_id).text.splitlines()]
    return sorted(results, key=lambda r: int(r["custom_id"].split("-")[1]))


def test_batch_lines_wait_for_their_tenants_rate_instead_of_failing(gw: Gateway, up: Upstream) -> None:
    for _ in range(100):  # spend the minute's burst: from here on one request a second
        if gw.post("/v1/chat/completions", headers={"Authorization": "Bearer k-pace"},
                   json={"model": "solo", "messages": HI}).status_code == 429:
            break
    started = time.monotonic()
    results = batch(gw, "k-pace", 2)
    assert [r["response"]["status_code"] for r in results] == [200, 200]
    assert time.monotonic() - started >= 1.0  # paced: the two lines waited for their turn


def test_batches_count_toward_budgets_and_a_spent_one_fails_their_lines(gw: Gateway, up: Upstream) -> None:
    before = usage(gw, "k-meter")["data"][0]
    results = batch(gw, "k-meter", 3)
    assert [r["response"]["status_code"] for r in results] == [200] * 3
    after = usage(gw, "k-meter")["data"][0]
    assert after["num_model_requests"] == before["num_model_requests"] + 3
    spent = sum(r["response"]["body"]["usage"]["cost_usd"] for r in results)
    assert after["amount"]["value"] == pytest.approx(before["amount"]["value"] + spent)

    spend = gw.post("/v1/chat/completions", headers={"Authorization": "Bearer k-broke"},
                    json={"model": "solo", "messages": HI})
    assert spend.status_code in (200, 429)  # 429: an earlier test spent the budget already
    calls_before = up.calls("a")["calls"]
    failed = batch(gw, "k-broke", 3)
    assert [r["response"]["status_code"] for r in failed] == [429] * 3
    assert {r["response"]["body"]["error"]["code"] for r in failed} == {"insufficient_quota"}
    assert up.calls("a")["calls"] == calls_before


def test_two_replicas_on_one_redis_share_a_tenants_limit_and_spend(up: Upstream, redis_url: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Two apps in this process (the store is the point, as in test_redis_replicas.py), one redis-server."""
    shared = [{"name": "shared", "keys_env": "BUDGET_SHARED_KEYS",
               "limits": {"requests_per_minute": 4, "usd_per_month": 50}}]
    monkeypatch.setenv("BUDGET_SHARED_KEYS", "k-shared")
    monkeypatch.setenv("CROWD_GATEWAY_REDIS_URL", db_url(redis_url, 7))
    cfg = {**config(up, tenants=shared), "store": {"backend": "redis"}}
    one, two = InProcessGateway(cfg), InProcessGateway(cfg)
    try:
        clients = [g.openai("k-shared") for g in (one, two, one, two)]
        remaining = [c.chat.completions.with_raw_response.create(model="solo", messages=HI)
                     .headers["x-ratelimit-remaining-requests"] for c in clients]
        assert remaining == ["3", "2", "1", "0"]
        for gw in (one, two):
            with pytest.raises(openai.RateLimitError) as caught:
                gw.openai("k-shared").chat.completions.create(model="solo", messages=HI)
            assert caught.value.code == "rate_limit_exceeded"
        month = two.get("/v1/usage", headers={"Authorization": "Bearer k-shared"}).json()["data"][1]
        assert month["num_model_requests"] == 4 and month["amount"]["value"] == pytest.approx(4 * 44e-6)
    finally:
        one.close()
        two.close()


def test_a_store_outage_fails_open_without_a_traceback(upstream: Upstream, gateway_factory: Any,
                                                       own_redis: OwnRedis, tmp_path: Path) -> None:
    script(upstream)
    limited = [{"name": "meter", "keys_env": "BUDGET_METER_KEYS", "limits": {"requests_per_minute": 100}}]
    cfg = {**config(upstream, tenants=limited), "store": {"backend": "redis", "socket_timeout_s": 0.5}}
    log = tmp_path / "gateway.log"
    gw = gateway_factory(cfg, env={**KEYS, "CROWD_GATEWAY_REDIS_URL": own_redis.url}, output=log)
    meter = OpenAI(base_url=gw.v1, api_key="k-meter", max_retries=0)
    assert "x-ratelimit-remaining-requests" in meter.chat.completions.with_raw_response.create(
        model="solo", messages=HI).headers

    own_redis.kill()
    for _ in range(3):  # answered unchecked: the limit cannot be read, the answer still can be given
        answer = meter.chat.completions.with_raw_response.create(model="solo", messages=HI)
        assert answer.parse().choices[0].message.content == "yes"
        assert "x-ratelimit-remaining-requests" not in answer.headers
    assert metric(gw, "crowd_gateway_limits_unchecked_total") == 3
    gone = gw.get("/v1/usage", headers={"Authorization": "Bearer k-meter"})
    assert gone.status_code == 503 and gone.json()["error"]["code"] == "store_unavailable"

    own_redis.restart()
    wait_for("limits checked again", lambda: "x-ratelimit-remaining-requests" in meter.chat.completions
             .with_raw_response.create(model="solo", messages=HI).headers)
    text = log.read_text()
    assert "Traceback" not in text and "store unavailable (limits)" in text
