"""Seeded simulated crowds for the unit tests: independent members, look-alike blocks, sparse humans."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from ensembles.aggregators import get_aggregator, pick
from ensembles.aggregators.base import Params
from ensembles.refit import refit
from ensembles.simulation import SimulatedWorker
from ensembles.votes import HUMAN_PREFIX, Vote

LABELS = ["positive", "negative"]
Crowd = tuple[dict[str, str], dict[str, list[Vote]]]
"""(truth by item, valid votes by item)."""


def crowd(members: Sequence[SimulatedWorker], n_items: int, seed: int, copies: Mapping[str, int] | None = None,
          prefix: str = "item", labels: Sequence[str] = LABELS) -> Crowd:
    """Each member answers every item; a member in `copies` is answered for by that many look-alikes
    (`<name>-0`, `<name>-1`, ...) that always give its one answer: errors shared by construction."""
    rng = random.Random(seed)
    truth, item_votes = {}, {}
    for i in range(n_items):
        item = f"{prefix}-{i}"
        truth[item] = rng.choice(list(labels))
        votes = []
        for a in members:
            label = a.answer(truth[item], labels, rng)
            n = (copies or {}).get(a.name)
            names = [f"{a.name}-{c}" for c in range(n)] if n else [a.name]
            votes.extend(Vote(member=name, label=label) for name in names)
        item_votes[item] = votes
    return truth, item_votes


def triples(item_votes: Mapping[str, Sequence[Vote]]) -> list[tuple[str, str, str]]:
    return [(item, v.member, v.label) for item, votes in item_votes.items() for v in votes if v.label is not None]


def wire(item_votes: Mapping[str, Sequence[Vote]]) -> dict[str, list[dict]]:
    """Votes as the store keeps them, what the refit reads."""
    return {item: [v.wire() for v in votes] for item, votes in item_votes.items()}


def fit(name: str, item_votes: Mapping[str, Sequence[Vote]], gold: Mapping[str, str], min_gold: int = 20,
        labels: Sequence[str] = LABELS, **kwargs: object) -> Params:
    """Parameters as the background refit fits them (ensembles/refit.py)."""
    return refit(name, wire(item_votes), labels, gold, min_gold, **kwargs)  # type: ignore[arg-type]


def accuracy(name: str, params: Params | None, truth: Mapping[str, str],
             item_votes: Mapping[str, Sequence[Vote]], labels: Sequence[str] = LABELS) -> float:
    """Share of `truth`'s items the request-path posterior labels right."""
    agg = get_aggregator(name)
    return sum(labels[pick(agg.posterior(item_votes[i], labels, params))] == t for i, t in truth.items()) / len(truth)


def add_people(item_votes: Mapping[str, list[Vote]], truth: Mapping[str, str], items: Sequence[str], skill: float,
               n_people: int, seed: int, labels: Sequence[str] = LABELS) -> None:
    """One person's label on each of `items`, from `n_people` people each right with probability `skill`."""
    rng = random.Random(seed)
    for item in items:
        person = SimulatedWorker(f"{HUMAN_PREFIX}p{rng.randrange(n_people)}", skill)
        item_votes[item].append(Vote(person.name, person.answer(truth[item], labels, rng)))


def member_accuracy(member: str, truth: Mapping[str, str], item_votes: Mapping[str, Sequence[Vote]]) -> float:
    return sum(next(v.label for v in item_votes[i] if v.member == member) == t for i, t in truth.items()) / len(truth)
