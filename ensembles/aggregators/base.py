"""The one aggregator interface: an online posterior on the request path, a batch fit off it.

Why split: the request path must stay a few vector operations (microseconds), while learning
member reliability (crowd-kit's EM algorithms) takes seconds and runs in the background. An
aggregator is a class with `posterior` (reads fitted parameters, never fits) and an optional
`fit` that returns new parameters as plain JSON-able data, so they can be published to a store
that several gateway replicas share.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ensembles.votes import Vote

Params = Mapping[str, Any]
"""Fitted parameters as JSON-able data (e.g. per-member skills or confusion matrices)."""

Triple = tuple[str, str, str]
"""(item id, member, label): one hard vote, the unit crowd-kit fits on."""

DEFAULT_SKILL = 0.7
"""One-coin accuracy assumed for a member the fitted model has not seen (or before any fit)."""


class Aggregator(ABC):
    """Turns the votes on one item into a distribution over the label set."""

    name: ClassVar[str]

    @abstractmethod
    def posterior(self, votes: Sequence[Vote], labels: Sequence[str], params: Params | None = None) -> list[float]:
        """P(true label = labels[k] | votes), in label-set order; abstaining votes are ignored."""

    def fit(self, votes: Sequence[Triple], labels: Sequence[str], gold: Mapping[str, str] | None = None) -> Params | None:
        """Learn parameters from (item, member, label) triples, off the request path.

        `gold` maps item ids to known true labels, for the algorithms that can be anchored by
        them. Returns None when the algorithm has nothing to learn.
        """
        return None

    def accuracies(self, params: Params | None, labels: Sequence[str]) -> dict[str, float]:
        """Each fitted member's probability of answering right, read from `params` (routers rank by it).

        Members absent from the result are unknown: callers assume DEFAULT_SKILL.
        """
        return {}


def pick(distribution: Sequence[float]) -> int:
    """Index of the most probable label; ties go to the earliest label of the set (deterministic)."""
    best = 0
    for i in range(1, len(distribution)):
        if distribution[i] > distribution[best]:
            best = i
    return best


def hard_counts(votes: Sequence[Vote], labels: Sequence[str]) -> list[float]:
    index = {label: i for i, label in enumerate(labels)}
    counts = [0.0] * len(labels)
    for vote in votes:
        if vote.label is not None:
            counts[index[vote.label]] += 1.0
    return counts


def normalise(mass: list[float]) -> list[float]:
    """Mass -> probabilities; no mass at all means a uniform distribution (nothing is known)."""
    total = sum(mass)
    if total <= 0.0:
        return [1.0 / len(mass)] * len(mass)
    return [m / total for m in mass]


def softmax(logits: list[float]) -> list[float]:
    """Log-space scores -> probabilities, shifted by the max so nothing underflows."""
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]
