"""The circuit breaker's state machine: closed -> open -> half-open (one probe) -> closed or open, on an
injected clock."""

from __future__ import annotations

from gateway.upstream.breaker import CircuitBreaker, State
from tests.harness import Clock


def test_opens_after_threshold_and_refuses() -> None:
    b = CircuitBreaker(failure_threshold=2, reset_after_s=60)
    b.failure()
    assert b.state is State.CLOSED and b.allow()
    b.failure()
    assert b.state is State.OPEN and not b.allow()


def test_success_resets_the_count() -> None:
    b = CircuitBreaker(failure_threshold=2, reset_after_s=60)
    b.failure()
    b.success()
    b.failure()
    assert b.state is State.CLOSED


def test_half_open_lets_one_probe_through() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, reset_after_s=10, clock=clock)
    b.failure()
    clock.advance(9.9)
    assert b.state is State.OPEN and not b.allow()
    clock.advance(0.1)
    assert b.state is State.HALF_OPEN
    assert b.allow() and not b.allow()  # one probe at a time
    b.success()
    assert b.state is State.CLOSED and b.allow()


def test_failed_probe_reopens_and_cancelled_probe_frees_the_slot() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, reset_after_s=10, clock=clock)
    b.failure()
    clock.advance(10)
    assert b.allow()
    b.cancelled()
    assert b.allow()
    b.failure()
    assert b.state is State.OPEN and not b.allow()
