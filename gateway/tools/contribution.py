"""What each member adds to the crowd: `auto`'s accuracy on held-out items with and without it.

Shared by `crowd-gateway eval` (prints it) and `crowd-gateway tune` (recommends dropping the members
that do not help). A member whose removal costs nothing is paying for calls that do not change labels,
or is a near copy of another member.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ensembles.aggregators import get_aggregator, pick
from ensembles.aggregators.base import MIN_GOLD
from ensembles.refit import refit
from ensembles.votes import Vote

WireVotes = Mapping[str, Sequence[Mapping[str, Any]]]
"""Each item's votes as the gateway answers them (`annotation.votes`)."""


def auto_accuracy(votes: WireVotes, labels: Sequence[str], gold: Mapping[str, str], test: Mapping[str, str],
                  exclude: str | None = None) -> float:
    """Accuracy on `test` of `auto` fitted by the gateway's own refit on every vote and `gold`, without `exclude`."""
    kept = {i: [v for v in vs if v["member"] != exclude] for i, vs in votes.items()}
    params = refit("auto", kept, labels, dict(gold), MIN_GOLD)
    agg = get_aggregator("auto")
    right = sum(labels[pick(agg.posterior([Vote.from_wire(v, len(labels)) for v in kept.get(i, [])], labels, params))] == t
                for i, t in test.items())
    return right / max(len(test), 1)


def contributions(votes: WireVotes, labels: Sequence[str], gold: Mapping[str, str],
                  test: Mapping[str, str]) -> tuple[float, dict[str, float]]:
    """`auto`'s accuracy with every member, and per member the accuracy lost without it (<= 0: it does not help)."""
    members = sorted({v["member"] for vs in votes.values() for v in vs})
    with_all = auto_accuracy(votes, labels, gold, test)
    return with_all, {m: round(with_all - auto_accuracy(votes, labels, gold, test, exclude=m), 6) for m in members}


def unhelpful(contribution: Mapping[str, float]) -> list[str]:
    """Members whose removal loses nothing, least useful first."""
    return [m for m, value in sorted(contribution.items(), key=lambda kv: kv[1]) if value <= 0]


def print_contributions(with_all: float, contribution: Mapping[str, float], gold: int, test: int) -> None:
    print(f"\nMarginal contribution (auto fitted on {gold} gold items, scored on {test}; with every member "
          f"{with_all:.3f}):\n| member | accuracy lost without it |\n|---|---|")
    for member, value in sorted(contribution.items(), key=lambda kv: -kv[1]):
        hint = "  (does not help: consider dropping it)" if value <= 0 else ""
        print(f"| {member} | {100 * value:+.1f} pts{hint} |")
