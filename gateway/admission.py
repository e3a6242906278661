"""Admission control: refuse overload at the door (429 with Retry-After) instead of queueing it.

Why: work admitted beyond capacity waits until every deadline passes, takes others down with it and
opens breakers of healthy members (issue 20: at 5x, 297 of 321 requests got 503 after the deadline,
none a 429; with the gateway's CPU full, p50 14.6 s). Two capacities are checked, each from live
figures, as adaptive limiters do (Envoy's adaptive concurrency, Netflix's concurrency-limits) but
against the one bound the contract names, the ensemble's deadline:

* the gateway's own: requests in progress are limited to what keeps its event loop within
  `max_loop_lag_ms`, and the excess is refused before the app runs (gateway/server/loop_gate.py,
  gateway/server/connections.py; gateway/server/listener.py accepts every waiting connection so none waits unseen);
* the members': a call waits in the gateway for one of a member's `max_concurrency` slots, and the
  queue drains at the member's recent latency; an item is admitted only when at least `quorum`
  members could answer it within `HEADROOM` of its deadline. Nothing queues past what can be answered,
  so the gateway's own queueing never turns into member timeouts or open breakers. An admitted item counts
  against every member of its ensemble at once, before its calls start (a cascade that asks fewer is
  counted as if it asked all: refused a little early rather than late).

Counters are plain ints, the event loop being the only writer. Batch lines skip the member check: the
batch worker bounds them itself and they may wait.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from gateway import metrics
from gateway.config import Ensemble, GatewaySettings
from gateway.errors import APIError
from gateway.upstream.client import Upstreams

RETRY_AFTER_S = 1
HEADROOM = 0.8
"""Share of an ensemble's deadline that predicted member queueing plus latency may take: the estimate is a
moving average, and a call finished just before the deadline leaves no time for aggregation."""


class Admission:
    def __init__(self, settings: GatewaySettings, upstreams: Upstreams) -> None:
        self.per_ensemble = settings.max_items_in_flight
        self.per_tenant = settings.max_items_in_flight_per_key
        self.upstreams = upstreams
        self.ensembles: dict[str, int] = defaultdict(int)
        self.tenants: dict[str, int] = defaultdict(int)
        self.members: dict[str, int] = defaultdict(int)
        """Admitted items that may call each member: counted at once, before their calls start."""

    @contextmanager
    def admit(self, ensemble: Ensemble, tenant: str, by_capacity: bool = True) -> Iterator[None]:
        name = ensemble.name
        if self.ensembles[name] >= self.per_ensemble:
            self._refuse(name, "ensemble", f"ensemble {name!r} is answering {self.per_ensemble} items at once",
                         RETRY_AFTER_S)
        if self.tenants[tenant] >= self.per_tenant:
            self._refuse(name, "key", f"this key has {self.per_tenant} items in flight at once", RETRY_AFTER_S)
        if by_capacity:
            self._members_can_answer(ensemble)
        self.ensembles[name] += 1
        self.tenants[tenant] += 1
        for member in ensemble.members:
            self.members[member] += 1
        try:
            yield
        finally:
            self.ensembles[name] -= 1
            self.tenants[tenant] -= 1
            for member in ensemble.members:
                self.members[member] -= 1

    def _members_can_answer(self, ensemble: Ensemble) -> None:
        """Refuse when fewer than `quorum` usable members could answer a new item within its deadline. Too few
        usable members is not overload: that item gets its 503 `quorum_not_met` with the breaker's hint."""
        finishes = sorted(self._finish_s(name) for name in ensemble.members if self.upstreams.usable(name))
        if len(finishes) < ensemble.quorum:
            return
        budget = ensemble.deadline_s * HEADROOM
        late = finishes[ensemble.quorum - 1] - budget
        if late > 0:
            retry = RETRY_AFTER_S if math.isinf(late) else max(RETRY_AFTER_S, math.ceil(late))
            self._refuse(ensemble.name, "members", f"its members cannot answer another item within the "
                         f"{ensemble.deadline_s:g}s deadline of ensemble {ensemble.name!r}", retry)

    def _finish_s(self, name: str) -> float:
        """When a call to `name` sent now would end; 0 for an idle member, whose next answer refreshes the estimate."""
        stats = self.upstreams.clients[name].stats
        ahead = max(stats.in_flight, self.members[name])
        return 0.0 if ahead == 0 else stats.finish_s(ahead)

    @staticmethod
    def _refuse(ensemble: str, limit: str, why: str, retry_after_s: int) -> None:
        metrics.child(metrics.ADMISSION_REFUSED, ensemble, limit).inc()
        raise APIError(429, f"overloaded: {why}; retry after {retry_after_s}s", code="overloaded",
                       type="rate_limit_error", headers={"Retry-After": str(retry_after_s)})
