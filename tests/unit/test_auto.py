"""Auto chooses, by cross-validation on gold, the best member when the crowd adds nothing, and a combination when it does."""

from __future__ import annotations

import pytest

from ensembles.aggregators import get_aggregator
from ensembles.refit import refit
from ensembles.simulation import SimulatedWorker
from ensembles.votes import Vote
from tests.unit.crowds import LABELS, accuracy, crowd, fit, member_accuracy

COPIES = [SimulatedWorker("strong", 0.85), SimulatedWorker("weak", 0.65)]
INDEPENDENT = [SimulatedWorker(f"fair-{i}", 0.7) for i in range(4)] + [SimulatedWorker("best", 0.75)]


@pytest.fixture(scope="module")
def with_copies() -> tuple:
    truth, votes = crowd(COPIES, 300, seed=4, copies={"weak": 3})
    return truth, votes, fit("auto", votes, dict(list(truth.items())[:120]))


def test_auto_picks_the_best_member_when_the_others_are_copies_of_a_weak_one(with_copies: tuple) -> None:
    truth, votes, params = with_copies
    assert params["winner"] == "member:strong"
    assert params["gold"] == 120
    assert set(params["cv_accuracy"]) == {"member:strong", "member:weak-0", "member:weak-1", "member:weak-2",
                                          "majority", "weighted", "dawid_skene", "glad", "stacking"}
    held_out = dict(list(truth.items())[120:])
    assert accuracy("auto", params, held_out, votes) == member_accuracy("strong", held_out, votes)


def test_a_single_member_winner_ranks_members_by_their_own_accuracy(with_copies: tuple) -> None:
    *_, params = with_copies
    ranks = get_aggregator("auto").accuracies(params, LABELS)
    assert max(ranks, key=ranks.get) == "strong"


def test_a_single_member_winner_that_did_not_answer_falls_back_to_weighted(with_copies: tuple) -> None:
    *_, params = with_copies
    votes = [Vote("weak-0", "negative"), Vote("strong", None)]
    assert get_aggregator("auto").posterior(votes, LABELS, params) == pytest.approx(
        get_aggregator("weighted").posterior(votes, LABELS, params["params"]))


def test_auto_picks_a_combination_when_members_are_independent() -> None:
    truth, votes = crowd(INDEPENDENT, 300, seed=5)
    params = fit("auto", votes, dict(list(truth.items())[:120]))
    assert not params["winner"].startswith("member:")
    held_out = dict(list(truth.items())[120:])
    assert accuracy("auto", params, held_out, votes) > member_accuracy("best", held_out, votes) + 0.03
    assert params["cv_accuracy"][params["winner"]] > params["cv_accuracy"]["member:best"]


def test_too_little_gold_falls_back_to_weighted() -> None:
    truth, votes = crowd(INDEPENDENT, 60, seed=6)
    params = fit("auto", votes, dict(list(truth.items())[:19]), min_gold=20)
    assert (params["winner"], params["gold"], params["cv_accuracy"]) == ("weighted", 19, {})
    vs = votes["item-30"]
    assert get_aggregator("auto").posterior(vs, LABELS, params) == pytest.approx(
        get_aggregator("weighted").posterior(vs, LABELS, params["params"]))
    assert get_aggregator("auto").posterior(vs, LABELS) == pytest.approx(get_aggregator("weighted").posterior(vs, LABELS))


def test_refit_publishes_auto_with_a_calibration_per_number_of_votes(with_copies: tuple) -> None:
    truth, votes, _ = with_copies
    wire = {item: [{"member": v.member, "label": v.label} for v in vs] for item, vs in votes.items()}
    params = refit("auto", wire, LABELS, dict(list(truth.items())[:120]), 20)
    assert params["winner"] == "member:strong"
    assert set(params["calibration"]["by_votes"]) == {"1", "2", "3"}  # all four votes in: the main map
    assert params["calibration"]["n"] == 120 and "out_of_fold" not in params  # fitted out of fold, not published
