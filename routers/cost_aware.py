"""Cost-aware: the cheapest set of workers whose combined learned reliability reaches the target.

Combined reliability is the probability that the set's log-odds-weighted vote is right when
each worker is independently right with its learned accuracy; errors are treated as if they all
fell on one wrong label, so for more than two labels the figure is a lower bound. Sets are tried
cheapest first within `routing.max_cost_usd`; if none reaches `routing.target`, the most reliable
affordable set is asked. After it answers, an item still below target widens like the adaptive
cascade, within the same cap.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import lru_cache

from ensembles.odds import log_odds
from routers.adaptive import Adaptive, CascadeKnobs, ranked
from routers.base import TARGETS, MemberState, RouteView

MAX_EXACT = 12
"""Above this many workers, sets are grown greedily by reliability per dollar instead of enumerated."""


@lru_cache(maxsize=4096)
def combined_accuracy(skills: tuple[float, ...], n_labels: int) -> float:
    """P(the weighted vote of independent workers with these accuracies is right); ties count half."""
    weights = [log_odds(s, n_labels) for s in skills]
    total = 0.0
    for pattern in itertools.product((True, False), repeat=len(skills)):
        p, margin = 1.0, 0.0
        for right, skill, weight in zip(pattern, skills, weights):
            p *= skill if right else 1.0 - skill
            margin += weight if right else -weight
        total += p if margin > 1e-12 else (0.5 * p if margin > -1e-12 else 0.0)
    return total


def cheapest_set(candidates: Sequence[MemberState], n_labels: int, target: float, budget: float) -> list[str]:
    """The cheapest affordable set reaching `target`; else the most reliable affordable set."""
    if len(candidates) > MAX_EXACT:
        return _greedy(candidates, n_labels, target, budget)
    subsets = [s for r in range(1, len(candidates) + 1) for s in itertools.combinations(candidates, r)]
    subsets = [s for s in subsets if sum(m.cost_usd for m in s) <= budget]
    subsets.sort(key=lambda s: (sum(m.cost_usd for m in s), len(s)))
    best: tuple[float, list[str]] = (-1.0, [])
    for subset in subsets:
        accuracy = combined_accuracy(tuple(round(m.reliability, 4) for m in subset), n_labels)
        if accuracy >= target:
            return [m.name for m in subset]
        if accuracy > best[0] + 1e-12:
            best = (accuracy, [m.name for m in subset])
    return best[1]


def _greedy(candidates: Sequence[MemberState], n_labels: int, target: float, budget: float) -> list[str]:
    chosen: list[MemberState] = []
    for state in candidates:
        if state.cost_usd > budget:
            continue
        chosen.append(state)
        budget -= state.cost_usd
        if combined_accuracy(tuple(round(m.reliability, 4) for m in chosen), n_labels) >= target:
            break
    return [m.name for m in chosen]


class CostAware(Adaptive):
    name = "cost_aware"
    knobs = CascadeKnobs

    @classmethod
    def tunables(cls, quorum: int, n_members: int) -> dict[str, Sequence[float]]:
        return {"target": TARGETS}

    def first(self, view: RouteView) -> list[str]:
        candidates = ranked(view)
        assert isinstance(view.knobs, CascadeKnobs)
        chosen = cheapest_set(candidates, view.n_labels, view.knobs.target, view.remaining_budget())
        short = view.quorum - len(chosen)
        if short > 0:
            chosen += [s.name for s in candidates if s.name not in chosen][:short]
        return chosen
