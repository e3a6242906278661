"""Per-member circuit breaker: closed -> open after N consecutive failures -> half-open probe.

Why: a dead member must cost nothing. While open, calls are refused at once instead of waiting
for a timeout; after `reset_after_s` one probe call is let through, and its outcome closes or
re-opens the circuit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum


class State(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, reset_after_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False
        self._state = State.CLOSED

    @property
    def state(self) -> State:
        if self._state is State.OPEN and self.clock() - self.opened_at >= self.reset_after_s:
            return State.HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """May a call go out now? In half-open only one probe at a time."""
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.HALF_OPEN and not self.probing:
            self.probing = True
            self._state = State.HALF_OPEN
            return True
        return False

    def would_allow(self) -> bool:
        """Like `allow` but without claiming the half-open probe (for planning)."""
        state = self.state
        return state is State.CLOSED or (state is State.HALF_OPEN and not self.probing)

    def success(self) -> None:
        self.failures = 0
        self.probing = False
        self._state = State.CLOSED

    def cancelled(self) -> None:
        """A call ended without an outcome (the deadline cut it): free the probe slot."""
        self.probing = False

    def failure(self) -> None:
        self.probing = False
        self.failures += 1
        if self._state is State.HALF_OPEN or self.failures >= self.failure_threshold:
            self._state = State.OPEN
            self.opened_at = self.clock()
