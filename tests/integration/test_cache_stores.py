"""The response cache's stores, each on its own: this process's memory and a real redis-server. A stored vote
expires after its TTL, one tenant's vote never answers another's, a failed call is never kept, and a store that
cannot be reached is no cache (the caller asks the member) with one log line for the outage, not one per call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis

from ensembles.votes import Vote
from gateway.config import CacheSettings, StoreSettings, parse_config
from gateway.response_cache import ResponseCache
from gateway.store import redis_client
from gateway.store.cache import CacheStore, MemoryCacheStore
from gateway.store.cache_redis import RedisCacheStore
from gateway.store.health import StoreHealth
from gateway.task import build_task
from tests.harness import Clock, free_port

CONFIG = parse_config({"members": [{"name": "m", "base_url": "http://127.0.0.1:9/v1", "model": "m-model"},
                                   {"name": "n", "base_url": "http://127.0.0.1:9/v1", "model": "m-model"}]})
MEMBER, OTHER = CONFIG.members
TASK = build_task({"messages": [{"role": "user", "content": "Great film!"}], "labels": ["positive", "negative"]},
                  "chat", CONFIG)
BODY = {"model": "m-model", "messages": [{"role": "user", "content": "Great film!"}], "temperature": 0}
VOTE = Vote(member="m", label="positive", raw="positive", probs=(0.9, 0.1), prompt_tokens=10, completion_tokens=1,
            cost_usd=0.25)
Opened = Callable[[], Any]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture(params=["memory", "redis"])
def opened(request: pytest.FixtureRequest) -> Opened:
    """An async context manager opening a fresh store of the parametrised kind (Redis: an empty database)."""
    if request.param == "memory":
        @asynccontextmanager
        async def memory() -> AsyncIterator[CacheStore]:
            yield MemoryCacheStore(1000)
        return memory
    url = request.getfixturevalue("redis_url")

    @asynccontextmanager
    async def redis() -> AsyncIterator[CacheStore]:
        client = aioredis.Redis.from_url(url)
        await client.flushdb()
        try:
            yield RedisCacheStore(client)
        finally:
            await client.aclose()
    return redis


def cache_over(store: CacheStore, ttl_s: float = 60.0) -> ResponseCache:
    async def ping() -> None:
        return None
    return ResponseCache(store, CacheSettings(ttl_s=ttl_s), StoreHealth(ping))


def test_a_kept_vote_comes_back_cached_until_its_ttl_passes(opened: Opened) -> None:
    async def scenario() -> tuple[Vote | None, Vote | None]:
        async with opened() as store:
            cache = cache_over(store, ttl_s=0.2)
            key = cache.key("default", MEMBER, "/chat/completions", BODY, False, TASK)
            await cache.keep(key, VOTE)
            hit = await cache.lookup(key, "m")
            await asyncio.sleep(0.3)
            return hit, await cache.lookup(key, "m")

    hit, expired = run(scenario())
    assert hit is not None and hit.cached and hit.label == "positive" and hit.probs == (0.9, 0.1)
    assert hit.cost_usd == 0 and hit.prompt_tokens == hit.completion_tokens == 0 and hit.raw == "positive"
    assert expired is None


def test_one_tenants_vote_never_answers_another(opened: Opened) -> None:
    async def scenario() -> dict[str, Vote | None]:
        async with opened() as store:
            cache = cache_over(store)
            await cache.keep(cache.key("team-a", MEMBER, "/chat/completions", BODY, False, TASK), VOTE)
            return {tenant: await cache.lookup(cache.key(tenant, MEMBER, "/chat/completions", BODY, False, TASK), "m")
                    for tenant in ("team-a", "team-b", "default")}

    found = run(scenario())
    assert found["team-a"] is not None and found["team-a"].cached
    assert found["team-b"] is None and found["default"] is None


def test_the_key_is_every_part_of_the_request(opened: Opened) -> None:
    """Another member, sampling parameter, prompt, label set or pass is another key: only exact matches answer."""
    other_labels = build_task({"messages": BODY["messages"], "labels": ["Positive", "Negative"]}, "chat", CONFIG)
    variants = [(OTHER, BODY, False, TASK), (MEMBER, {**BODY, "temperature": 0.7}, False, TASK),
                (MEMBER, {**BODY, "seed": 3}, False, TASK), (MEMBER, {**BODY, "messages": []}, False, TASK),
                (MEMBER, BODY, True, TASK), (MEMBER, BODY, False, other_labels)]

    async def scenario() -> list[Vote | None]:
        async with opened() as store:
            cache = cache_over(store)
            await cache.keep(cache.key("default", MEMBER, "/chat/completions", BODY, False, TASK), VOTE)
            same = await cache.lookup(cache.key("default", MEMBER, "/chat/completions", dict(reversed(BODY.items())),
                                                False, TASK), "m")
            return [same] + [await cache.lookup(cache.key("default", m, "/chat/completions", b, first, t), m.name)
                             for m, b, first, t in variants]

    same, *others = run(scenario())
    assert same is not None  # the body's key order is not part of it
    assert others == [None] * len(variants)


def test_a_failed_call_is_never_kept_an_answer_outside_the_set_is(opened: Opened) -> None:
    failed = Vote(member="m", label=None, error="no answer within 5s")
    outside = Vote(member="m", label=None, raw="gibberish", error="'gibberish' matches no label")

    async def scenario() -> tuple[Vote | None, Vote | None]:
        async with opened() as store:
            cache = cache_over(store)
            keys = [cache.key("default", MEMBER, "/chat/completions", {**BODY, "seed": i}, False, TASK) for i in (1, 2)]
            await cache.keep(keys[0], failed)
            await cache.keep(keys[1], outside)
            return await cache.lookup(keys[0], "m"), await cache.lookup(keys[1], "m")

    kept_failure, kept_outside = run(scenario())
    assert kept_failure is None
    assert kept_outside is not None and kept_outside.label is None and kept_outside.raw == "gibberish"


def test_the_memory_store_keeps_its_most_recently_used_entries_and_expires_by_its_clock() -> None:
    clock = Clock()
    store = MemoryCacheStore(max_entries=3, clock=clock)

    async def scenario() -> tuple[list[bytes | None], int, bytes | None]:
        for key in "abc":
            await store.put(key, key.encode(), ttl_s=10)
        await store.get("a")  # used: "b" is now the least recently used
        await store.put("d", b"d", ttl_s=10)
        found = [await store.get(k) for k in "abcd"]
        size = len(store.entries)
        clock.advance(10)
        return found, size, await store.get("d")

    found, size, expired = run(scenario())
    assert found == [b"a", None, b"c", b"d"] and size == 3
    assert expired is None and "d" not in store.entries


def test_an_unreachable_store_is_no_cache_and_one_log_line(caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis down: every lookup misses and every keep is dropped without raising; the outage is logged once."""
    monkeypatch.setenv("CACHE_TEST_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")

    async def scenario() -> list[Vote | None]:
        client = redis_client(StoreSettings(redis_url_env="CACHE_TEST_REDIS_URL"))  # the gateway's own client
        health = StoreHealth(client.ping, probe_s=60)
        cache = ResponseCache(RedisCacheStore(client), CacheSettings(), health)
        key = cache.key("default", MEMBER, "/chat/completions", BODY, False, TASK)
        found = []
        for _ in range(20):
            found.append(await cache.lookup(key, "m"))
            await cache.keep(key, VOTE)
        assert not health.up
        await health.close()
        await client.aclose()
        return found

    with caplog.at_level(logging.WARNING, logger="crowd_gateway.store"):
        started = time.perf_counter()
        found = run(scenario())
    assert found == [None] * 20
    assert time.perf_counter() - started < 1  # once the outage is known, nothing waits for the store
    lines = [r.getMessage() for r in caplog.records if "(cache)" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("store unavailable (cache)"), lines


def test_an_unreadable_entry_is_a_miss(opened: Opened) -> None:
    async def scenario() -> list[Vote | None]:
        async with opened() as store:
            cache = cache_over(store)
            keys = [cache.key("default", MEMBER, "/chat/completions", {**BODY, "seed": i}, False, TASK) for i in (1, 2)]
            await store.put(keys[0], b"not json", 60)
            await store.put(keys[1], b"[1, 2]", 60)
            return [await cache.lookup(key, "m") for key in keys]

    assert run(scenario()) == [None, None]


def test_redis_gets_one_call_for_the_lookups_and_one_for_the_writes_of_a_turn(redis_url: str) -> None:
    """Every vote looks itself up: those made together go to Redis as one MGET, their writes as one call."""
    async def scenario() -> tuple[int, int, list[Vote | None]]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await client.flushdb()
            cache = cache_over(RedisCacheStore(client))
            keys = [cache.key("default", MEMBER, "/chat/completions", {**BODY, "seed": i}, False, TASK)
                    for i in range(50)]
            before = await client.info("commandstats")
            await asyncio.gather(*(cache.lookup(key, "m") for key in keys))
            await asyncio.gather(*(cache.keep(key, VOTE) for key in keys))
            found = await asyncio.gather(*(cache.lookup(key, "m") for key in keys))
            after = await client.info("commandstats")
            calls = {name: after[f"cmdstat_{name}"]["calls"] - before.get(f"cmdstat_{name}", {"calls": 0})["calls"]
                     for name in ("mget", "set")}
            return calls["mget"], calls["set"], found
        finally:
            await client.aclose()

    mgets, sets, found = run(scenario())
    assert mgets == 2 and sets == 50  # one MGET per round of lookups (the SETs: one script call, each counted)
    assert all(vote is not None and vote.cached for vote in found)


def test_a_wave_is_looked_up_in_one_call_and_kept_without_waiting(opened: Opened) -> None:
    """The request path looks a wave's members up together (lookup_many: one MGET on Redis) and keeps their votes
    off the answer's critical path (keep_soon): written after the turn, found by the next lookup, failures never
    kept, and the hits come back in the members' order."""
    failed = Vote(member="n", label=None, error="no answer within 5s")

    async def scenario() -> tuple[list[Vote | None], list[Vote | None]]:
        async with opened() as store:
            cache = cache_over(store)
            keys = [cache.key("default", member, "/chat/completions", BODY, False, TASK) for member in (MEMBER, OTHER)]
            before = await cache.lookup_many(keys, ["m", "n"])
            cache.keep_soon(keys[0], VOTE)
            cache.keep_soon(keys[1], failed)
            await asyncio.sleep(0.05)  # the writes go after this turn
            return before, await cache.lookup_many(keys, ["m", "n"])

    before, after = run(scenario())
    assert before == [None, None]
    assert after[0] is not None and after[0].cached and after[0].member == "m" and after[0].probs == (0.9, 0.1)
    assert after[0].cost_usd == 0 and after[1] is None


def test_a_write_nobody_waits_for_is_logged_once_when_the_store_is_down(caplog: pytest.LogCaptureFixture,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """keep_soon on an unreachable Redis: never raises to the request path; the outage is logged once."""
    monkeypatch.setenv("CACHE_TEST_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")

    async def scenario() -> bool:
        client = redis_client(StoreSettings(redis_url_env="CACHE_TEST_REDIS_URL"))
        health = StoreHealth(client.ping, probe_s=60)
        cache = ResponseCache(RedisCacheStore(client), CacheSettings(), health)
        for seed in range(20):
            cache.keep_soon(cache.key("default", MEMBER, "/chat/completions", {**BODY, "seed": seed}, False, TASK),
                            VOTE)
            await asyncio.sleep(0.01)
        up = health.up
        await health.close()
        await client.aclose()
        return up

    with caplog.at_level(logging.WARNING, logger="crowd_gateway.store"):
        up = run(scenario())
    assert not up
    lines = [r.getMessage() for r in caplog.records if "(cache)" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("store unavailable (cache)"), lines
