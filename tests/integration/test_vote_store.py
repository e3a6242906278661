"""One test suite, two backends: the in-memory store and Redis (a real redis-server)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.store.sampling import sample_positions
from gateway.store.votes import ItemRecord, MemoryVoteStore, VoteStore
from gateway.store.votes_redis import RedisVoteStore

LABELS = ["positive", "negative"]


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryVoteStore()
        return
    url = request.getfixturevalue("redis_url")
    prefix = f"t{time.monotonic_ns()}:"  # a fresh namespace per test on the shared server
    yield lambda: RedisVoteStore(aioredis.from_url(url), prefix=prefix)


def run(store: Any, scenario: Any) -> Any:
    async def main() -> Any:
        s: VoteStore = store() if callable(store) else store
        try:
            return await scenario(s)
        finally:
            await s.close()
    return asyncio.run(main())


def item(i: int, schema: str = "sentiment") -> ItemRecord:
    return ItemRecord(item_id=f"it-{i}", schema=schema, labels=LABELS, text=f"text {i}", ensemble="crowd")


def test_votes_roundtrip_and_triples(store: Any) -> None:
    async def scenario(s: VoteStore) -> None:
        await s.record(item(1), [{"member": "a", "label": "positive"}, {"member": "b", "label": None, "error": "x"}])
        await s.record(item(2), [{"member": "a", "label": "negative"}])
        await s.record(item(1), [{"member": "c", "label": "negative"}])
        rec, votes = await s.item("it-1")
        assert rec.text == "text 1" and [v["member"] for v in votes] == ["a", "b", "c"]
        assert await s.item("missing") is None
        assert sorted(await s.triples("sentiment")) == [("it-1", "a", "positive"), ("it-1", "c", "negative"),
                                                       ("it-2", "a", "negative")]
        assert await s.schemas() == {"sentiment": LABELS}
        assert await s.pending("sentiment") == (2, None)
        assert await s.take_new_items("sentiment", 1000.0) == 2 and await s.take_new_items("sentiment", 1001.0) == 0
        assert await s.pending("sentiment") == (0, 1001.0)
    run(store, scenario)


def test_gold_and_human_labels(store: Any) -> None:
    async def scenario(s: VoteStore) -> None:
        await s.record(item(1), [{"member": "a", "label": "positive"}])
        assert await s.add_label(item(1), "positive", "gold", "qa")  # the item's first gold label
        assert not await s.add_label(item(1), "negative", "gold", "qa")  # corrected: not checked again
        assert not await s.add_label(item(1), "negative", "human", "ann-7")
        assert await s.gold("sentiment") == {"it-1": "negative"}
        assert ("it-1", "human:ann-7", "negative") in await s.triples("sentiment")
        await s.add_label(item(9), "positive", "gold", "qa")  # gold for an item not annotated yet
        assert (await s.item("it-9"))[0].schema == "sentiment"
    run(store, scenario)


def test_published_parameters_are_versioned(store: Any) -> None:
    async def scenario(s: VoteStore) -> None:
        assert await s.published_version() == 0
        assert await s.publish("sentiment", "dawid_skene", {"prior": {"positive": 0.6}}) == 1
        assert await s.publish("sentiment", "dawid_skene", {"prior": {"positive": 0.7}}) == 2
        assert await s.publish("other", "glad", {"beta": 1.0}) == 1
        version, params = await s.published()
        assert version == 3 == await s.published_version()
        assert params[("sentiment", "dawid_skene")].version == 2
        assert params[("sentiment", "dawid_skene")].params == {"prior": {"positive": 0.7}}
    run(store, scenario)


def test_review_queue_in_order(store: Any) -> None:
    async def scenario(s: VoteStore) -> None:
        for i in (2, 1, 3):
            await s.enqueue_review({"item_id": f"it-{i}", "queued_at": float(i)})
        assert [e["item_id"] for e in await s.reviews(10)] == ["it-1", "it-2", "it-3"]
        assert await s.resolve_review("it-2") and not await s.resolve_review("it-2")
        assert await s.review_count() == 2 and len(await s.reviews(1)) == 1
    run(store, scenario)


def test_refit_lock_is_exclusive(store: Any) -> None:
    async def scenario(s: VoteStore) -> None:
        assert await s.try_lock("refit:sentiment", 5) and not await s.try_lock("refit:sentiment", 5)
        assert await s.try_lock("refit:other", 5)
        await s.unlock("refit:sentiment")
        assert await s.try_lock("refit:sentiment", 5)
    run(store, scenario)


def test_retention_drops_old_items(store: Any) -> None:
    async def scenario(s: VoteStore) -> None:
        old = ItemRecord("old", "sentiment", LABELS, "t", "crowd", created=time.time() - 10_000)
        if isinstance(s, MemoryVoteStore):
            s.retention_s = 3600
        else:
            s.ttl = 3600
        await s.record(old, [{"member": "a", "label": "positive"}])
        await s.record(item(1), [{"member": "a", "label": "negative"}])
        assert [t[0] for t in await s.triples("sentiment")] == ["it-1"]
    run(store, scenario)


def test_a_refit_reads_gold_people_and_a_seeded_sample_of_the_rest(store: Any) -> None:
    async def scenario(s: VoteStore) -> None:
        for i in range(30):
            await s.record(item(i), [{"member": "a", "label": "positive"}, {"member": "b", "label": "negative"}])
        await s.record(item(99, schema="other"), [{"member": "a", "label": "positive"}])
        await s.add_label(item(3), "negative", "gold", "qa")
        await s.add_label(item(4), "positive", "human", "ann")
        assert (await s.fit_votes("sentiment", 100)).votes == await s.item_votes("sentiment")  # small: everything
        recent, older = sample_positions("sentiment", 30, 10)
        sample = await s.fit_votes("sentiment", 10)
        assert sample.stored_items == 30 and set(sample.votes) == {f"it-{i}" for i in [3, 4, *recent, *older]}
        assert len(recent) == len(older) == 5 and list(recent) == [25, 26, 27, 28, 29]
        assert {v["member"] for v in sample.votes["it-4"]} == {"a", "b", "human:ann"}
        assert (await s.fit_votes("sentiment", 10)).votes == sample.votes  # seeded: the same votes, the same sample
    run(store, scenario)


def test_an_expired_item_leaves_the_refit_sample(store: Any) -> None:
    async def scenario(s: VoteStore) -> None:
        if isinstance(s, MemoryVoteStore):
            s.retention_s = 3600
        else:
            s.ttl = 3600
        old = ItemRecord("old", "sentiment", LABELS, "t", "crowd", created=time.time() - 10_000)
        await s.record(old, [{"member": "human:ann", "label": "positive"}])
        if not isinstance(s, MemoryVoteStore):
            await s.r.delete(s._item("old", "votes"))  # what Redis' expiry does to a key older than the retention
        await s.record(item(1), [{"member": "a", "label": "negative"}])
        sample = await s.fit_votes("sentiment", 100)
        assert list(sample.votes) == ["it-1"] and sample.stored_items == 1
    run(store, scenario)


def test_ping_answers_while_the_store_is_up(store: Any) -> None:
    async def scenario(s: VoteStore) -> None:
        await s.ping()
    run(store, scenario)
