"""Admission control: refuse overload at the door (429 with Retry-After) instead of queueing it.

Why: a request admitted beyond what the members can answer waits until every deadline passes,
takes others down with it and opens breakers of healthy members. Counting items in flight per
ensemble and per tenant is enough to keep goodput near capacity; counters are plain ints, the
event loop being the only writer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from gateway import metrics
from gateway.errors import APIError

RETRY_AFTER_S = 1


class Admission:
    def __init__(self, per_ensemble: int, per_tenant: int) -> None:
        self.per_ensemble = per_ensemble
        self.per_tenant = per_tenant
        self.ensembles: dict[str, int] = defaultdict(int)
        self.tenants: dict[str, int] = defaultdict(int)

    @contextmanager
    def admit(self, ensemble: str, tenant: str) -> Iterator[None]:
        if self.ensembles[ensemble] >= self.per_ensemble:
            self._refuse(ensemble, "ensemble", f"ensemble {ensemble!r} is answering {self.per_ensemble} items")
        if self.tenants[tenant] >= self.per_tenant:
            self._refuse(ensemble, "key", f"this key has {self.per_tenant} items in flight")
        self.ensembles[ensemble] += 1
        self.tenants[tenant] += 1
        try:
            yield
        finally:
            self.ensembles[ensemble] -= 1
            self.tenants[tenant] -= 1

    @staticmethod
    def _refuse(ensemble: str, limit: str, why: str) -> None:
        metrics.child(metrics.ADMISSION_REFUSED, ensemble, limit).inc()
        raise APIError(429, f"overloaded: {why} at once; retry after {RETRY_AFTER_S}s", code="overloaded",
                       type="rate_limit_error", headers={"Retry-After": str(RETRY_AFTER_S)})
