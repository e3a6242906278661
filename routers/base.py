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

from pydantic import BaseModel, ConfigDict, Field

StopReason = Literal["confident", "exhausted", "escalated", "budget", "deadline"]
"""Why an item stopped: confidence reached the target; every worker asked (or none left usable);
a stronger member was asked after that; the per-item spending cap; the ensemble deadline."""


TARGETS = (0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)
"""The grid `crowd-gateway tune` searches for confidence thresholds (`target`, `escalation.below`)."""


class Knobs(BaseModel):
    """The `routing:` section every strategy reads; a strategy with knobs of its own subclasses it.

    Unknown keys are errors: a knob the ensemble's router does not read must not be silently ignored.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_cost_usd: float | None = Field(None, gt=0)
    """Per-item spending cap: no wave or escalation that could take an item's cost above it."""
    hedge: bool = False
    """Duplicate a call that runs past its member's recent p95 latency to an idle replica of its group."""
    hedge_min_samples: int = Field(20, ge=1)
    """Latencies a member needs on record before its p95 is trusted for hedging."""


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
    samples: int = 0
    """Latencies on record behind p50/p95."""


@dataclass(slots=True)
class RouteView:
    """One item's routing state: the ensemble, its members' states and what was asked so far."""

    knobs: Knobs
    """The ensemble's `routing:` section, as the router's own knob model."""
    quorum: int
    members: Mapping[str, MemberState]
    """The ensemble's members, in config order."""
    n_labels: int
    asked: list[str] = field(default_factory=list)
    answered_groups: set[str] = field(default_factory=set)
    """Groups with at least one valid vote on this item."""
    valid_votes: int = 0
    confidence: float = 0.0
    """How sure the votes so far are: min(top posterior, its calibrated value); 0 before any vote.
    The minimum, because an isotonic map fitted on few gold items can lift any posterior to 1.0."""
    spent_usd: float = 0.0

    def remaining_budget(self) -> float:
        cap = self.knobs.max_cost_usd
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
    knobs: ClassVar[type[Knobs]] = Knobs
    """The model of its `routing:` section."""
    reads_queue_depth: ClassVar[bool] = False
    """True when the router wants vLLM queue depths fresh before it plans."""
    replayable: ClassVar[bool] = True
    """False when its decisions depend on live load, which `crowd-gateway tune` cannot replay offline."""

    @classmethod
    def tunables(cls, quorum: int, n_members: int) -> dict[str, Sequence[float]]:
        """Knob name -> the values `crowd-gateway tune` tries for it."""
        return {}

    @abstractmethod
    def first(self, view: RouteView) -> list[str]:
        """Members to ask first."""

    def more(self, view: RouteView) -> Step:
        """Members to ask next given the votes so far, or a stop reason."""
        return Step(stop="exhausted")
