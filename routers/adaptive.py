"""Adaptive cascade: ask the workers with the best reliability per dollar first, widen only while unsure.

After each wave the annotator recomputes the (calibrated) posterior; the cascade stops as soon
as confidence reaches `routing.target` with a quorum of valid votes, otherwise asks the next
`routing.widen` workers, never beyond `routing.max_cost_usd`. When every worker has answered
below target the annotator applies the ensemble's escalation policy. Most items are easy: two
cheap members that agree settle them (FrugalGPT's cascade, CoAnnotating's allocation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import Field

from ensembles.odds import log_odds
from routers.base import TARGETS, Knobs, MemberState, RouteView, Router, Step

PRICE_WEIGHTS = (1.0, 0.5, 0.0)
"""tune's grid of `price_weight`: reliability per dollar (1), most reliable first (0), and between."""


class CascadeKnobs(Knobs):
    """What a cascade reads after each wave: when to stop, how many to add, how to rank."""

    target: float = Field(0.9, gt=0, le=1)
    """Stop asking once the (calibrated) confidence reaches this."""
    widen: int = Field(1, ge=1)
    """Workers added by each further wave."""
    price_weight: float = Field(1.0, ge=0, le=1)
    """How much price counts when ranking workers, information / cost**w: 1 asks the best reliability per
    dollar first (fewest dollars), 0 the most reliable first (fewest calls: for a self-hosted pool,
    where a call's real cost is GPU time)."""


class AdaptiveKnobs(CascadeKnobs):
    start: int = Field(2, ge=1)
    """Workers asked in the first wave."""


def value(state: MemberState, n_labels: int, price_weight: float = 1.0) -> tuple[float, float]:
    """Sort key, higher first: information (log-odds of being right) over cost**price_weight, then information."""
    info = log_odds(state.reliability, n_labels)
    price = state.cost_usd ** price_weight if price_weight > 0 else 1.0
    per_price = info / price if price > 0 else (math.inf if info > 0 else 0.0)
    return per_price, info


def ranked(view: RouteView) -> list[MemberState]:
    """Workers not asked yet, best reliability per dollar first (config order breaks ties)."""
    knobs = view.knobs
    weight = knobs.price_weight if isinstance(knobs, CascadeKnobs) else 1.0
    return sorted(view.open_groups(), key=lambda s: value(s, view.n_labels, weight), reverse=True)


def affordable(candidates: list[MemberState], budget: float, count: int) -> list[str]:
    """Up to `count` candidates, in order, whose summed expected cost stays within `budget`."""
    chosen: list[str] = []
    for state in candidates:
        if len(chosen) == count:
            break
        if state.cost_usd <= budget:
            chosen.append(state.name)
            budget -= state.cost_usd
    return chosen


class Adaptive(Router):
    name = "adaptive"
    knobs = AdaptiveKnobs

    @classmethod
    def tunables(cls, quorum: int, n_members: int) -> dict[str, Sequence[float]]:
        return {"start": range(quorum, n_members + 1), "target": TARGETS, "price_weight": PRICE_WEIGHTS}

    def first(self, view: RouteView) -> list[str]:
        knobs = view.knobs
        assert isinstance(knobs, AdaptiveKnobs)
        count = max(knobs.start, view.quorum)
        return affordable(ranked(view), view.remaining_budget(), count)

    def more(self, view: RouteView) -> Step:
        routing = view.knobs
        assert isinstance(routing, CascadeKnobs)
        quorum = view.quorum
        if view.valid_votes >= quorum and view.confidence >= routing.target:
            return Step(stop="confident")
        candidates = ranked(view)
        if not candidates:
            return Step(stop="exhausted")
        call = affordable(candidates, view.remaining_budget(), max(routing.widen, quorum - view.valid_votes))
        return Step(call=call) if call else Step(stop="budget")
