"""The request-path aggregators: distributions, ties, soft votes, weights."""

from __future__ import annotations

import math

import pytest

from ensembles.aggregators import REGISTRY, get_aggregator, pick
from ensembles.votes import Vote

LABELS = ["a", "b", "c"]


def votes(*labels: str | None) -> list[Vote]:
    return [Vote(member=f"m{i}", label=label) for i, label in enumerate(labels)]


def test_majority_counts_valid_votes_only() -> None:
    dist = get_aggregator("majority").posterior(votes("a", "b", "a", None), LABELS)
    assert dist == pytest.approx([2 / 3, 1 / 3, 0])


def test_no_valid_vote_is_uniform() -> None:
    assert get_aggregator("majority").posterior(votes(None), LABELS) == pytest.approx([1 / 3] * 3)


def test_ties_go_to_the_earliest_label() -> None:
    assert pick([0.4, 0.4, 0.2]) == 0
    assert pick([0.2, 0.4, 0.4]) == 1


def test_weighted_pools_soft_votes_and_weights() -> None:
    vs = [Vote("m0", "a", probs=(0.6, 0.4, 0.0)), Vote("m1", "b"), Vote("m2", None)]
    agg = get_aggregator("weighted")
    assert agg.posterior(vs, LABELS) == pytest.approx([0.3, 0.7, 0.0])
    w = math.log(2 * 0.7 / 0.3)  # log-odds of the default skill 0.7 over 3 labels, for the unfitted m1
    assert agg.posterior(vs, LABELS, {"weights": {"m0": 3.0}}) == pytest.approx([1.8 / (3 + w), (1.2 + w) / (3 + w), 0.0])


def test_unknown_aggregator_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="majority"):
        get_aggregator("nope")
    assert {"majority", "weighted"} <= set(REGISTRY)
