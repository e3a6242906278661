"""The tenant limiter, one suite on both backends: in memory, and Redis (a real redis-server, its Lua script).
Time is the test's: `now` is passed in, so a refill is checked without sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.config import Limits
from gateway.store.limiter import Limiter, MemoryLimiter, Periods
from gateway.store.limiter_redis import RedisLimiter

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC).timestamp()


@pytest.fixture(params=["memory", "redis"])
def limiter(request: pytest.FixtureRequest) -> Callable[[], Limiter]:
    if request.param == "memory":
        return MemoryLimiter
    url = request.getfixturevalue("redis_url")
    prefix = f"t{time.monotonic_ns()}:"  # a fresh namespace per test on the shared server
    return lambda: RedisLimiter(aioredis.from_url(url), prefix=prefix)


def run(make: Callable[[], Limiter], scenario: Callable[[Limiter], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        limiter = make()
        try:
            return await scenario(limiter)
        finally:
            if isinstance(limiter, RedisLimiter):
                await limiter.r.aclose()
    return asyncio.run(main())


def test_requests_per_minute_allows_a_burst_then_refills_evenly(limiter: Callable[[], Limiter]) -> None:
    limits = Limits(requests_per_minute=3)

    async def scenario(lim: Limiter) -> None:
        seen = [await lim.acquire("t", limits, 0, NOW) for _ in range(3)]
        assert [d.refused for d in seen] == [None, None, None]
        assert [d.requests.remaining for d in seen] == [2, 1, 0]  # type: ignore[union-attr]
        assert seen[-1].requests.reset_s == pytest.approx(60.0)  # type: ignore[union-attr]
        refused = await lim.acquire("t", limits, 0, NOW + 1)
        assert refused.refused == "requests" and refused.requests.remaining == 0  # type: ignore[union-attr]
        assert refused.retry_after_s == pytest.approx(19.0)  # one request back every 20 s
        assert (await lim.acquire("t", limits, 0, NOW + 20)).refused is None
        assert (await lim.acquire("other", limits, 0, NOW + 1)).refused is None  # tenants apart
        day, _ = await lim.usage("t", NOW + 20)
        assert day.requests == 4  # refused requests are not counted

    run(limiter, scenario)


def test_tokens_per_minute_counts_the_estimate_and_its_correction(limiter: Callable[[], Limiter]) -> None:
    limits = Limits(tokens_per_minute=1000)

    async def scenario(lim: Limiter) -> None:
        first = await lim.acquire("t", limits, 800, NOW)
        assert first.refused is None and first.tokens.remaining == 200  # type: ignore[union-attr]
        assert first.requests is None  # no request limit configured
        refused = await lim.acquire("t", limits, 300, NOW)
        assert refused.refused == "tokens" and refused.retry_after_s == pytest.approx(6.0)  # 100 tokens at 60 ms
        await lim.settle("t", limits, -600, 0.0, NOW)  # the answer used 200 tokens, not 800
        after = await lim.acquire("t", limits, 300, NOW)
        assert after.refused is None and after.tokens.remaining == 500  # type: ignore[union-attr]
        day, month = await lim.usage("t", NOW)
        assert (day.tokens, month.tokens, day.requests) == (500, 500, 2)

    run(limiter, scenario)


def test_an_answer_larger_than_the_minute_is_waited_out_by_the_requests_after_it(
        limiter: Callable[[], Limiter]) -> None:
    limits = Limits(tokens_per_minute=100)

    async def scenario(lim: Limiter) -> None:
        assert (await lim.acquire("t", limits, 100, NOW)).refused is None  # the caller caps its estimate
        await lim.settle("t", limits, 400, 0.0, NOW)  # the answer used 500
        refused = await lim.acquire("t", limits, 10, NOW + 30)
        assert refused.refused == "tokens" and refused.retry_after_s == pytest.approx(216.0)  # 4 more minutes of tokens

    run(limiter, scenario)


def test_budgets_refuse_once_spent_and_reset_with_the_day(limiter: Callable[[], Limiter]) -> None:
    limits = Limits(usd_per_day=0.01, usd_per_month=0.015, requests_per_minute=100)

    async def scenario(lim: Limiter) -> None:
        assert (await lim.acquire("t", limits, 10, NOW)).refused is None
        await lim.settle("t", limits, 0, 0.012, NOW)  # the request that crosses a budget is answered
        spent = await lim.acquire("t", limits, 10, NOW + 1)
        assert spent.refused == "day" and spent.requests.remaining == 99  # type: ignore[union-attr]
        tomorrow = Periods.at(NOW).day_end + 1
        assert (await lim.acquire("t", limits, 10, tomorrow)).refused is None
        await lim.settle("t", limits, 0, 0.004, tomorrow)
        assert (await lim.acquire("t", limits, 10, tomorrow + 1)).refused == "month"
        day, month = await lim.usage("t", tomorrow + 1)
        assert day.usd == pytest.approx(0.004) and month.usd == pytest.approx(0.016)
        assert (day.requests, month.requests) == (1, 2)

    run(limiter, scenario)


def test_concurrent_requests_never_pass_the_limit(limiter: Callable[[], Limiter]) -> None:
    limits = Limits(requests_per_minute=10)

    async def scenario(lim: Limiter) -> None:
        decisions = await asyncio.gather(*(lim.acquire("t", limits, 0, NOW) for _ in range(25)))
        assert sum(d.refused is None for d in decisions) == 10

    run(limiter, scenario)


def test_periods_are_utc_calendar_days_and_months() -> None:
    p = Periods.at(datetime(2026, 12, 31, 23, 59, tzinfo=UTC).timestamp())
    assert (p.day, p.month) == ("2026-12-31", "2026-12")
    assert p.month_end == datetime(2027, 1, 1, tzinfo=UTC).timestamp() == p.day_end
