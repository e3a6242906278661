"""Which stored items a refit reads: every gold item and every item people labelled, plus a bounded, seeded
sample of the others, half the newest and half drawn at random from the older ones.

Why: a refit that reads every stored vote costs as much as the job is long, on the store, in the gateway process
and in the refit worker (the stores' `fit_votes` never reads more than this). What is learned without gold (each
member's label bias, Dawid-Skene's confusions) is estimated as well from ten thousand items as from a million;
gold and people's labels are what the supervised parts learn from, so they are all kept. The newest items follow
a pool that drifts (a member redeployed, a prompt changed); the random ones keep the whole job in view. Both
backends pick by position in arrival order, seeded by the schema and its item count, so a refit on the same
votes reads the same items, whichever store holds them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

RECENT_SHARE = 0.5
"""Share of the sample taken from the newest items; the rest is drawn at random from the older ones."""


@dataclass(frozen=True)
class FitVotes:
    """What a refit reads: votes by item (gold, people's, sampled), and how many items the schema stores."""

    votes: dict[str, list[dict[str, Any]]]
    stored_items: int


def sample_positions(schema: str, total: int, max_items: int) -> tuple[range, list[int]]:
    """(the newest positions, sorted random older ones) among `total` items in arrival order (0 the oldest):
    every position when `total` <= `max_items`."""
    if total <= max_items:
        return range(total), []
    recent = int(max_items * RECENT_SHARE)
    older = total - recent
    return range(older, total), sorted(random.Random(f"{schema}:{total}").sample(range(older), max_items - recent))
