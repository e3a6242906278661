"""Weighted soft voting: a linear pool of each member's distribution.

A member that returned token log-probabilities contributes its soft vote; the others a one-hot
vote. Member weights come from fitted parameters (`{"weights": {member: w}}`) when published,
otherwise every member weighs 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from ensembles.aggregators.base import Aggregator, Params, normalise
from ensembles.votes import Vote


class Weighted(Aggregator):
    name = "weighted"

    def posterior(self, votes: Sequence[Vote], labels: Sequence[str], params: Params | None = None) -> list[float]:
        weights = (params or {}).get("weights", {})
        index = {label: i for i, label in enumerate(labels)}
        mass = [0.0] * len(labels)
        for vote in votes:
            if vote.label is None:
                continue
            w = float(weights.get(vote.member, 1.0))
            if vote.probs is not None and len(vote.probs) == len(labels):
                for i, p in enumerate(vote.probs):
                    mass[i] += w * p
            else:
                mass[index[vote.label]] += w
        return normalise(mass)
