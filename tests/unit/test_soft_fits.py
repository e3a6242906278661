"""Soft votes in the fits: expected counts in Dawid-Skene, per-member temperatures fitted on gold."""

from __future__ import annotations

import random

import pytest

from ensembles.aggregators import FitData, get_aggregator
from ensembles.refit import refit
from ensembles.temperature import fit_temperatures, temper
from ensembles.votes import Vote
from tests.unit.crowds import LABELS, triples


def test_dawid_skene_counts_a_soft_vote_as_its_expected_answers() -> None:
    votes = {f"i{n}": [Vote("unsure", "positive", probs=(0.7, 0.3)), Vote("sure", "positive")] for n in range(30)}
    gold = {item: "positive" for item in votes}
    ds = get_aggregator("dawid_skene")
    soft = ds.fit(FitData.of(votes, LABELS, gold))
    hard = ds.fit(FitData.of(triples(votes), LABELS, gold))
    assert soft["confusion"]["unsure"]["positive"]["positive"] == pytest.approx(0.7)
    assert hard["confusion"]["unsure"]["positive"]["positive"] == pytest.approx(1.0)


def overconfident_crowd(n: int, seed: int) -> tuple[dict[str, str], dict[str, list[Vote]]]:
    """`over` is right 70% of the time but always says 0.99; `honest` is right 80% and says 0.8."""
    rng = random.Random(seed)
    truth, votes = {}, {}
    for i in range(n):
        t = rng.choice(LABELS)
        truth[f"i{i}"] = t
        row = []
        for member, skill, confidence in (("over", 0.7, 0.99), ("honest", 0.8, 0.8)):
            label = t if rng.random() < skill else next(x for x in LABELS if x != t)
            probs = (confidence, 1 - confidence) if label == LABELS[0] else (1 - confidence, confidence)
            row.append(Vote(member, label, probs=probs))
        votes[f"i{i}"] = row
    return truth, votes


def test_an_overconfident_member_is_cooled_to_its_accuracy_and_an_honest_one_is_left_alone() -> None:
    truth, votes = overconfident_crowd(2000, seed=7)
    temps = fit_temperatures(votes, LABELS, truth, min_gold=20)
    assert max(temper((0.99, 0.01), temps["over"])) == pytest.approx(0.7, abs=0.03)
    assert temps["honest"] == pytest.approx(1.0, rel=0.1)
    assert fit_temperatures(votes, LABELS, dict(list(truth.items())[:19]), min_gold=20) == {}


def test_temperatures_are_applied_on_the_request_path() -> None:
    vs = [Vote("over", "positive", probs=(0.99, 0.01)), Vote("honest", "negative", probs=(0.2, 0.8))]
    weighted = get_aggregator("weighted")
    assert weighted.posterior(vs, LABELS)[0] > 0.5  # the over-confident vote wins untempered
    assert weighted.posterior(vs, LABELS, {"temperatures": {"over": 5.0}})[0] < 0.5


def test_refit_fits_temperatures_and_soft_dawid_skene_from_stored_votes() -> None:
    truth, votes = overconfident_crowd(300, seed=8)
    wire = {item: [{"member": v.member, "label": v.label, "probs": list(v.probs)} for v in vs] for item, vs in votes.items()}
    params = refit("dawid_skene", wire, LABELS, truth, 20)
    assert params["temperatures"]["over"] > 3
    over = params["confusion"]["over"]["positive"]["positive"]
    # expected counts of the tempered votes (about 0.7 * 0.7 + 0.3 * 0.3): below the 0.7 its untempered 0.99s would count
    assert 0.5 < over < 0.65
    assert params["calibration"]["n"] == 300
