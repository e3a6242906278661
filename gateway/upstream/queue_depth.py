"""Queue depth of vLLM servers, read from their Prometheus /metrics and cached briefly.

vLLM exports `vllm:num_requests_waiting` and `vllm:num_requests_running` per engine; their sum
is how much work a new request queues behind. Reads are asynchronous, deduplicated per member
and bounded by a short timeout, so a slow or missing /metrics costs the request path at most that
timeout once per cache period; the routers then fall back to the gateway's in-flight counts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from prometheus_client.parser import text_string_to_metric_families

from gateway.upstream.client import Upstreams

QUEUE_METRICS = frozenset({"vllm:num_requests_waiting", "vllm:num_requests_running"})
READ_TIMEOUT_S = 0.25


def parse_queue_depth(text: str) -> float | None:
    """Waiting plus running requests over all engines of one server; None if it exports neither."""
    found = [s.value for family in text_string_to_metric_families(text) if family.name in QUEUE_METRICS
             for s in family.samples]
    return sum(found) if found else None


class QueueDepths:
    def __init__(self, upstreams: Upstreams, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.upstreams = upstreams
        self.clock = clock
        self.ttl_s = ttl_s
        self._values: dict[str, tuple[float, float | None]] = {}
        self._reads: dict[str, asyncio.Future[None]] = {}

    def get(self, name: str) -> float | None:
        hit = self._values.get(name)
        return hit[1] if hit is not None else None

    async def refresh(self, names: Iterable[str]) -> None:
        """Re-read the stale members among `names` (vLLM dialect only), concurrently."""
        now = self.clock()
        reads = []
        for name in names:
            if self.upstreams.member(name).dialect != "vllm":
                continue
            hit = self._values.get(name)
            if hit is not None and now - hit[0] < self.ttl_s:
                continue
            if name not in self._reads:
                self._reads[name] = asyncio.ensure_future(self._read(name))
            reads.append(self._reads[name])
        if reads:
            await asyncio.gather(*reads)

    async def _read(self, name: str) -> None:
        depth: float | None = None
        try:
            reply = await self.upstreams.get(name, "/metrics", READ_TIMEOUT_S)
            if reply is not None and reply.status == 200:
                depth = parse_queue_depth(reply.body.decode(errors="replace"))
        except ValueError:
            depth = None
        finally:
            self._values[name] = (self.clock(), depth)
            self._reads.pop(name, None)
