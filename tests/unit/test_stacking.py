"""Stacking learns how much a block of look-alike members is worth, from gold, and learns a block once."""

from __future__ import annotations

import pytest

from ensembles.aggregators import get_aggregator
from ensembles.simulation import SimulatedWorker
from ensembles.votes import Vote
from tests.unit.crowds import LABELS, accuracy, crowd, fit, member_accuracy

POOL = [SimulatedWorker("strong", 0.85), SimulatedWorker("weak", 0.65)]
BLOCK = {f"weak-{c}": "weak-model" for c in range(3)}


def vote_weight(block: dict) -> float:
    """How far one block's coefficients move logit(positive) - logit(negative) per unit of its `positive` evidence."""
    return (block["positive"]["positive"] - block["negative"]["positive"]) - (
        block["positive"]["negative"] - block["negative"]["negative"])


@pytest.fixture(scope="module")
def copies() -> tuple:
    truth, votes = crowd(POOL, 1500, seed=1, copies={"weak": 3})
    test_truth, test_votes = crowd(POOL, 1000, seed=2, copies={"weak": 3}, prefix="test")
    return truth, votes, test_truth, test_votes, fit("stacking", votes, truth)


@pytest.fixture(scope="module")
def single() -> float:
    """The weak member's weight in the same crowd with the weak member once."""
    truth, votes = crowd(POOL, 1500, seed=1)
    return vote_weight(fit("stacking", votes, truth)["members"]["weak"])


def test_a_block_of_three_copies_weighs_about_one_member(copies: tuple, single: float) -> None:
    *_, params = copies
    block = [vote_weight(params["members"][f"weak-{c}"]) for c in range(3)]
    assert single > 0.5
    assert sum(block) == pytest.approx(single, rel=0.25)
    assert max(block) < 0.5 * single


def test_a_known_look_alike_group_and_its_members_weigh_about_one_member(copies: tuple, single: float) -> None:
    truth, votes, *_ = copies
    params = fit("stacking", votes, truth, groups=BLOCK)
    assert set(params["groups"]) == {"weak-model"} and params["group_of"] == BLOCK
    block = vote_weight(params["groups"]["weak-model"]) + sum(vote_weight(params["members"][m]) for m in BLOCK)
    assert block == pytest.approx(single, rel=0.25)


def test_stacking_beats_majority_and_matches_the_best_member_on_held_out_items(copies: tuple) -> None:
    _, _, test_truth, test_votes, params = copies
    stacked = accuracy("stacking", params, test_truth, test_votes)
    best = member_accuracy("strong", test_truth, test_votes)
    assert stacked >= best - 0.01
    assert stacked > accuracy("majority", None, test_truth, test_votes) + 0.1


def test_without_params_stacking_is_weighted_and_ignores_members_it_never_saw(copies: tuple) -> None:
    *_, params = copies
    stacking, weighted = get_aggregator("stacking"), get_aggregator("weighted")
    votes = [Vote("strong", "negative"), Vote("weak-0", "positive"), Vote("weak-1", "positive")]
    assert stacking.posterior(votes, LABELS) == pytest.approx(weighted.posterior(votes, LABELS))
    stranger = [Vote("stranger", "positive")] * 3
    assert stacking.posterior(votes + stranger, LABELS, params) == pytest.approx(stacking.posterior(votes, LABELS, params))


def test_too_little_gold_means_no_coefficients() -> None:
    truth, votes = crowd(POOL, 100, seed=3)
    gold = dict(list(truth.items())[:19])
    assert "members" not in fit("stacking", votes, gold, min_gold=20)
    assert "members" in fit("stacking", votes, gold, min_gold=19)
