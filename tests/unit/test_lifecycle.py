"""Store outages and stopping, in-process (issue 24): how an outage is logged and found to end, bounded stop steps,
and a refit loop that stops even when its lease cannot be handed back. On real processes: test_outages.py."""

from __future__ import annotations

import asyncio
import logging
import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.config import parse_config
from gateway.server.lifecycle import run_stop_steps
from gateway.reliability import Reliability
from gateway.store.health import StoreHealth
from gateway.store.votes import ItemRecord, MemoryVoteStore
from tests.harness import Clock


def store_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "crowd_gateway.store"]


def test_an_outage_is_logged_when_it_starts_once_a_minute_and_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    answering = False

    async def ping() -> None:
        if not answering:
            raise RedisConnectionError("Connection refused")

    async def scenario() -> None:
        nonlocal answering
        health = StoreHealth(ping, probe_s=0.01, clock=clock)
        for _ in range(50):  # 50 failures in the first minute: one line
            health.failed("refit", RedisConnectionError("Connection refused"))
        health.skipped("votes")
        assert not health.up and health.error == "ConnectionError: Connection refused"
        assert REGISTRY.get_sample_value("crowd_gateway_store_up") == 0
        waiting = asyncio.create_task(health.wait_up())
        clock.advance(61)
        await asyncio.sleep(0.05)  # the probe fails on: one reminder per component
        clock.advance(10)
        health.failed("refit", RedisConnectionError("Connection refused"))  # within the minute: no line
        answering = True
        await asyncio.wait_for(waiting, 1)
        assert health.up and REGISTRY.get_sample_value("crowd_gateway_store_up") == 1
        health.skipped("votes")  # the store answers: nothing to log
        await health.close()

    with caplog.at_level(logging.INFO, logger="crowd_gateway"):
        asyncio.run(scenario())
    messages = store_messages(caplog)
    assert messages[:2] == ["store unavailable (refit): ConnectionError: Connection refused",
                            "store unavailable (votes): ConnectionError: Connection refused"]
    assert messages[2:4] == [
        "store still unavailable (refit) after 61 s, 50 calls failed or skipped: ConnectionError: Connection refused",
        "store still unavailable (votes) after 61 s, 1 calls failed or skipped: ConnectionError: Connection refused"]
    assert messages[4:] == ["store available again (refit) after 71.0 s; 51 calls failed or skipped meanwhile",
                            "store available again (votes) after 71.0 s; 1 calls failed or skipped meanwhile"]


def test_stop_steps_are_bounded_and_a_stuck_step_holds_no_other(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    async def stuck() -> None:
        await asyncio.Event().wait()

    async def failing() -> None:
        raise RedisConnectionError("Connection refused")

    async def quick() -> None:
        ran.append("quick")

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await run_stop_steps([("stuck", stuck), ("failing", failing), ("quick", quick)], 0.3)
        return loop.time() - started

    with caplog.at_level(logging.WARNING, logger="crowd_gateway"):
        took = asyncio.run(scenario())
    assert took < 0.4 and ran == ["quick"]
    assert [r.getMessage() for r in caplog.records] == [
        "stopping: stuck did not finish within 0.1 s; left behind",
        "stopping: failing failed: ConnectionError: Connection refused"]


class UnreachableOnUnlock(MemoryVoteStore):
    """A store that goes away while a refit runs: handing the refit's lease back fails."""

    async def unlock(self, name: str) -> None:
        raise RedisConnectionError("Connection refused")


def test_a_refit_loop_stops_though_its_lease_cannot_be_handed_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 24: cancelled while its refit ran, the loop's `finally` failed to unlock, the ConnectionError replaced
    the cancellation, and the loop polled on (and later spawned a worker process) after the stop began."""
    config = parse_config({"refit": {"every_items": 1, "min_items": 1, "poll_s": 0.01},
                           "members": [{"name": "m", "base_url": "http://127.0.0.1:9/v1", "model": "m"}]})
    refitting = asyncio.Event()

    async def refit_forever(self: Reliability, schema: str, labels: list[str]) -> bool:
        refitting.set()
        await asyncio.Event().wait()  # as a refit waits for its worker process
        return True

    async def scenario() -> Reliability:
        store = UnreachableOnUnlock()
        await store.record(ItemRecord("i", "s", ["a", "b"], "text", "e"),
                           [{"member": "m1", "label": "a"}, {"member": "m2", "label": "a"}])
        reliability = Reliability(store, config, StoreHealth(store.ping))
        with monkeypatch.context() as patch:
            patch.setattr(Reliability, "refit_schema", refit_forever)
            await reliability.start()
            await asyncio.wait_for(refitting.wait(), 5)
            await asyncio.wait_for(reliability.stop(), 2)
        assert await reliability.refit_schema("s", ["a", "b"]) is False  # stopped: no worker process starts
        return reliability

    reliability = asyncio.run(scenario())
    assert reliability._tasks and all(t.done() for t in reliability._tasks) and reliability._pool is None
