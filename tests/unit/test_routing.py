"""Routing strategies in-process: the openai client -> the app over httpx.ASGITransport -> scripted upstream
servers. The queue-depth cache runs on an injected clock.

Each test has its own members, so the gateway's live member statistics (cost, latency, load) of
one test never steer another.
"""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.harness import Clock, Upstream, member
from tests.harness.inprocess import InProcessGateway

LABELS = ["positive", "negative"]


PRICES = {"cheap1": 1.0, "cheap2": 2.0, "mid": 5.0, "dear": 50.0}


def gateway_config(upstream: Upstream) -> dict[str, Any]:
    names = ("w1", "w2", "w3", "w4", "e1", "e2", "e3", "strong", "b1", "b2", "b3", "bstrong",
             "k1", "k2", "k3", "k4", "f1", "f2", "f3", "f4", "q1", "q2", "q3", "h1", "h2")
    prices = {f"{p}{i}": [1.0, 2.0, 5.0, 50.0][i - 1] for p in "wkf" for i in range(1, 5)}
    prices |= {"e1": 1.0, "e2": 2.0, "e3": 3.0, "strong": 40.0, "b1": 1.0, "b2": 2.0, "b3": 3.0, "bstrong": 40.0}
    groups = {"q1": "smol", "q2": "smol", "q3": "gemma", "h1": "hedged", "h2": "hedged"}
    members = [member(upstream, n, price=(prices.get(n, 1.0),) * 2, **({"group": groups[n]} if n in groups else {}))
               for n in names]
    cascade = {"start": 2, "target": 0.6}
    config = {
        "members": members,
        "ensembles": [
            {"name": "cascade", "router": "adaptive", "members": ["w4", "w3", "w2", "w1"], "routing": cascade},
            {"name": "escalating", "router": "adaptive", "members": ["e1", "e2", "e3"],
             "routing": {"start": 2, "target": 0.9}, "escalation": {"below": 0.9, "to": "strong"}},
            {"name": "capped", "router": "adaptive", "members": ["b1", "b2", "b3"],
             "routing": {"start": 2, "target": 0.9, "max_cost_usd": 0.00062},
             "escalation": {"below": 0.9, "to": "bstrong"}},
            {"name": "frugal", "router": "cost_aware", "aggregator": "dawid_skene", "members": ["k4", "k3", "k2", "k1"],
             "routing": {"target": 0.75}},
            {"name": "frugal_capped", "router": "cost_aware", "aggregator": "dawid_skene",
             "members": ["f4", "f3", "f2", "f1"],
             "routing": {"target": 0.75, "max_cost_usd": 0.0007}},
            {"name": "loaded", "router": "least_loaded", "members": ["q1", "q2", "q3"],
             "routing": {"load_cache_s": 1.0}},
            {"name": "hedge", "members": ["h1"], "routing": {"hedge": True, "hedge_min_samples": 5}},
            {"name": "everyone", "members": ["w1", "w2", "w3", "w4"]},
            {"name": "broke", "router": "adaptive", "members": ["w1", "w2"], "routing": {"max_cost_usd": 1e-9}},
        ],
    }
    return config


def ask(client: OpenAI, model: str) -> Any:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Great film!"}],
                                       extra_body={"labels": LABELS})
    return r.model_extra["annotation"]


def called(up: Upstream, *names: str) -> dict[str, int]:
    return {n: up.calls(n)["calls"] for n in names}


# Prompts of 10 tokens and answers of 1 token at 1 USD per M tokens: one call to w1 costs 11e-6 USD.

def test_adaptive_stops_when_the_cheapest_two_agree(client: OpenAI, upstream: Upstream) -> None:
    for n in ("w1", "w2", "w3", "w4"):
        upstream.script(n, answer="positive")
    ann = ask(client, "cascade")
    assert ann["stop_reason"] == "confident" and ann["calls"] == 2 and ann["label"] == "positive"
    # best reliability per dollar first: every member is equally reliable before a fit, so the cheapest
    assert called(upstream, "w1", "w2", "w3", "w4") == {"w1": 1, "w2": 1, "w3": 0, "w4": 0}


def test_adaptive_widens_in_cost_order_until_confident(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("w1", answer="positive")
    upstream.script("w2", answer="negative")
    upstream.script("w3", answer="positive")
    upstream.script("w4", answer="negative")
    ann = ask(client, "cascade")
    # 1 vs 1 is 0.5 < 0.6: widen by one (w3, the next cheapest); 2 vs 1 is 0.667 >= 0.6: stop
    assert ann["stop_reason"] == "confident" and ann["calls"] == 3 and ann["label"] == "positive"
    assert called(upstream, "w1", "w2", "w3", "w4") == {"w1": 1, "w2": 1, "w3": 1, "w4": 0}


def test_adaptive_exhausted_below_target_escalates(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("e1", answer="positive")
    upstream.script("e2", answer="negative")
    upstream.script("e3", answer="negative")
    upstream.script("strong", answer="positive")
    ann = ask(client, "escalating")
    # 2 vs 1 after the whole pool is 0.667 < 0.9: exhausted, so the escalation policy asks `strong`
    assert ann["stop_reason"] == "escalated" and ann["escalated"] is True and ann["calls"] == 4
    assert called(upstream, "e1", "e2", "e3", "strong") == {"e1": 1, "e2": 1, "e3": 1, "strong": 1}
    upstream.reset()
    for n in ("e1", "e2", "e3"):
        upstream.script(n, answer="negative")
    ann = ask(client, "escalating")
    assert ann["stop_reason"] == "confident" and ann["escalated"] is False
    assert called(upstream, "e3", "strong") == {"e3": 0, "strong": 0}


def test_budget_cap_stops_widening_and_escalation(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("b1", answer="positive")
    upstream.script("b2", answer="negative")
    upstream.script("b3", answer="positive")
    upstream.script("bstrong", answer="positive")
    r = client.chat.completions.with_raw_response.create(
        model="capped", messages=[{"role": "user", "content": "Great film!"}], extra_body={"labels": LABELS})
    ann = r.parse().model_extra["annotation"]
    # a first call's cost is estimated from the price (200-token prompt): b1 2.01e-4, b2 4.02e-4, b3 6.03e-4 USD.
    # The cap of 6.2e-4 affords b1 + b2; they spend 3.3e-5 in fact, which leaves 5.87e-4: not enough for b3,
    # nor for an escalation to a 40 USD/M member
    assert called(upstream, "b1", "b2", "b3", "bstrong") == {"b1": 1, "b2": 1, "b3": 0, "bstrong": 0}
    assert ann["stop_reason"] == "budget" and r.headers["x-crowd-stop-reason"] == "budget"
    assert r.parse().usage.model_extra["cost_usd"] <= 0.00062


def test_a_cap_below_any_member_is_a_clear_503(client: OpenAI, upstream: Upstream) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        ask(client, "broke")
    assert info.value.status_code == 503
    assert "per-item cap of $1e-09" in info.value.message and "quorum is 1" in info.value.message
    assert called(upstream, "w1", "w2") == {"w1": 0, "w2": 0}


def test_cost_aware_asks_the_cheapest_set_reaching_the_target(client: OpenAI, upstream: Upstream) -> None:
    for n in ("k1", "k2", "k3", "k4"):
        upstream.script(n, answer="negative")
    ann = ask(client, "frugal")
    # before a fit each member is 0.7 accurate: one or two reach 0.70, three reach 0.784 >= 0.75
    assert ann["stop_reason"] == "confident" and ann["calls"] == 3
    assert called(upstream, "k1", "k2", "k3", "k4") == {"k1": 1, "k2": 1, "k3": 1, "k4": 0}


def test_cost_aware_within_the_cap_takes_the_best_affordable_set(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("f1", answer="negative")
    upstream.script("f2", answer="positive")
    for n in ("f3", "f4"):
        upstream.script(n, answer="negative")
    ann = ask(client, "frugal_capped")
    # within 0.0007 USD the best set is f1 alone (two 0.7 workers are no better than one); its vote gives 0.7 < 0.75,
    # so f2 is added (4.02e-4 estimated, affordable); they disagree, and f3 (1e-3) is over the cap
    assert called(upstream, "f1", "f2", "f3", "f4") == {"f1": 1, "f2": 1, "f3": 0, "f4": 0}
    assert ann["stop_reason"] == "budget"


@pytest.fixture(scope="module")
def depth_clock(gateway: InProcessGateway) -> Clock:
    """The clock of the `loaded` ensemble's queue-depth cache (load_cache_s 1.0), advanced by hand; one for the
    module, as the cache keeps its entries from one test to the next."""
    clock = Clock()
    gateway.state.annotators["loaded"].depths.clock = clock
    return clock


def test_least_loaded_reads_vllm_queue_depth_and_refreshes_it(client: OpenAI, upstream: Upstream,
                                                              depth_clock: Clock) -> None:
    for n in ("q1", "q2", "q3"):
        upstream.script(n, answer="positive", queue=[0, 0])
    upstream.script("q1", answer="positive", queue=[7, 4])
    upstream.script("q2", answer="positive", queue=[0, 2])
    ann = ask(client, "loaded")
    # one call per worker: smol (q1 or q2) and gemma (q3); q2's queue (2) is shorter than q1's (11)
    assert ann["calls"] == 2 and called(upstream, "q1", "q2", "q3") == {"q1": 0, "q2": 1, "q3": 1}
    upstream.script("q1", answer="positive", queue=[0, 1])
    upstream.script("q2", answer="positive", queue=[9, 9])
    ask(client, "loaded")
    assert called(upstream, "q1", "q2") == {"q1": 0, "q2": 2}, "the cached depth is reused within load_cache_s"
    depth_clock.advance(1.1)
    ask(client, "loaded")
    assert called(upstream, "q1", "q2") == {"q1": 1, "q2": 2}, "after load_cache_s the new depth is read"


def test_least_loaded_retries_a_failed_worker_on_its_other_replica(client: OpenAI, upstream: Upstream,
                                                                   depth_clock: Clock) -> None:
    upstream.script("q1", answer="positive", queue=[0, 0], fail=[503])
    upstream.script("q2", answer="positive", queue=[5, 5])
    upstream.script("q3", answer="positive")
    depth_clock.advance(1.1)
    ann = ask(client, "loaded")
    assert called(upstream, "q1", "q2", "q3") == {"q1": 1, "q2": 1, "q3": 1}
    assert {v["member"] for v in ann["votes"] if v["label"]} == {"q2", "q3"}


def hedges_won(gateway: InProcessGateway, member: str) -> float:
    line = f'crowd_gateway_hedges_total{{member="{member}",outcome="won"}} '
    text = gateway.get("/metrics").text
    return next((float(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line)), 0.0)


def test_hedging_sends_a_duplicate_after_p95_and_cancels_the_loser(client: OpenAI, upstream: Upstream,
                                                                   gateway: InProcessGateway) -> None:
    upstream.script("h1", answer="positive", latency_ms=20)
    upstream.script("h2", answer="negative")
    for _ in range(8):  # h1's recent p95 becomes ~20 ms (5 samples needed before hedging starts)
        ask(client, "hedge")
    upstream.script("h1", answer="positive", latency_ms=3000)
    before, won_before = called(upstream, "h2")["h2"], hedges_won(gateway, "h2")
    cancelled_before = upstream.calls("h1")["cancelled"]  # a warm-up call past p95 may have been hedged too
    started = time.perf_counter()
    ann = ask(client, "hedge")
    elapsed = time.perf_counter() - started
    assert elapsed < 1.5, "the replica's answer came back without waiting for the slow call"
    assert ann["calls"] == 2 and [v["member"] for v in ann["votes"]] == ["h2"] and ann["label"] == "negative"
    assert called(upstream, "h2")["h2"] == before + 1
    deadline = time.monotonic() + 2
    while upstream.calls("h1")["cancelled"] == cancelled_before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.calls("h1")["cancelled"] == cancelled_before + 1, "the slow call was cancelled, not left running"
    assert hedges_won(gateway, "h2") == won_before + 1


def test_routing_metrics_by_ensemble(client: OpenAI, upstream: Upstream, gateway: InProcessGateway) -> None:
    for n in ("w1", "w2", "w3", "w4"):
        upstream.script(n, answer="positive")
    ask(client, "cascade")
    ask(client, "everyone")
    text = gateway.get("/metrics").text
    assert 'crowd_gateway_route_stops_total{ensemble="everyone",reason="exhausted"}' in text
    assert 'crowd_gateway_route_stops_total{ensemble="cascade",reason="confident"}' in text
    assert 'crowd_gateway_calls_per_item_bucket{ensemble="everyone",le="4.0"}' in text
    assert 'crowd_gateway_calls_per_item_count{ensemble="cascade"}' in text
    assert 'crowd_gateway_item_cost_usd_sum{ensemble="everyone"}' in text
