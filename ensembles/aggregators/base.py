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
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ensembles.debias import debias, debias_items, fit_biases, label_prior
from ensembles.temperature import fit_temperatures, temper_votes
from ensembles.votes import Vote

Params = Mapping[str, Any]
"""Fitted parameters as JSON-able data (e.g. per-member skills or confusion matrices)."""

Triple = tuple[str, str, str]
"""(item id, member, label): one hard vote, the unit crowd-kit fits on."""

DEFAULT_SKILL = 0.7
"""One-coin accuracy assumed for a member the fitted model has not seen (or before any fit)."""

MIN_GOLD = 20
"""Fewest gold items anything is fitted on (temperatures, stacking, auto's choice) unless the refit says otherwise."""

OUT_OF_FOLD = "out_of_fold"
"""Key of `fit_params`' result holding the confidence and correctness of each gold item's posterior while that
item was held out of the fit (`auto`'s cross-validation): what the refit calibrates on instead of posteriors
on the gold the fit saw, which look surer than they are. The refit removes it before publishing."""

ItemVotes = Mapping[str, Sequence[Vote]]
"""Each item's valid votes, soft ones included: what `soft_fit` aggregators fit on."""


class Aggregator(ABC):
    """Turns the votes on one item into a distribution over the label set."""

    name: ClassVar[str]
    soft_fit: ClassVar[bool] = False
    """`fit` also takes keyword `item_votes` (ItemVotes, soft votes tempered) and `min_gold`."""
    uses_gold: ClassVar[bool] = False
    """`fit` reads `gold`; when False, the fit is the same whatever gold is given (auto fits it once)."""

    def posterior(self, votes: Sequence[Vote], labels: Sequence[str], params: Params | None = None) -> list[float]:
        """P(true label = labels[k] | votes), in label-set order; abstaining votes are ignored.

        The votes are first debiased with the fit's published member biases (ensembles/debias.py)."""
        if params and (biases := params.get("biases")):
            votes = debias(votes, biases, labels)
        return self.combine(votes, labels, params)

    @abstractmethod
    def combine(self, votes: Sequence[Vote], labels: Sequence[str], params: Params | None = None) -> list[float]:
        """`posterior` on votes already debiased: what each aggregator defines."""

    def fit(self, votes: Sequence[Triple], labels: Sequence[str], gold: Mapping[str, str] | None = None) -> Params | None:
        """Learn parameters from (item, member, label) triples, off the request path.

        `gold` maps item ids to known true labels, for the algorithms that can be anchored by
        them. Returns None when the algorithm has nothing to learn.
        """
        return None

    def fit_params(self, triples: Sequence[Triple], labels: Sequence[str], gold: Mapping[str, str],
                   item_votes: ItemVotes, min_gold: int = MIN_GOLD, debiased: bool = True) -> dict[str, Any]:
        """What a refit publishes: member biases (unless `debiased` is off), per-member temperatures fitted on
        gold, the fit on the debiased and tempered votes, vote counts."""
        biases, triples, item_votes = debiased_votes(triples, labels, item_votes, gold, debiased)
        temperatures = fit_temperatures(item_votes, labels, gold, min_gold)
        fitted = fit_tempered(self, triples, labels, gold, temper_votes(item_votes, temperatures), min_gold)
        return publishable(fitted, triples, temperatures, biases)

    def accuracies(self, params: Params | None, labels: Sequence[str]) -> dict[str, float]:
        """Each fitted member's probability of answering right, read from `params` (routers rank by it).

        Members absent from the result are unknown: callers assume DEFAULT_SKILL.
        """
        return {}


def fit_tempered(agg: Aggregator, triples: Sequence[Triple], labels: Sequence[str], gold: Mapping[str, str],
                 tempered: ItemVotes, min_gold: int) -> Params | None:
    """`agg.fit` given what it takes: soft fits get the (already tempered) votes, the others hard triples."""
    if agg.soft_fit:
        return agg.fit(triples, labels, gold, item_votes=tempered, min_gold=min_gold)  # type: ignore[call-arg]
    return agg.fit(triples, labels, gold)


def debiased_votes(triples: Sequence[Triple], labels: Sequence[str], item_votes: ItemVotes, gold: Mapping[str, str],
                   enabled: bool = True) -> tuple[dict[str, list[float]], Sequence[Triple], ItemVotes]:
    """Member biases (toward the labels' mix estimated from `gold`) and the votes as the fits should see them:
    debiased, hard triples relabelled to match."""
    biases = fit_biases(item_votes, len(labels), prior=label_prior(gold, labels)) if enabled else {}
    if not biases:
        return {}, triples, item_votes
    debiased = debias_items(item_votes, biases, labels)
    return biases, [(item, v.member, v.label) for item, votes in debiased.items() for v in votes
                    if v.label is not None], debiased


def publishable(fitted: Params | None, triples: Sequence[Triple], temperatures: Mapping[str, float],
                biases: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """A fit's parameters plus what every posterior reads: votes per member (shrinkage), temperatures, and
    the member biases the votes are divided by before anything else."""
    params = dict(fitted or {})
    params["votes_per_member"] = dict(Counter(member for _, member, _ in triples))
    if temperatures:
        params["temperatures"] = dict(temperatures)
    if biases:
        params["biases"] = {m: list(b) for m, b in biases.items()}
    return params


def votes_of(triples: Sequence[Triple]) -> dict[str, list[Vote]]:
    """Hard triples as ItemVotes, for soft fits called without soft votes."""
    out: dict[str, list[Vote]] = {}
    for item, member, label in triples:
        out.setdefault(item, []).append(Vote(member=member, label=label))
    return out


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
