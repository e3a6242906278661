"""The prefix cache hit rate of the local pool's vLLM engines, read from /metrics as vLLM writes it: counters named
`vllm:prefix_cache_queries` and `vllm:prefix_cache_hits` (prompt tokens), one series per engine."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from gateway.tools.pool_status import PrefixCache, ServerStatus, format_status, parse_prefix_cache


def vllm_metrics(per_engine: dict[str, tuple[float, float]]) -> str:
    """/metrics text made the way vLLM makes it (prometheus_client counters labelled by engine and model)."""
    registry = CollectorRegistry()
    queries = Counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
                      ["engine", "model_name"], registry=registry)
    hits = Counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
                   ["engine", "model_name"], registry=registry)
    Gauge("vllm:num_requests_waiting", "Waiting requests.", ["engine"], registry=registry).labels("0").set(3)
    for engine, (asked, found) in per_engine.items():
        queries.labels(engine, "smol").inc(asked)
        hits.labels(engine, "smol").inc(found)
    return generate_latest(registry).decode()


def test_the_hit_rate_sums_every_engine_of_a_server() -> None:
    cache = parse_prefix_cache(vllm_metrics({"0": (1000, 900), "1": (1000, 500)}))
    assert cache == PrefixCache(queries=2000, hits=1400) and cache.hit_rate == 0.7
    assert cache.describe() == "70% of 2,000 prompt tokens"


def test_a_run_reads_its_own_share_and_a_server_without_counters_has_none() -> None:
    before = parse_prefix_cache(vllm_metrics({"0": (1000, 100)}))
    after = parse_prefix_cache(vllm_metrics({"0": (3000, 1900)}))
    assert after.since(before).hit_rate == 0.9
    assert parse_prefix_cache(vllm_metrics({})) is None
    assert PrefixCache(0, 0).hit_rate is None and PrefixCache(0, 0).describe() == "no prompts yet"


def test_pool_status_shows_the_hit_rate_of_ready_vllm_servers() -> None:
    rows = format_status([ServerStatus("vllm-smol", "vllm", "smol", 8101, "ready", 42, "/tmp/s.log",
                                       PrefixCache(4000, 3000)),
                          ServerStatus("llama", "llamacpp", "gemma", 8102, "stopped", None, None)]).splitlines()
    assert "PREFIX CACHE HITS" in rows[0]
    assert "75% of 4,000 prompt tokens" in rows[1] and rows[1].endswith("/tmp/s.log")
    assert rows[2].split()[-2:] == ["-", "-"]
