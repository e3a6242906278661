"""Seeded simulated crowds for the unit tests: independent members, look-alike blocks, sparse humans."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from ensembles.aggregators import get_aggregator, pick
from ensembles.aggregators.base import Params
from ensembles.simulation import SimulatedWorker
from ensembles.votes import Vote

LABELS = ["positive", "negative"]
Crowd = tuple[dict[str, str], dict[str, list[Vote]]]
"""(truth by item, valid votes by item)."""


def crowd(members: Sequence[SimulatedWorker], n_items: int, seed: int, copies: Mapping[str, int] | None = None,
          prefix: str = "item") -> Crowd:
    """Each member answers every item; a member in `copies` is answered for by that many look-alikes
    (`<name>-0`, `<name>-1`, ...) that always give its one answer: errors shared by construction."""
    rng = random.Random(seed)
    truth, item_votes = {}, {}
    for i in range(n_items):
        item = f"{prefix}-{i}"
        truth[item] = rng.choice(LABELS)
        votes = []
        for a in members:
            label = a.answer(truth[item], LABELS, rng)
            n = (copies or {}).get(a.name)
            names = [f"{a.name}-{c}" for c in range(n)] if n else [a.name]
            votes.extend(Vote(member=name, label=label) for name in names)
        item_votes[item] = votes
    return truth, item_votes


def triples(item_votes: Mapping[str, Sequence[Vote]]) -> list[tuple[str, str, str]]:
    return [(item, v.member, v.label) for item, votes in item_votes.items() for v in votes if v.label is not None]


def fit(name: str, item_votes: Mapping[str, Sequence[Vote]], gold: Mapping[str, str], min_gold: int = 20) -> Params:
    """Parameters as the background refit fits them."""
    return get_aggregator(name).fit_params(triples(item_votes), LABELS, gold, item_votes, min_gold)


def accuracy(name: str, params: Params | None, truth: Mapping[str, str],
             item_votes: Mapping[str, Sequence[Vote]]) -> float:
    """Share of `truth`'s items the request-path posterior labels right."""
    agg = get_aggregator(name)
    return sum(LABELS[pick(agg.posterior(item_votes[i], LABELS, params))] == t for i, t in truth.items()) / len(truth)


def member_accuracy(member: str, truth: Mapping[str, str], item_votes: Mapping[str, Sequence[Vote]]) -> float:
    return sum(next(v.label for v in item_votes[i] if v.member == member) == t for i, t in truth.items()) / len(truth)
