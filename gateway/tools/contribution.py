"""What each member adds to the crowd: `auto`'s accuracy on held-out items with it minus without it, with a 95%
interval from the paired per-item differences.

Shared by `crowd-gateway eval` (prints it) and `crowd-gateway tune` (recommends dropping a member only when the
crowd is measurably more accurate without it: enough scored items and an interval below zero; issue 23: six members
recommended for dropping on 4 items, the whole ensemble). A member whose interval holds zero has no measurable
effect on these items: it may be a near copy of another member, or the items too few to tell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ensembles.aggregators import get_aggregator, pick
from ensembles.aggregators.base import MIN_GOLD
from ensembles.refit import refit
from ensembles.votes import Vote

WireVotes = Mapping[str, Sequence[Mapping[str, Any]]]
"""Each item's votes as the gateway answers them (`annotation.votes`)."""
MIN_ITEMS = 30
"""Scored items below which no member is recommended for dropping, whatever its interval."""
Z95 = 1.96


@dataclass(frozen=True, slots=True)
class Contribution:
    """Accuracy with the member minus accuracy without it (positive: it helps), on `items` scored items."""

    value: float
    low: float
    high: float
    items: int

    @property
    def verdict(self) -> str:
        return "helps" if self.low > 0 else "hurts" if self.high < 0 else "no measurable effect"


def auto_right(votes: WireVotes, labels: Sequence[str], gold: Mapping[str, str], test: Mapping[str, str],
               exclude: str | None = None) -> list[bool]:
    """Per `test` item, whether `auto` fitted by the gateway's own refit on every vote and `gold` (without
    `exclude`'s votes) is right."""
    kept = {i: [v for v in vs if v["member"] != exclude] for i, vs in votes.items()}
    params = refit("auto", kept, labels, dict(gold), MIN_GOLD)
    agg = get_aggregator("auto")
    return [labels[pick(agg.posterior([Vote.from_wire(v, len(labels)) for v in kept.get(i, [])], labels, params))] == t
            for i, t in test.items()]


def paired(with_it: Sequence[bool], without: Sequence[bool]) -> Contribution:
    """Mean of the per-item differences with a normal 95% interval (zero width when every item agrees)."""
    diffs = [int(a) - int(b) for a, b in zip(with_it, without, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n if n else 0.0
    spread = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else math.inf
    return Contribution(round(mean, 6), round(mean - Z95 * spread, 6), round(mean + Z95 * spread, 6), n)


def contributions(votes: WireVotes, labels: Sequence[str], gold: Mapping[str, str],
                  test: Mapping[str, str]) -> tuple[float, dict[str, Contribution]]:
    """`auto`'s accuracy with every member, and each member's contribution to it."""
    members = sorted({v["member"] for vs in votes.values() for v in vs})
    with_all = auto_right(votes, labels, gold, test)
    accuracy = sum(with_all) / max(len(with_all), 1)
    return accuracy, {m: paired(with_all, auto_right(votes, labels, gold, test, exclude=m)) for m in members}


def droppable(contribution: Mapping[str, Contribution], keep: int = 1) -> list[str]:
    """Members the crowd is measurably more accurate without (enough items, interval below zero), most harmful first,
    leaving at least `keep` members (never the whole ensemble)."""
    hurting = sorted((m for m, c in contribution.items() if c.items >= MIN_ITEMS and c.verdict == "hurts"),
                     key=lambda m: contribution[m].value)
    return hurting[:max(len(contribution) - max(keep, 1), 0)]


def print_contributions(with_all: float, contribution: Mapping[str, Contribution], gold: int, test: int) -> None:
    print(f"\nMarginal contribution: auto fitted on {gold} gold items, scored on {test}; with every member "
          f"{with_all:.3f}. Each row is auto's accuracy with the member minus without it: positive, the crowd is "
          f"more accurate with it; negative, without it; an interval that holds 0, no measurable effect on these "
          f"items.\n| member | with it minus without it | 95% interval | verdict |\n|---|---|---|---|")
    for member, c in sorted(contribution.items(), key=lambda kv: -kv[1].value):
        print(f"| {member} | {100 * c.value:+.1f} pts | {100 * c.low:+.1f} to {100 * c.high:+.1f} pts | {c.verdict} |")
