"""Least loaded: one call per worker, to whichever of its replicas has the shortest queue.

Queue depth is read from each vLLM server's /metrics (`vllm:num_requests_waiting` plus
`vllm:num_requests_running`, cached briefly); where it is unknown, the gateway's own count of
calls in flight stands in. A worker whose replica failed is retried once on another replica.
"""

from __future__ import annotations

from pydantic import Field

from routers.base import Knobs, RouteView, Router, Step, load_key


class LeastLoadedKnobs(Knobs):
    load_cache_s: float = Field(1.0, gt=0)
    """How long a queue depth read from a vLLM server's /metrics is reused."""


class LeastLoaded(Router):
    name = "least_loaded"
    knobs = LeastLoadedKnobs
    reads_queue_depth = True
    replayable = False

    def first(self, view: RouteView) -> list[str]:
        return [state.name for state in view.open_groups()]

    def more(self, view: RouteView) -> Step:
        retry = []
        for group in {view.members[n].group for n in view.asked if n in view.members} - view.answered_groups:
            spare = [s for s in view.members.values() if s.group == group and s.usable and s.name not in view.asked]
            if spare:
                retry.append(min(spare, key=load_key).name)
        return Step(call=retry) if retry else Step(stop="exhausted")
