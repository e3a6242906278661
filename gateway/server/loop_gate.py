"""How many completion requests may run at once so that the event loop stays on time.

Why: the gateway's own work (parsing, prompts, aggregation, answers) shares one event loop. When more
arrives than the CPU can do, every loop turn gets longer and each request needs several turns, so
latency grows without bound while the in-flight counts stay low (issue 20: p50 14.6 s, no 429), and
a refusal, which also needs turns, stops being fast. A timer that fires late by the length of a turn
measures it directly (as Node's `toobusy` does); the limit on requests in progress follows it like an
adaptive concurrency limit (Envoy, Netflix concurrency-limits), with the loop's lag as the signal:
cut by a fifth at each probe that finds the loop later than `max_loop_lag_ms`, raised by 5% at each
that finds it under half that while the limit is reached, and lifted entirely after a second with nothing in progress. A burst on an
idle gateway is admitted whole; sustained overload is refused at the limit, at once (gateway/server/connections.py).
The probe runs only while requests are in progress (the last request to end cancels it): an idle gateway runs
nothing, and one that answers each request within a probe period never runs it at all. One per process, as the loop is.
"""

from __future__ import annotations

import asyncio
import math
import time

PERIOD_S = 0.01
"""How often the probe fires while requests are in progress."""
IDLE_RESET_S = 1.0
"""Idle this long (no request in progress), the gateway lifts its limit: a gap between requests under overload
is shorter, and must not let the next burst in whole."""
MIN_LIMIT = 4
"""The limit never goes below this: a few requests always run, so the lag keeps being measured."""
DECREASE = 0.8
"""At each probe that finds the loop late: back off from what was running."""
INCREASE = 1.05
"""At each probe that finds it on time while the limit is reached: a few percent more, so the limit climbs back
within a second and does not overshoot by more than a few percent per probe."""


class LoopGate:
    __slots__ = ("max_lag_s", "active", "limit", "lag_s", "_probe_at", "_idle_since", "_cpu")

    def __init__(self, max_lag_s: float = 0.05) -> None:
        self.max_lag_s = max_lag_s
        self.active = 0
        """Completion requests in progress."""
        self.limit = math.inf
        self.lag_s = 0.0
        """How late the last probe fired (0 while idle)."""
        self._probe_at: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._cpu = 0.0

    def admit(self) -> bool:
        """Take a request (counted until `leave`), or False when the loop is too busy for another."""
        if self.active >= self.limit:
            return False
        self.active += 1
        if self._probe_at is None:
            if time.perf_counter() - self._idle_since > IDLE_RESET_S:
                self.limit = math.inf
            self._schedule()
        return True

    def leave(self) -> None:
        """A request ended; the last one takes the probe with it, so an idle process is not woken for nothing."""
        self.active -= 1
        if self.active == 0 and self._probe_at is not None:
            self._probe_at.cancel()
            self._probe_at = None
            self.lag_s = 0.0
            self._idle_since = time.perf_counter()

    def _schedule(self) -> None:
        self._cpu = time.process_time()
        self._probe_at = asyncio.get_running_loop().call_later(PERIOD_S, self._probe, time.perf_counter() + PERIOD_S)

    def _probe(self, due: float) -> None:
        """How late this probe fired, less the time the process was not running at all (another process had the
        CPU, or a container's CPU quota ran out): only the lag of the gateway's own work says it took too much."""
        late = time.perf_counter() - due
        descheduled = PERIOD_S + late - (time.process_time() - self._cpu)
        self.lag_s = lag = max(late - max(descheduled, 0.0), 0.0)
        if lag > self.max_lag_s:
            self.limit = max(MIN_LIMIT, min(self.limit, self.active) * DECREASE)
        elif lag < self.max_lag_s / 2 and self.active >= self.limit - 1:
            self.limit *= INCREASE
        self._schedule()


GATE = LoopGate()
