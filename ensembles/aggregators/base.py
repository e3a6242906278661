"""The one aggregator interface: one typed fit input, an online posterior on the request path.

Why split: the request path must stay a few vector operations (microseconds), while learning
member reliability (crowd-kit's EM algorithms, scikit-learn) takes seconds and runs in the background.
An aggregator is a class with `combine` (reads fitted parameters, never fits) and `fit(FitData)`, which
returns new parameters as plain JSON-able data, so they can be published to a store that several gateway
replicas share.

What every answer goes through, whatever the aggregator (`posterior`): the LLM members' votes are
debiased (ensembles/debias.py) and tempered (ensembles/temperature.py) with the published parameters,
combined by the aggregator, the result is tempered as a whole to its fitted calibration, and the people's
votes on the item join last (ensembles/humans.py). So a person's label counts under every aggregator,
a single-member choice of `auto` included.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, ClassVar, Literal

from ensembles.debias import debias
from ensembles.humans import join
from ensembles.temperature import temper_all
from ensembles.votes import HUMAN_PREFIX, Vote

Params = Mapping[str, Any]
"""Fitted parameters as JSON-able data (e.g. per-member skills or confusion matrices)."""

Triple = tuple[str, str, str]
"""(item id, member, label): one hard vote, the unit crowd-kit fits on."""

Metric = Literal["accuracy", "balanced_accuracy", "macro_f1"]
"""What a fit that chooses (auto) or weighs classes (stacking) optimises: the user's measure of a good label."""

DEFAULT_SKILL = 0.7
"""One-coin accuracy assumed for a member the fitted model has not seen (or before any fit)."""

MIN_GOLD = 20
"""Fewest gold items anything is fitted on (temperatures, stacking, auto's choice) unless the refit says otherwise."""

ItemVotes = Mapping[str, Sequence[Vote]]
"""Each item's valid votes, soft ones included."""

_UNFITTED: Params = {}


@dataclass(frozen=True)
class FitData:
    """Everything a fit may learn from, in one place.

    `votes` are the LLM members' valid votes per item, as the aggregator's `combine` will see them (debiased and
    tempered by the refit); `humans` the people's votes per item (ensembles/humans.py fits them, after the
    aggregator); `gold` known true labels; `groups` maps a member to its look-alike group (members serving one
    model: their mistakes are shared, so a fit may learn the group's direction once); `metric` what a choice or
    a class weighting optimises.
    """

    labels: tuple[str, ...]
    votes: ItemVotes
    gold: Mapping[str, str] = field(default_factory=dict)
    humans: ItemVotes = field(default_factory=dict)
    groups: Mapping[str, str] = field(default_factory=dict)
    min_gold: int = MIN_GOLD
    metric: Metric = "accuracy"

    @classmethod
    def of(cls, votes: ItemVotes | Sequence[Triple], labels: Sequence[str], gold: Mapping[str, str] | None = None,
           **kwargs: Any) -> FitData:
        """From item votes or hard (item, member, label) triples; human votes are split out of the item votes."""
        if not isinstance(votes, Mapping):
            by_item: dict[str, list[Vote]] = {}
            for item, member, label in votes:
                by_item.setdefault(item, []).append(Vote(member=member, label=label))
            votes = by_item
        llm, people = split_items(votes)
        return cls(tuple(labels), llm, dict(gold or {}), people, **kwargs)

    def with_gold(self, gold: Mapping[str, str]) -> FitData:
        return replace(self, gold=gold)

    @cached_property
    def triples(self) -> list[Triple]:
        """Hard (item, member, label) votes: what crowd-kit fits on."""
        return [(item, v.member, v.label) for item, votes in self.votes.items() for v in votes if v.label is not None]

    @cached_property
    def gold_items(self) -> list[str]:
        """Items with a gold label of the set and at least one vote, sorted."""
        return sorted(i for i, g in self.gold.items() if g in self.labels and self.votes.get(i))


class Aggregator(ABC):
    """Turns the votes on one item into a distribution over the label set."""

    name: ClassVar[str]
    uses_gold: ClassVar[bool] = False
    """`fit` reads `gold`: its posteriors on gold items are scored out of fold (crossval.py), never in sample."""

    def posterior(self, votes: Sequence[Vote], labels: Sequence[str], params: Params | None = None) -> list[float]:
        """P(true label = labels[k] | votes), in label-set order; abstaining votes are ignored. See the module
        docstring for the steps; `params` is what the refit published (None before any fit)."""
        llm, people = split(votes)
        if params:
            if biases := params.get("biases"):
                llm = debias(llm, biases, labels)
            if temperatures := params.get("temperatures"):
                llm = temper_all(llm, temperatures)
        return join(self.combine(llm, labels, params), people, labels, params or _UNFITTED)

    @abstractmethod
    def combine(self, votes: Sequence[Vote], labels: Sequence[str], params: Params | None = None) -> list[float]:
        """The LLM members' votes (already debiased and tempered) -> a distribution: what each aggregator defines."""

    def fit(self, data: FitData) -> Params | None:
        """Learn parameters off the request path; None when the algorithm has nothing to learn."""
        return None

    def accuracies(self, params: Params | None, labels: Sequence[str]) -> dict[str, float]:
        """Each fitted member's probability of answering right, read from `params` (routers rank by it).

        Members absent from the result are unknown: callers assume DEFAULT_SKILL.
        """
        return {}


def is_human(member: str) -> bool:
    return member.startswith(HUMAN_PREFIX)


def split(votes: Sequence[Vote]) -> tuple[Sequence[Vote], list[Vote]]:
    """(LLM members' votes, people's valid votes); the same sequence when no person voted (the usual case)."""
    if not any(v.member.startswith(HUMAN_PREFIX) for v in votes):
        return votes, []
    return ([v for v in votes if not v.member.startswith(HUMAN_PREFIX)],
            [v for v in votes if v.member.startswith(HUMAN_PREFIX) and v.label is not None])


def split_items(item_votes: ItemVotes) -> tuple[dict[str, list[Vote]], dict[str, list[Vote]]]:
    """`split` over every item, valid votes only: (LLM votes by item, people's votes by item with any)."""
    llm: dict[str, list[Vote]] = {}
    people: dict[str, list[Vote]] = {}
    for item, votes in item_votes.items():
        mine, theirs = split([v for v in votes if v.label is not None])
        if mine:
            llm[item] = list(mine)
        if theirs:
            people[item] = theirs
    return llm, people


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
