"""People join every answer after the LLM crowd: reliability learned from every item they labelled, pooled for
people with few labels, CROWDLAB where several people labelled the same items."""

from __future__ import annotations

import random

import pytest

from ensembles.aggregators import get_aggregator
from ensembles.humans import DEFAULT_HUMAN_SKILL, MAX_PERSON_STRENGTH, join
from ensembles.simulation import SimulatedWorker
from ensembles.votes import HUMAN_PREFIX, Vote
from tests.unit.crowds import LABELS, accuracy, crowd, fit

LLMS = [SimulatedWorker("llm-a", 0.8), SimulatedWorker("llm-b", 0.75), SimulatedWorker("llm-c", 0.7),
        SimulatedWorker("llm-d", 0.65)]


def with_people(labels_each: tuple[int, int], skill: float, seed: int, spammer: bool = False) -> tuple:
    """300 items of the four LLMs; 150 people, each right with probability `skill`, labelling between
    `labels_each` items; with `spammer`, `human:spam` says `positive` on 60 items whatever the truth."""
    truth, votes = crowd(LLMS, 300, seed=seed)
    rng = random.Random(seed)
    items = list(truth)
    for h in range(150):
        for item in rng.sample(items, rng.randint(*labels_each)):
            votes[item].append(Vote(f"{HUMAN_PREFIX}{h}", SimulatedWorker("", skill).answer(truth[item], LABELS, rng)))
    if spammer:
        for item in rng.sample(items, 60):
            votes[item].append(Vote(f"{HUMAN_PREFIX}spam", "positive"))
    return truth, votes


@pytest.fixture(scope="module")
def sparse() -> tuple:
    """150 people right 95% of the time, each labelling 1 to 3 items; 40 gold items."""
    truth, votes = with_people((1, 3), 0.95, seed=9)
    return truth, votes, fit("dawid_skene", votes, dict(list(truth.items())[:40]))


def test_sparse_people_get_the_pooled_reliability_not_the_default(sparse: tuple) -> None:
    *_, params = sparse
    people = params["humans"]
    assert people["method"] == "em" and len(people["people"]) == 150
    assert people["pooled"]["positive"]["positive"] > 0.9 > DEFAULT_HUMAN_SKILL + 0.05
    assert people["person_strength"] == MAX_PERSON_STRENGTH, "equally reliable people: each gets the pool"
    assert all(m["negative"]["negative"] > 0.9 for m in people["people"].values())


def test_a_person_outweighs_a_member_and_an_unseen_person_weighs_like_the_pool(sparse: tuple) -> None:
    *_, params = sparse
    agg = get_aggregator("dawid_skene")
    for who in (f"{HUMAN_PREFIX}3", f"{HUMAN_PREFIX}newcomer"):
        assert agg.posterior([Vote(who, "negative"), Vote("llm-d", "positive")], LABELS, params)[1] > 0.8
    assert agg.posterior([Vote("unseen-llm", "negative"), Vote("llm-d", "positive")], LABELS, params)[1] < 0.7


def test_people_lift_the_crowd_above_both(sparse: tuple) -> None:
    truth, votes, params = sparse
    held_out = dict(list(truth.items())[40:])
    llm_only = {i: [v for v in vs if not v.member.startswith(HUMAN_PREFIX)] for i, vs in votes.items()}
    labelled = {i: t for i, t in held_out.items() if len(votes[i]) > len(llm_only[i])}
    people = sum(next(v.label for v in votes[i] if v.member.startswith(HUMAN_PREFIX)) == t
                 for i, t in labelled.items()) / len(labelled)
    crowd_alone = accuracy("dawid_skene", fit("dawid_skene", llm_only, dict(list(truth.items())[:40])), labelled,
                           llm_only)
    assert accuracy("dawid_skene", params, labelled, votes) > max(crowd_alone, people)


def test_a_spammer_gets_a_reliability_of_their_own() -> None:
    truth, votes = with_people((1, 3), 0.9, seed=10, spammer=True)
    people = fit("weighted", votes, dict(list(truth.items())[:40]))["humans"]
    assert people["person_strength"] < MAX_PERSON_STRENGTH, "people differ: their own records count"
    spam = people["people"][f"{HUMAN_PREFIX}spam"]
    assert spam["negative"]["negative"] < people["pooled"]["negative"]["negative"] - 0.2


def test_people_join_a_single_member_answer_of_auto(sparse: tuple) -> None:
    truth, votes, _ = sparse
    params = fit("auto", votes, dict(list(truth.items())[:40]))
    chosen = {**params, "winner": "member:llm-a"}
    auto = get_aggregator("auto")
    alone = auto.posterior([Vote("llm-a", "positive")], LABELS, chosen)
    joined = auto.posterior([Vote("llm-a", "positive"), Vote(f"{HUMAN_PREFIX}7", "negative")], LABELS, chosen)
    assert alone[0] > 0.5 > joined[0]


def test_before_any_fit_a_person_counts_at_the_default_reliability() -> None:
    dist = join([0.7, 0.3], [Vote(f"{HUMAN_PREFIX}x", "negative")], LABELS, {})
    odds = (0.3 * DEFAULT_HUMAN_SKILL) / (0.7 * (1 - DEFAULT_HUMAN_SKILL))
    assert dist[1] == pytest.approx(odds / (1 + odds))


def test_several_people_on_the_same_items_are_fitted_with_crowdlab() -> None:
    """Two or three people on every item (cleanlab's CROWDLAB); a person's label moves the answer, an unseen person
    weighs the people's mean weight."""
    truth, votes = with_people((3, 6), 0.85, seed=11)
    params = fit("weighted", votes, dict(list(truth.items())[:40]))
    people = params["humans"]
    assert people["method"] == "crowdlab" and len(people["weights"]) == 150
    assert 0 < people["model_weight"] and people["consensus_likelihood"] > 0.8
    agg = get_aggregator("weighted")
    llm = [Vote("llm-a", "positive"), Vote("llm-b", "positive")]
    alone = agg.posterior(llm, LABELS, params)[1]
    for who in (f"{HUMAN_PREFIX}5", f"{HUMAN_PREFIX}newcomer"):
        assert agg.posterior([*llm, Vote(who, "negative"), Vote(who + "-2", "negative")], LABELS, params)[1] > alone
    held_out = dict(list(truth.items())[40:])
    llm_only = {i: [v for v in vs if not v.member.startswith(HUMAN_PREFIX)] for i, vs in votes.items()}
    assert accuracy("weighted", params, held_out, votes) > accuracy("weighted", params, held_out, llm_only) + 0.03
