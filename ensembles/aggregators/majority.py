"""Majority vote: each valid hard vote counts once."""

from __future__ import annotations

from collections.abc import Sequence

from ensembles.aggregators.base import Aggregator, Params, hard_counts, normalise
from ensembles.votes import Vote


class Majority(Aggregator):
    name = "majority"

    def combine(self, votes: Sequence[Vote], labels: Sequence[str], params: Params | None = None) -> list[float]:
        return normalise(hard_counts(votes, labels))
