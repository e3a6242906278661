"""The batch store's line protocol, the same for the memory backend and a real redis-server.

Leases expire on the memory store's clock (replaced by a hand-advanced one here, so its cases never sleep) or on
the Redis server's clock (real waits, with margins of half a second or more either side of each expiry)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.batches import store_memory
from gateway.batches.protocol import batch_record, file_record
from gateway.batches.store import BatchStore, UnknownCursor
from gateway.batches.store_memory import MemoryBatchStore
from gateway.batches.store_redis import RedisBatchStore
from tests.harness import Clock

LINES = [f'{{"custom_id": "r{i}"}}'.encode() for i in range(6)]
Wait = Callable[[float], Awaitable[None]]
Scenario = Callable[[BatchStore, str, Wait], Awaitable[None]]


@pytest.fixture(params=["memory", "redis"])
def run(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Callable[[Scenario], None]:
    """Run a scenario against a fresh store holding one in-progress batch over LINES; the scenario's `wait(s)`
    lets `s` seconds pass on the store's lease clock."""
    clock = Clock(now=time.time())

    async def advance(seconds: float) -> None:
        clock.advance(seconds)

    def runner(scenario: Scenario) -> None:
        async def main() -> None:
            wait: Wait = asyncio.sleep
            if request.param == "redis":
                url = request.getfixturevalue("redis_url").rsplit("/", 1)[0] + "/5"
                client = aioredis.from_url(url)
                await client.flushdb()
                store: BatchStore = RedisBatchStore(client, 3600)
            else:
                monkeypatch.setattr(store_memory, "time", SimpleNamespace(time=clock))
                store, wait = MemoryBatchStore(), advance
            file = file_record("file-in", "in.jsonl", "batch", 10, 3600, lines=len(LINES))
            await store.put_file(file, b"content", LINES)
            rec = batch_record("file-in", "/v1/chat/completions", len(LINES), {"k": "v"})
            await store.create_batch(rec)
            assert await store.transition(rec["id"], ("validating",), "in_progress", in_progress_at=1)
            try:
                await scenario(store, rec["id"], wait)
            finally:
                await store.close()

        asyncio.run(main())

    return runner


def test_claims_hand_out_each_line_once_in_order(run: Any) -> None:
    async def scenario(store: BatchStore, bid: str, wait: Wait) -> None:
        a = await store.claim(bid, "file-in", "A", 4, 30)
        b = await store.claim(bid, "file-in", "B", 4, 30)
        assert a == [(i, LINES[i]) for i in range(4)] and b == [(4, LINES[4]), (5, LINES[5])]
        assert await store.claim(bid, "file-in", "C", 4, 30) == []
        assert await store.live_leases(bid) == 6
    run(scenario)


def test_completion_is_recorded_once_with_counters(run: Any) -> None:
    async def scenario(store: BatchStore, bid: str, wait: Wait) -> None:
        await store.claim(bid, "file-in", "A", 3, 30)
        assert await store.complete(bid, 1, True, b"one\n")
        assert not await store.complete(bid, 1, False, b"again\n")  # a second result for a line is dropped
        assert await store.complete(bid, 0, False, b"zero\n")
        rec = await store.get_batch(bid)
        assert (rec["completed"], rec["failed"], rec["metadata"]) == (1, 1, {"k": "v"})
        assert await store.results(bid) == [(False, b"zero\n"), (True, b"one\n")]
        assert await store.live_leases(bid) == 1
        assert await store.renew(bid, "A", [0, 1, 2], 30) == 0  # finished lines are not lost ones
    run(scenario)


def test_expired_lease_is_taken_over_but_completed_lines_never_rerun(run: Any) -> None:
    async def scenario(store: BatchStore, bid: str, wait: Wait) -> None:
        await store.claim(bid, "file-in", "dead", 6, 0.6)
        assert await store.complete(bid, 2, True, b"done\n")
        assert await store.claim(bid, "file-in", "B", 6, 30) == []  # leases still live
        await wait(0.7)
        taken = [line for line, _ in await store.claim(bid, "file-in", "B", 10, 30)]
        assert sorted(taken) == [0, 1, 3, 4, 5]
        assert await store.renew(bid, "dead", [0, 1], 30) == 2  # the dead worker lost them
    run(scenario)


def test_renewed_leases_are_not_taken_and_release_hands_back_at_once(run: Any) -> None:
    async def scenario(store: BatchStore, bid: str, wait: Wait) -> None:
        await store.claim(bid, "file-in", "A", 2, 1.0)
        for _ in range(4):  # 1.2 s in all, past the first lease; each renewal comes 0.7 s before expiry
            await wait(0.3)
            assert await store.renew(bid, "A", [0, 1], 1.0) == 0
        assert await store.claim(bid, "file-in", "B", 2, 30) == [(2, LINES[2]), (3, LINES[3])]
        await store.release(bid, "A", [1])
        await store.release(bid, "B", [0])  # not B's: ignored
        assert [line for line, _ in await store.claim(bid, "file-in", "B", 1, 30)] == [1]
    run(scenario)


def test_claims_stop_outside_in_progress_and_sealing_drops_late_results(run: Any) -> None:
    async def scenario(store: BatchStore, bid: str, wait: Wait) -> None:
        await store.claim(bid, "file-in", "A", 2, 30)
        assert not await store.transition(bid, ("validating",), "in_progress")
        assert await store.transition(bid, ("in_progress",), "cancelling", cancelling_at=5)
        assert await store.claim(bid, "file-in", "A", 2, 30) == []
        assert await store.complete(bid, 0, True, b"in flight at cancel\n")
        await store.seal(bid)
        assert not await store.complete(bid, 1, True, b"too late\n")
        rec = await store.get_batch(bid)
        assert rec["status"] == "cancelling" and rec["cancelling_at"] == 5 and rec["completed"] == 1
        assert await store.try_lock("x", 5) and not await store.try_lock("x", 5)
        await store.retire(bid)
        assert bid not in await store.active_batches()
    run(scenario)


def test_list_is_newest_first_with_cursor(run: Any) -> None:
    async def scenario(store: BatchStore, first: str, wait: Wait) -> None:
        ids = [first]
        for _ in range(4):
            time.sleep(0.002)
            rec = batch_record("file-in", "/v1/chat/completions", 1, None)
            await store.create_batch(rec)
            ids.append(rec["id"])
        newest = ids[::-1]
        page, more = await store.list_batches(None, 2, "default")
        assert [r["id"] for r in page] == newest[:2] and more
        page, more = await store.list_batches(newest[1], 10, "default")
        assert [r["id"] for r in page] == newest[2:] and not more
        with pytest.raises(UnknownCursor):
            await store.list_batches("batch_nope", 2, "default")
        assert await store.active_batches() == ids
    run(scenario)


def test_files_are_listed_by_owner_newest_first_and_deleted(run: Any) -> None:
    async def scenario(store: BatchStore, batch_id: str, wait: Wait) -> None:
        for file_id, owner in (("file-a", "t1"), ("file-b", "t2"), ("file-c", "t1")):
            time.sleep(0.002)
            await store.put_file(file_record(file_id, "x.jsonl", "batch", 1, 3600, owner=owner), b"x", [b"x"])
        assert [f["id"] for f in await store.list_files("t1")] == ["file-c", "file-a"]
        assert [f["id"] for f in await store.list_files("default")] == ["file-in"]
        assert await store.delete_file("file-c") and not await store.delete_file("file-c")
        assert await store.get_file("file-c") is None and await store.file_content("file-c") is None
        assert [f["id"] for f in await store.list_files("t1")] == ["file-a"]
        usage = {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4, "cost_usd": 1e-6}
        assert await store.transition(batch_id, ("in_progress",), "completed", usage=usage)
        assert (await store.get_batch(batch_id))["usage"] == usage
    run(scenario)


def test_memory_store_forgets_files_past_their_retention() -> None:
    """The in-memory store drops uploaded files once they expire instead of keeping them until restart."""
    import asyncio

    from gateway.batches.protocol import file_record
    from gateway.batches.store_memory import MemoryBatchStore

    now = [1_000_000.0]
    store = MemoryBatchStore(clock=lambda: now[0])

    async def scenario() -> None:
        old = {**file_record("file-old", "a.jsonl", "batch", 3, 60, owner="default"), "expires_at": int(now[0]) + 60}
        await store.put_file(old, b"abc")
        assert await store.get_file("file-old") is not None
        now[0] += 61
        assert await store.get_file("file-old") is None and await store.file_content("file-old") is None
        new = {**file_record("file-new", "b.jsonl", "batch", 3, 60, owner="default"), "expires_at": int(now[0]) + 60}
        await store.put_file(new, b"def")
        assert list(store.files) == ["file-new"] and [r["id"] for r in await store.list_files("default")] == ["file-new"]

    asyncio.run(scenario())
