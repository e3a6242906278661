"""Admission by capacity (gateway/admission.py) and the loop gate (gateway/server/loop_gate.py), in this process.

The member check reads live member figures (calls in the gateway, latency), set here by hand; the loop gate
is driven by real CPU work on a private event loop: a callback that keeps the CPU busy makes the loop late.
"""

from __future__ import annotations

import asyncio
import math
import time
from contextlib import ExitStack

import pytest

from gateway.server import loop_gate
from gateway.admission import Admission
from gateway.config import GatewaySettings, parse_config
from gateway.errors import APIError
from gateway.server.loop_gate import LoopGate
from gateway.upstream.client import Upstreams


def pool(max_concurrency: int = 8, deadline_s: float = 5.0, quorum: int = 2) -> tuple[Admission, Upstreams, object]:
    config = parse_config({
        "members": [{"name": n, "base_url": "http://127.0.0.1:9/v1", "model": n, "max_concurrency": max_concurrency}
                    for n in ("a", "b", "c")],
        "ensembles": [{"name": "crowd", "members": ["a", "b", "c"], "quorum": quorum, "deadline_s": deadline_s}]})
    upstreams = Upstreams(config.members, config.gateway.breaker)
    return Admission(config.gateway, upstreams), upstreams, config.ensembles[0]


def busy(upstreams: Upstreams, name: str, in_flight: int, service_s: float | None) -> None:
    stats = upstreams.clients[name].stats
    stats.in_flight = in_flight
    stats.service_s = service_s


def refusal(admission: Admission, ensemble: object) -> APIError:
    with pytest.raises(APIError) as caught:
        with admission.admit(ensemble, "t"):  # type: ignore[arg-type]
            pass
    return caught.value


def test_an_item_the_members_can_answer_within_the_deadline_is_admitted() -> None:
    admission, upstreams, crowd = pool()
    for name in "abc":
        busy(upstreams, name, in_flight=24, service_s=1.0)  # 17 calls ahead drain in ~2.1 s, +1 s: 3.1 s < 4 s
    with admission.admit(crowd, "t"):  # type: ignore[arg-type]
        assert admission.members == {"a": 1, "b": 1, "c": 1}
    assert admission.members == {"a": 0, "b": 0, "c": 0}


def test_an_item_past_the_members_queues_is_refused_with_the_wait_as_retry_after() -> None:
    admission, upstreams, crowd = pool()
    for name in "abc":
        busy(upstreams, name, in_flight=47, service_s=1.0)  # a call sent now would end in 6 s; 4 s is 80% of 5 s
    error = refusal(admission, crowd)
    assert error.status == 429 and error.code == "overloaded" and error.type == "rate_limit_error"
    assert error.headers == {"Retry-After": "2"}
    assert "5s deadline" in error.message
    assert admission.members == {"a": 0, "b": 0, "c": 0}, "a refused item holds nothing"


def test_quorum_members_with_room_are_enough() -> None:
    admission, upstreams, crowd = pool(quorum=2)
    busy(upstreams, "a", in_flight=200, service_s=1.0)
    busy(upstreams, "b", in_flight=0, service_s=1.0)
    busy(upstreams, "c", in_flight=3, service_s=1.0)
    with admission.admit(crowd, "t"):  # type: ignore[arg-type]
        pass
    busy(upstreams, "c", in_flight=200, service_s=1.0)
    assert refusal(admission, crowd).status == 429


def test_before_a_members_first_answer_nothing_queues_for_it() -> None:
    admission, upstreams, crowd = pool(max_concurrency=2, quorum=3)
    for name in "abc":
        busy(upstreams, name, in_flight=0, service_s=None)
    with admission.admit(crowd, "t"), admission.admit(crowd, "t"):  # type: ignore[arg-type]
        error = refusal(admission, crowd)  # a third call would wait for a slot, for how long nobody knows yet
    assert error.headers == {"Retry-After": "1"}


def test_an_idle_member_is_always_tried_even_when_it_was_slow() -> None:
    admission, upstreams, crowd = pool(quorum=3)
    for name in "abc":
        busy(upstreams, name, in_flight=0, service_s=30.0)  # slower than the deadline: its next answer updates that
    with admission.admit(crowd, "t"):  # type: ignore[arg-type]
        pass


def test_items_admitted_but_not_yet_calling_count_against_the_members() -> None:
    """Requests that arrive in one loop turn are admitted before any of them has called a member."""
    admission, upstreams, crowd = pool(max_concurrency=1, deadline_s=5.0, quorum=3)
    for name in "abc":
        busy(upstreams, name, in_flight=0, service_s=1.0)
    admitted = 0
    with ExitStack() as held:
        with pytest.raises(APIError):
            while True:
                held.enter_context(admission.admit(crowd, "t"))  # type: ignore[arg-type]
                admitted += 1
        assert admission.members == {"a": 4, "b": 4, "c": 4}
    assert admitted == 4, "1 s calls one at a time: 4 end within 80% of a 5 s deadline"
    assert admission.members == {"a": 0, "b": 0, "c": 0}


def test_too_few_usable_members_is_not_overload() -> None:
    """An ensemble short of members answers 503 quorum_not_met with the breaker's hint, not 429."""
    admission, upstreams, crowd = pool(quorum=2)
    for name in "ab":
        for _ in range(5):
            upstreams.clients[name].breaker.failure()
    busy(upstreams, "c", in_flight=500, service_s=1.0)
    with admission.admit(crowd, "t"):  # type: ignore[arg-type]
        pass


def test_batch_lines_wait_instead_of_being_refused() -> None:
    admission, upstreams, crowd = pool()
    for name in "abc":
        busy(upstreams, name, in_flight=500, service_s=1.0)
    with admission.admit(crowd, "t", by_capacity=False):  # type: ignore[arg-type]
        pass


def test_the_members_latency_is_their_own_not_the_gateways_queue() -> None:
    from gateway.upstream.member_stats import MemberStats

    _, upstreams, _ = pool()
    stats: MemberStats = upstreams.clients["a"].stats
    stats.answered(1.0)
    stats.answered(2.0)
    assert stats.service_s == pytest.approx(1.2)
    assert stats.finish_s(ahead=7) == pytest.approx(1.2), "a free slot: its latency alone"
    assert stats.finish_s(ahead=15) == pytest.approx(1.2 * 2), "8 calls ahead drain in one latency"
    assert math.isinf(MemberStats(stats.member).finish_s(ahead=8))


def spin_cpu(seconds: float) -> None:
    """Keep this process's CPU busy for `seconds` of CPU time (not wall time: another process may run meanwhile)."""
    until = time.process_time() + seconds
    while time.process_time() < until:
        pass


def test_the_loop_gate_cuts_its_limit_when_its_own_work_makes_the_loop_late() -> None:
    async def scenario() -> tuple[float, list[bool]]:
        gate = LoopGate(max_lag_s=0.05)
        assert all(gate.admit() for _ in range(10)) and gate.limit == math.inf
        asyncio.get_running_loop().call_soon(spin_cpu, 0.2)  # the gateway's own work holds the loop
        while gate.lag_s == 0.0:
            await asyncio.sleep(0.005)
        cut = gate.limit
        more = [gate.admit() for _ in range(3)]
        for _ in range(gate.active):
            gate.leave()
        return cut, more

    cut, more = asyncio.run(scenario())
    assert cut == pytest.approx(8.0), "a fifth below the 10 that were running"
    assert more == [False, False, False], "nothing more while 10 run against a limit of 8"


def test_the_loop_gate_climbs_back_while_on_time_and_lifts_after_idling(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> tuple[float, float]:
        gate = LoopGate(max_lag_s=0.05)
        gate.admit()
        gate.limit = 1.0  # as after a cut: the one request in progress reaches it
        while gate.limit == 1.0:
            await asyncio.sleep(0.005)
        raised = gate.limit
        gate.leave()
        gate._idle_since -= loop_gate.IDLE_RESET_S
        gate.admit()
        return raised, gate.limit

    raised, lifted = asyncio.run(scenario())
    assert raised == pytest.approx(1.05)
    assert lifted == math.inf


def test_an_idle_gateway_runs_no_probe() -> None:
    """The last request to end cancels the probe: nothing wakes an idle process."""
    async def scenario() -> list[asyncio.TimerHandle]:
        gate = LoopGate()
        gate.admit()
        gate.admit()
        gate.leave()
        gate.leave()
        return [t for t in asyncio.get_running_loop()._scheduled if not t.cancelled()]  # type: ignore[attr-defined]

    assert asyncio.run(scenario()) == []


def test_the_loop_lag_limit_is_a_setting() -> None:
    assert GatewaySettings().max_loop_lag_ms == 50.0
