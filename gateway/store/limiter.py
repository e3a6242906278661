"""Rate limits and spend per tenant, kept in the store so that every replica enforces one limit.

Rates use GCRA (the generic cell rate algorithm, as in redis-cell and Stripe's limiter): one number per limit,
the theoretical arrival time `tat`, which a request of cost `n` pushes `n * period / limit` ahead; it is allowed
while `tat` stays within one period of now, so a full minute's allowance may come at once and refills evenly.
What OpenAI's headers say follows from `tat` alone: remaining = what still fits, reset = until the bucket is full.
Spend, requests and tokens are counted per calendar day and month (UTC); a budget refuses requests once reached.

Why not a library: `limits` (5.8) checks one limit per round trip and cannot give back an estimate, and
pyrate-limiter's Redis bucket logs one sorted-set entry per unit of weight (4,000 for a 4,000-token request); a
request here checks both rates and both budgets in one atomic step (one Redis script, gateway/store/limiter_redis.py)
and corrects its token estimate once the answer's usage is known.

`now` comes from the caller (the gateway's clock, injectable in tests): replicas' clocks agree within
milliseconds (NTP), far below a one-minute window.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

from gateway.config import Limits

PERIOD_S = 60.0
"""The window of `requests_per_minute` and `tokens_per_minute`."""

Refusal = Literal["requests", "tokens", "day", "month"]


@dataclass(frozen=True)
class Rate:
    """One rate limit's state after a decision, as OpenAI's `x-ratelimit-*` headers report it."""

    limit: int
    remaining: int
    reset_s: float
    """Until the whole allowance is back."""


@dataclass(frozen=True)
class Decision:
    refused: Refusal | None
    retry_after_s: float
    """For a refused rate: when the request would fit."""
    requests: Rate | None
    tokens: Rate | None


@dataclass
class Tally:
    """What a tenant used in one calendar period."""

    requests: int = 0
    tokens: int = 0
    usd: float = 0.0


@dataclass(frozen=True)
class Periods:
    """The calendar day and month (UTC) that contain `now`: ids for store keys, bounds for answers."""

    day: str
    month: str
    day_start: float
    day_end: float
    month_start: float
    month_end: float

    @classmethod
    def at(cls, now: float) -> Periods:
        t = datetime.fromtimestamp(now, UTC)
        day = t.replace(hour=0, minute=0, second=0, microsecond=0)
        month = day.replace(day=1)
        next_month = month.replace(year=month.year + month.month // 12, month=month.month % 12 + 1)
        return cls(day=day.strftime("%Y-%m-%d"), month=month.strftime("%Y-%m"), day_start=day.timestamp(),
                   day_end=day.timestamp() + 86400, month_start=month.timestamp(), month_end=next_month.timestamp())


def gcra(tat: float, now: float, limit: int, cost: int) -> tuple[bool, float, Rate]:
    """(allowed, the new tat, the rate's state)."""
    interval = PERIOD_S / limit
    base = max(tat, now)
    after = base + cost * interval
    if after - now > PERIOD_S + 1e-9:
        return False, tat, Rate(limit, _fits(base, now, interval), base - now)
    return True, after, Rate(limit, _fits(after, now, interval), after - now)


def _fits(tat: float, now: float, interval: float) -> int:
    return max(0, math.floor((PERIOD_S - (tat - now)) / interval + 1e-9))


def retry_s(rate: Rate, cost: int) -> float:
    """How long until `cost` fits again in a refused rate."""
    interval = PERIOD_S / rate.limit
    return max(rate.reset_s + cost * interval - PERIOD_S, 0.001)


def corrected(tat: float, now: float, limit: int, delta: int) -> float:
    """The tat after a request's tokens turned out `delta` more (or fewer) than its estimate."""
    return max(max(tat, now) + delta * PERIOD_S / limit, now)


def budget_spent(limits: Limits, day: float, month: float) -> Refusal | None:
    if limits.usd_per_day is not None and day >= limits.usd_per_day:
        return "day"
    if limits.usd_per_month is not None and month >= limits.usd_per_month:
        return "month"
    return None


class Limiter(ABC):
    @abstractmethod
    async def acquire(self, tenant: str, limits: Limits, tokens: int, now: float) -> Decision:
        """Check the budgets and both rates for one request of `tokens` (an estimate, at most `tokens_per_minute`:
        an answer beyond it is let through on a full bucket and its excess waited out by the requests after it,
        see `settle`); if all allow it, take its share of each rate and count it in the day's and month's tally,
        atomically."""

    @abstractmethod
    async def settle(self, tenant: str, limits: Limits, token_delta: int, usd: float, now: float) -> None:
        """A request's answer is known: correct its tokens by `token_delta` and add what it cost."""

    @abstractmethod
    async def usage(self, tenant: str, now: float) -> tuple[Tally, Tally]:
        """The tenant's tally for the current day and month."""


@dataclass
class _Counted:
    period: str
    tally: Tally = field(default_factory=Tally)


class MemoryLimiter(Limiter):
    """One process's limits (the embedded default; every worker process of `serve --workers N` has its own)."""

    def __init__(self) -> None:
        self._tat: dict[tuple[str, str], float] = {}
        self._counted: dict[tuple[str, str], _Counted] = {}

    def _tally(self, tenant: str, which: str, period: str) -> Tally:
        found = self._counted.get((tenant, which))
        if found is None or found.period != period:
            found = self._counted[tenant, which] = _Counted(period)
        return found.tally

    async def acquire(self, tenant: str, limits: Limits, tokens: int, now: float) -> Decision:
        periods = Periods.at(now)
        day, month = self._tally(tenant, "day", periods.day), self._tally(tenant, "month", periods.month)
        spent = budget_spent(limits, day.usd, month.usd)
        checks = {kind: gcra(self._tat.get((tenant, kind), 0.0), now, limit, cost)
                  for kind, limit, cost in (("requests", limits.requests_per_minute, 1),
                                            ("tokens", limits.tokens_per_minute, tokens)) if limit is not None}
        rates = {kind: rate for kind, (_, _, rate) in checks.items()}
        if spent is not None:
            return Decision(spent, 0.0, rates.get("requests"), rates.get("tokens"))
        costs = {"requests": 1, "tokens": tokens}
        if waits := {kind: retry_s(rate, costs[kind]) for kind, (allowed, _, rate) in checks.items() if not allowed}:
            return Decision(next(iter(waits)), max(waits.values()),  # type: ignore[arg-type]
                            rates.get("requests"), rates.get("tokens"))
        for kind, (_, tat, _) in checks.items():
            self._tat[tenant, kind] = tat
        for tally in (day, month):
            tally.requests += 1
            tally.tokens += tokens
        return Decision(None, 0.0, rates.get("requests"), rates.get("tokens"))

    async def settle(self, tenant: str, limits: Limits, token_delta: int, usd: float, now: float) -> None:
        periods = Periods.at(now)
        if limits.tokens_per_minute is not None and token_delta:
            key = (tenant, "tokens")
            self._tat[key] = corrected(self._tat.get(key, 0.0), now, limits.tokens_per_minute, token_delta)
        for tally in (self._tally(tenant, "day", periods.day), self._tally(tenant, "month", periods.month)):
            tally.tokens += token_delta
            tally.usd += usd

    async def usage(self, tenant: str, now: float) -> tuple[Tally, Tally]:
        periods = Periods.at(now)
        return (replace(self._tally(tenant, "day", periods.day)),
                replace(self._tally(tenant, "month", periods.month)))
