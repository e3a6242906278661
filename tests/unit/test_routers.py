"""Routing decisions on constructed member states: ranking, set choice, replicas, hedging, queue depth."""

from __future__ import annotations

import pytest

from ensembles.aggregators import get_aggregator
from gateway.config import ConfigError, parse_config
from gateway.upstream.queue_depth import parse_queue_depth
from routers import MemberState, RouteView, get_router
from routers.adaptive import AdaptiveKnobs, ranked
from routers.cost_aware import cheapest_set, combined_accuracy
from routers.hedging import hedge_plan
from routers.least_loaded import LeastLoadedKnobs


def view(states: list[MemberState], quorum: int = 1, **routing: object) -> RouteView:
    return RouteView(knobs=AdaptiveKnobs(**routing), quorum=quorum, members={s.name: s for s in states}, n_labels=2)


def test_combined_accuracy_of_independent_weighted_voters() -> None:
    assert combined_accuracy((0.7,), 2) == pytest.approx(0.7)
    assert combined_accuracy((0.7, 0.7), 2) == pytest.approx(0.7), "a 1-1 tie is a coin flip"
    assert combined_accuracy((0.7, 0.7, 0.7), 2) == pytest.approx(0.7 ** 3 + 3 * 0.7 ** 2 * 0.3)
    assert combined_accuracy((0.9, 0.6), 2) == pytest.approx(0.9), "the stronger voter outweighs the weaker"


def test_adaptive_ranks_by_reliability_per_dollar() -> None:
    states = [MemberState("cheap-weak", "a", cost_usd=1.0, reliability=0.7),
              MemberState("dear-strong", "b", cost_usd=2.0, reliability=0.9),
              MemberState("free-useless", "c", cost_usd=0.0, reliability=0.5),
              MemberState("free-good", "d", cost_usd=0.0, reliability=0.8)]
    assert [s.name for s in ranked(view(states))] == ["free-good", "dear-strong", "cheap-weak", "free-useless"]
    # price_weight 0: the most reliable first, whatever they cost (fewest calls)
    assert [s.name for s in ranked(view(states, price_weight=0))] == ["dear-strong", "free-good", "cheap-weak",
                                                                       "free-useless"]


def test_adaptive_first_wave_honours_start_quorum_and_budget() -> None:
    states = [MemberState(n, n, cost_usd=c) for n, c in (("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0))]
    router = get_router("adaptive")
    assert router.first(view(states, start=2)) == ["a", "b"]
    assert router.first(view(states, start=1, max_cost_usd=3.5)) == ["a"]
    assert router.first(view(states, start=3, max_cost_usd=4.5)) == ["a", "b"], "c would pass the cap"
    assert router.first(view(states, quorum=3, start=1)) == ["a", "b", "c"]


def test_adaptive_more_stops_or_widens() -> None:
    states = [MemberState(n, n, cost_usd=c) for n, c in (("a", 1.0), ("b", 2.0), ("c", 3.0))]
    router = get_router("adaptive")
    v = view(states, start=2, target=0.9, max_cost_usd=5.0)
    v.asked, v.valid_votes, v.confidence, v.spent_usd = ["a", "b"], 2, 0.95, 3.0
    assert router.more(v).stop == "confident"
    v.confidence = 0.5
    assert router.more(v).stop == "budget", "c costs 3 and only 2 are left"
    v.spent_usd = 1.0
    assert list(router.more(v).call) == ["c"]
    v.asked.append("c")
    assert router.more(v).stop == "exhausted"


def test_unusable_members_and_replica_groups() -> None:
    states = [MemberState("r1", "smol", queue_depth=5), MemberState("r2", "smol", queue_depth=1),
              MemberState("g1", "gemma", usable=False), MemberState("g2", "gemma", in_flight=3)]
    v = view(states)
    assert [s.name for s in v.open_groups()] == ["r2", "g2"]
    v.asked = ["r2"]
    assert [s.name for s in v.open_groups()] == ["g2"], "one replica per worker"
    assert get_router("least_loaded").first(view(states)) == ["r2", "g2"]
    assert get_router("fanout").first(view(states)) == ["r1", "r2", "g2"]
    assert get_router("passthrough").first(view(states)) == ["r1"]


def test_cheapest_set_within_budget() -> None:
    states = [MemberState("a", "a", cost_usd=1.0, reliability=0.7), MemberState("b", "b", cost_usd=1.0, reliability=0.7),
              MemberState("c", "c", cost_usd=1.5, reliability=0.7), MemberState("s", "s", cost_usd=2.0, reliability=0.95)]
    assert cheapest_set(states, 2, 0.9, float("inf")) == ["s"]
    assert cheapest_set(states, 2, 0.75, float("inf")) == ["s"], "s (2.0) is cheaper than a+b+c (3.5)"
    assert cheapest_set(states[:3], 2, 0.75, float("inf")) == ["a", "b", "c"]
    assert cheapest_set(states, 2, 0.99, 1.9) == ["a"], "nothing reaches 0.99 within 1.9: the best affordable set"


def test_hedge_plan_needs_samples_and_an_idle_replica() -> None:
    primary = MemberState("p", "g", p95_s=0.2, samples=30)
    replicas = [MemberState("busy", "g", in_flight=4), MemberState("idle", "g"), MemberState("other", "h")]
    assert hedge_plan(primary, replicas, 20, ["p"]) == (0.2, "idle")
    few = MemberState("p", "g", p95_s=0.2, samples=10)
    assert hedge_plan(few, replicas, 20, ["p"]) is None, "too few latencies on record"
    assert hedge_plan(primary, replicas, 20, ["p", "idle", "busy"]) is None, "replicas already asked"
    assert hedge_plan(MemberState("p", "g", samples=30), replicas, 20, ["p"]) is None, "no p95 yet"


VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="smol"} 3.0
vllm:num_requests_running{engine="1",model_name="smol"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="smol"} 7.0
vllm:num_requests_waiting{engine="1",model_name="smol"} 0.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="smol"} 1234.0
"""


def test_queue_depth_sums_waiting_and_running_over_engines() -> None:
    assert parse_queue_depth(VLLM_METRICS) == 11.0
    assert parse_queue_depth("# TYPE other gauge\nother 3\n") is None


def test_learned_accuracies_read_from_fitted_params() -> None:
    labels = ["pos", "neg"]
    assert get_aggregator("one_coin").accuracies({"skills": {"a": 0.8}, "prior": {"pos": 0.5, "neg": 0.5}},
                                                 labels)["a"] == pytest.approx(0.8, abs=1e-6)
    weighted = get_aggregator("weighted")
    assert weighted.accuracies({"weights": {"a": 1.3862943611}}, labels)["a"] == pytest.approx(0.8)
    ds = {"prior": {"pos": 0.75, "neg": 0.25},
          "confusion": {"a": {"pos": {"pos": 0.9, "neg": 0.1}, "neg": {"pos": 0.5, "neg": 0.5}}}}
    accuracy = get_aggregator("dawid_skene").accuracies(ds, labels)
    assert accuracy["a"] == pytest.approx(0.75 * 0.9 + 0.25 * 0.5)
    assert get_aggregator("majority").accuracies(None, labels) == {}


def test_routing_config_is_validated() -> None:
    base = {"members": [{"name": "a", "base_url": "http://x/v1", "model": "m"}]}
    with pytest.raises(ConfigError, match="routing.target"):
        parse_config({**base, "ensembles": [{"name": "e", "members": ["a"], "router": "adaptive",
                                             "routing": {"target": 1.5}}]})
    with pytest.raises(ConfigError, match="routing.strat"):
        parse_config({**base, "ensembles": [{"name": "e", "members": ["a"], "router": "adaptive",
                                             "routing": {"strat": 2}}]})
    with pytest.raises(ConfigError, match="routing.target.*router 'fanout'"):
        parse_config({**base, "ensembles": [{"name": "e", "members": ["a"], "routing": {"target": 0.9}}]})
    with pytest.raises(ConfigError, match="unknown router 'nope'"):
        parse_config({**base, "ensembles": [{"name": "e", "members": ["a"], "router": "nope"}]})
    config = parse_config({**base, "ensembles": [{"name": "e", "members": ["a"], "router": "least_loaded",
                                                  "routing": {"load_cache_s": 2, "hedge": True}}]})
    assert isinstance(config.ensembles[0].routing, LeastLoadedKnobs) and config.ensembles[0].routing.load_cache_s == 2


def test_a_cascade_does_not_stop_on_calibration_alone() -> None:
    """An isotonic map fitted on few gold items can send a 50/50 split to 1.0; the cascade still widens."""
    import asyncio

    from ensembles.votes import Vote
    from gateway.tools.replay import ReplayAnnotator
    from gateway.task import build_task

    config = parse_config({"members": [{"name": n, "base_url": "http://127.0.0.1:9/v1", "model": "m"} for n in "abc"],
                           "ensembles": [{"name": "e", "members": list("abc"), "router": "adaptive",
                                          "routing": {"start": 2, "target": 0.9}}]})
    recording = {"i": {"a": Vote("a", "pos", raw="pos"), "b": Vote("b", "neg", raw="neg"),
                       "c": Vote("c", "pos", raw="pos")}}
    annotator = ReplayAnnotator(config, config.ensembles[0], recording)
    task = build_task({"messages": [{"role": "user", "content": "ok"}], "labels": ["pos", "neg"], "item_id": "i"},
                      "chat", config)
    saturated = {"calibration": {"x": [0.5, 1.0], "y": [1.0, 1.0], "n": 20}}
    outcome = asyncio.run(annotator.run(task, saturated))
    assert outcome.calls == 3 and outcome.stop_reason == "exhausted"
    assert outcome.confidence == 1.0, "the reported confidence is still the calibrated one"


def test_fitted_reliability_is_shrunk_on_small_data() -> None:
    """Twenty flawless answers do not make a member infallible; thousands nearly do."""
    from ensembles.refit import refit

    labels = ["pos", "neg"]
    for n, low, high in ((20, 0.8, 0.9), (4000, 0.995, 1.0)):
        gold = {f"i{i}": labels[i % 2] for i in range(n)}
        votes = {i: [{"member": m, "label": g} for m in "abc"] for i, g in gold.items()}
        params = refit("one_coin", votes, labels, gold, 20)
        accuracy = get_aggregator("one_coin").accuracies(params, labels)
        assert all(low < a < high for a in accuracy.values()), (n, accuracy)
