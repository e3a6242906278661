"""Whether the store answers, as every part of the gateway meets it: an outage is logged as one, not per call.

Why (issue 24): during a 6 s Redis outage every poll, request and batch line failed on its own with a traceback
(800 log lines from an idle gateway, 4,400 in 3 s under a batch), and batch lines kept calling members for results
nobody could record. Now the first failed call marks the store down (`crowd_gateway_store_up`, `/readyz`); each
component (refit, batches, votes, store routes, readiness) logs the outage once when it meets it, with the error's
class and message, once a minute while it lasts, and once when it ends. While the store is down, background work
waits for it instead of failing against it, and one probe pings it every `probe_s` to find the outage's end.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from gateway import metrics

log = logging.getLogger("crowd_gateway.store")

STORE_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)
"""What a store call raises when the store cannot be used (Redis down, stalled, out of connections)."""


@dataclass
class _Met:
    """One component's share of the current outage."""

    since: float
    logged: float
    calls: int = 1


class StoreHealth:
    def __init__(self, ping: Callable[[], Awaitable[None]], probe_s: float = 1.0, remind_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ping = ping
        self.probe_s = probe_s
        self.remind_s = remind_s
        self.clock = clock
        self.error: str | None = None
        """The last error of the current outage (`Class: message`); None while the store answers."""
        self._met: dict[str, _Met] = {}
        self._back = asyncio.Event()
        self._back.set()
        self._probe: asyncio.Task[None] | None = None
        metrics.STORE_UP.set(1)

    @property
    def up(self) -> bool:
        return self.error is None

    async def wait_up(self) -> None:
        """Return at once while the store answers, else when the probe finds it answering again."""
        await self._back.wait()

    def failed(self, component: str, exc: Exception) -> None:
        """A store call of `component` failed: the store is down until the probe reaches it again."""
        self.error = f"{type(exc).__name__}: {exc}"
        if self._probe is None:
            metrics.STORE_UP.set(0)
            self._back.clear()
            # in a context of its own: the probe's log lines are no request's (gateway/server/requestid.py)
            self._probe = asyncio.get_running_loop().create_task(self._find_end(), name="store-probe",
                                                                 context=contextvars.Context())
        self.skipped(component)

    def skipped(self, component: str) -> None:
        """`component` did without the store (a call failed, or was not made because the store is down)."""
        if self.error is None:
            return
        now = self.clock()
        met = self._met.get(component)
        if met is None:
            self._met[component] = _Met(since=now, logged=now)
            log.warning("store unavailable (%s): %s", component, self.error)
            return
        met.calls += 1
        self._remind(component, met, now)

    def _remind(self, component: str, met: _Met, now: float) -> None:
        if now - met.logged >= self.remind_s:
            met.logged = now
            log.warning("store still unavailable (%s) after %.0f s, %d calls failed or skipped: %s", component,
                        now - met.since, met.calls, self.error)

    async def _find_end(self) -> None:
        while True:
            await asyncio.sleep(self.probe_s)
            try:
                await self.ping()
            except STORE_ERRORS as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                now = self.clock()
                for component, met in self._met.items():
                    self._remind(component, met, now)
            else:
                break
        now = self.clock()
        for component, met in self._met.items():
            log.info("store available again (%s) after %.1f s; %d calls failed or skipped meanwhile", component,
                     now - met.since, met.calls)
        self._met.clear()
        self.error = None
        self._probe = None
        metrics.STORE_UP.set(1)
        self._back.set()

    async def close(self) -> None:
        """Stop probing (the gateway is stopping)."""
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
