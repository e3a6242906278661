"""The routing interface: which members to ask about an item, and when to stop asking.

Why this shape: fan-out asks everyone at once; cascades and cost-aware strategies ask a few,
look at the posterior, then decide. All of them fit `first` + `more` over a `RouteView` that
holds the members' live states and the item's votes so far. Routers never parse labels or do
HTTP: the annotator asks, aggregates and hands them a fresh view after each wave, which also
lets `crowd-gateway tune` replay them offline on recorded votes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from gateway.config import Ensemble

StopReason = Literal["confident", "exhausted", "escalated", "budget", "deadline"]
"""Why an item stopped: confidence reached the target; every worker asked (or none left usable);
a stronger member was asked after that; the per-item spending cap; the ensemble deadline."""


@dataclass(slots=True, frozen=True)
class MemberState:
    """What a router may know about one member when it decides."""

    name: str
    group: str
    """Replicas of one worker share a group (`Member.group`, else the member's own name)."""
    usable: bool = True
    """Its circuit lets a call through."""
    in_flight: int = 0
    p50_s: float | None = None
    p95_s: float | None = None
    cost_usd: float = 0.0
    """Expected cost of one call."""
    reliability: float = 0.7
    """Learned probability that its answer is right (the aggregator's fitted parameters)."""
    queue_depth: float | None = None
    """Requests waiting plus running on its vLLM server, when read from its /metrics."""


@dataclass(slots=True)
class RouteView:
    """One item's routing state: the ensemble, its members' states and what was asked so far."""

    ensemble: Ensemble
    members: Mapping[str, MemberState]
    """The ensemble's members, in config order."""
    n_labels: int
    asked: list[str] = field(default_factory=list)
    answered_groups: set[str] = field(default_factory=set)
    """Groups with at least one valid vote on this item."""
    valid_votes: int = 0
    confidence: float = 0.0
    """Calibrated top posterior after the votes so far (0 before any)."""
    spent_usd: float = 0.0

    def remaining_budget(self) -> float:
        cap = self.ensemble.routing.max_cost_usd
        return float("inf") if cap is None else cap - self.spent_usd

    def open_groups(self) -> list[MemberState]:
        """One replica per worker not asked yet: the least loaded usable one, in config order of groups."""
        asked_groups = {self.members[n].group for n in self.asked if n in self.members}
        best: dict[str, MemberState] = {}
        for state in self.members.values():
            if not state.usable or state.group in asked_groups:
                continue
            current = best.get(state.group)
            if current is None or load_key(state) < load_key(current):
                best[state.group] = state
        return list(best.values())


@dataclass(slots=True, frozen=True)
class Step:
    """A router's decision after a wave: members to call next, or why it stops."""

    call: Sequence[str] = ()
    stop: StopReason | None = None


def load_key(state: MemberState) -> tuple[float, float]:
    """Lower is less loaded: the server's queue depth when known, else calls in flight; then latency."""
    depth = state.queue_depth if state.queue_depth is not None else float(state.in_flight)
    return depth, state.p50_s if state.p50_s is not None else 0.0


class Router(ABC):
    name: ClassVar[str]
    reads_queue_depth: ClassVar[bool] = False
    """True when the router wants vLLM queue depths fresh before it plans."""

    @abstractmethod
    def first(self, view: RouteView) -> list[str]:
        """Members to ask first."""

    def more(self, view: RouteView) -> Step:
        """Members to ask next given the votes so far, or a stop reason."""
        return Step(stop="exhausted")
