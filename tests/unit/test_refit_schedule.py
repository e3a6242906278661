"""When replicas refit (issue 20): the count of new items and the time of the last refit are the store's, so replicas
sharing a store refit once per `every_items` new items between them, never once each; and a refit reads the store's
bounded sample. Two Reliability objects on one memory store stand for two replicas on one Redis (the real processes:
tests/integration/test_replica_refits.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.reliability import Reliability
from gateway.store.health import StoreHealth
from gateway.store.votes import ItemRecord, MemoryVoteStore

VOTES = [{"member": "m1", "label": "a"}, {"member": "m2", "label": "a"}]


def replicas(store: MemoryVoteStore, n: int, **refit: Any) -> list[Reliability]:
    config = parse_config({"refit": {"min_items": 1, **refit},
                           "members": [{"name": "m", "base_url": "http://127.0.0.1:9/v1", "model": "m"}]})
    return [Reliability(store, config, StoreHealth(store.ping)) for _ in range(n)]


async def add(store: MemoryVoteStore, first: int, n: int) -> None:
    for i in range(first, first + n):
        await store.record(ItemRecord(f"i{i}", "s", ["a", "b"], "text", "e"), VOTES)


def test_replicas_refit_once_per_every_items_between_them(monkeypatch: pytest.MonkeyPatch) -> None:
    fitted: list[int] = []

    async def count(self: Reliability, schema: str, labels: list[str]) -> bool:
        fitted.append((await self.store.fit_votes(schema, self.settings.max_items)).stored_items)
        return True

    async def scenario() -> None:
        store = MemoryVoteStore()
        one, two = replicas(store, 2, every_items=10, every_s=3600)
        monkeypatch.setattr(Reliability, "refit_schema", count)
        await add(store, 0, 6)
        assert await one.refit_due() == [] and await two.refit_due() == []  # 6 new items: not due on either
        await add(store, 6, 6)
        assert await asyncio.gather(one.refit_due(), two.refit_due()) in ([["s"], []], [[], ["s"]])
        assert await one.refit_due() == [] and await two.refit_due() == []  # taken: the other does not repeat it
        await add(store, 12, 10)
        assert await two.refit_due() == ["s"] and await one.refit_due() == []

    asyncio.run(scenario())
    assert fitted == [12, 22]


def test_a_replica_that_saw_a_refit_due_checks_again_under_the_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two saw the schema due; one refitted it before two got the lease; two then refits nothing."""
    fitted: list[Reliability] = []

    async def record(self: Reliability, schema: str, labels: list[str]) -> bool:
        fitted.append(self)
        return True

    async def scenario() -> None:
        store = MemoryVoteStore()
        one, two = replicas(store, 2, every_items=5, every_s=3600)
        monkeypatch.setattr(Reliability, "refit_schema", record)
        take_lease, first = store.try_lock, [True]

        async def one_refits_first(name: str, ttl_s: float) -> bool:
            if first and first.pop():
                assert await one.refit_due() == ["s"]
            return await take_lease(name, ttl_s)

        monkeypatch.setattr(store, "try_lock", one_refits_first)
        await add(store, 0, 5)
        assert await two.refit_due() == []

        assert fitted == [one]

    asyncio.run(scenario())


def test_age_counts_from_the_last_refit_of_any_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        store = MemoryVoteStore()
        one, two = replicas(store, 2, every_items=1000, every_s=60)
        monkeypatch.setattr(Reliability, "refit_schema", lambda *_: asyncio.sleep(0, True))  # a refit that succeeds
        await add(store, 0, 3)
        one.started = two.started = 0.0  # both up for ages: the schema is due by age
        assert await one.refit_due() == ["s"]
        await add(store, 3, 3)
        assert await two.refit_due() == []  # one refitted it a moment ago

    asyncio.run(scenario())
