"""Live per-member figures the routers and admission read: calls in flight, recent latency, cost of a call.

Why here and not in Prometheus: routing and admission decisions are made per item in microseconds, so
they read plain attributes updated as calls finish. Percentiles are recomputed lazily every few
samples over a short window, so a slow member shows up within a few calls. Latency is the member's
own (from the moment the call has a slot), never the gateway's queue in front of it.
"""

from __future__ import annotations

import math
from collections import deque

from gateway.config import Member

DEFAULT_PROMPT_TOKENS = 200
"""Prompt size assumed for a member's first call, before its real cost per call is known."""
_RECOMPUTE_EVERY = 8
_EWMA = 0.2


class MemberStats:
    __slots__ = ("member", "in_flight", "service_s", "_latencies", "_fresh", "_p50", "_p95", "_cost")

    def __init__(self, member: Member, window: int = 128) -> None:
        self.member = member
        self.in_flight = 0
        """Calls to this member in the gateway: running, or waiting for one of its `max_concurrency` slots."""
        self.service_s: float | None = None
        """Moving average of the member's latency: how fast its queue drains (None before its first answer)."""
        self._latencies: deque[float] = deque(maxlen=window)
        self._fresh = 0
        self._p50: float | None = None
        self._p95: float | None = None
        self._cost: float | None = None

    def answered(self, latency_s: float) -> None:
        """Record the latency of a call that produced an HTTP answer."""
        self._latencies.append(latency_s)
        self._fresh += 1
        self.service_s = latency_s if self.service_s is None else self.service_s + _EWMA * (latency_s - self.service_s)

    def finish_s(self, ahead: int) -> float:
        """When a call sent now would end, with `ahead` calls already in the gateway for this member: they drain
        `max_concurrency` at a time, then it takes the member's latency. Unknown latency and a queue: inf."""
        slots = self.member.max_concurrency
        waiting = ahead + 1 - slots
        if self.service_s is None:
            return 0.0 if waiting <= 0 else math.inf
        return self.service_s * (1 + max(waiting, 0) / slots)

    def paid(self, cost_usd: float) -> None:
        self._cost = cost_usd if self._cost is None else self._cost + _EWMA * (cost_usd - self._cost)

    @property
    def samples(self) -> int:
        return len(self._latencies)

    def _percentiles(self) -> None:
        if self._fresh >= _RECOMPUTE_EVERY or (self._p50 is None and self._latencies):
            ordered = sorted(self._latencies)
            n = len(ordered)
            self._p50 = ordered[n // 2]
            self._p95 = ordered[min(n - 1, int(0.95 * n))]
            self._fresh = 0

    @property
    def p50_s(self) -> float | None:
        self._percentiles()
        return self._p50

    @property
    def p95_s(self) -> float | None:
        self._percentiles()
        return self._p95

    @property
    def cost_usd(self) -> float:
        """Expected cost of one call: the recent average, or the price of a typical prompt before any call."""
        if self._cost is not None:
            return self._cost
        price = self.member.price
        return (price.input_usd_per_mtok * DEFAULT_PROMPT_TOKENS + price.output_usd_per_mtok) / 1e6
