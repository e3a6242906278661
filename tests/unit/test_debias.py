"""Batch calibration of members' soft votes (ensembles/debias.py) and Platt calibration of the posterior."""

from __future__ import annotations

import math
import random

import pytest

from ensembles.aggregators import get_aggregator, pick
from ensembles.calibration import calibrate, fit_calibration
from ensembles.debias import MIN_ITEMS, debias, fit_biases, label_prior
from ensembles.refit import refit
from ensembles.votes import Vote

LABELS = ["positive", "negative"]


def tilted_member(n: int, tilt: float, seed: int = 1) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """A member whose evidence is right but whose prompt adds `tilt` to the logit of 'negative' on every item."""
    rng = random.Random(seed)
    votes, truth = {}, {}
    for i in range(n):
        t = rng.choice(LABELS)
        evidence = rng.gauss(1.5, 1.0) * (1 if t == "positive" else -1)
        p_pos = 1 / (1 + math.exp(-(evidence - tilt)))
        probs = [p_pos, 1 - p_pos]
        votes[f"i{i}"] = [{"member": "m", "label": LABELS[pick(probs)], "probs": probs}]
        truth[f"i{i}"] = t
    return votes, truth


def accuracy(name: str, votes: dict[str, list[dict]], truth: dict[str, str], params: dict) -> float:
    agg = get_aggregator(name)
    right = 0
    for item, t in truth.items():
        cast = [Vote.from_wire(v, 2) for v in votes[item]]
        right += LABELS[pick(agg.posterior(cast, LABELS, params))] == t
    return right / len(truth)


def test_a_tilted_member_is_straightened_without_gold() -> None:
    votes, truth = tilted_member(400, tilt=2.0)
    on = refit("weighted", votes, LABELS, {}, 20)
    off = refit("weighted", votes, LABELS, {}, 20, debiased=False)
    assert "biases" in on and "biases" not in off
    assert on["biases"]["m"][1] > on["biases"]["m"][0]  # the member leans negative
    before, after = accuracy("weighted", votes, truth, off), accuracy("weighted", votes, truth, on)
    assert before < 0.8 and after > before + 0.1


def test_the_debiased_label_follows_the_debiased_probabilities() -> None:
    vote = Vote("m", "negative", probs=(0.4, 0.6))
    (out,) = debias([vote], {"m": [0.3, 0.7]}, LABELS)
    assert out.label == "positive" and out.probs == pytest.approx((0.4 / 0.3 / (0.4 / 0.3 + 0.6 / 0.7),
                                                                   0.6 / 0.7 / (0.4 / 0.3 + 0.6 / 0.7)))
    hard = Vote("m", "negative")
    assert debias([hard], {"m": [0.3, 0.7]}, LABELS)[0] is hard
    assert debias([vote], {}, LABELS) == [vote]


def test_a_member_with_few_soft_votes_keeps_its_votes() -> None:
    few = {f"i{n}": [Vote("m", "negative", probs=(0.2, 0.8))] for n in range(MIN_ITEMS - 1)}
    assert fit_biases(few, 2) == {}
    enough = {**few, "last": [Vote("m", "negative", probs=(0.2, 0.8))]}
    assert fit_biases(enough, 2) == {"m": pytest.approx([0.2 / 0.5, 0.8 / 0.5])}  # mean vote / uniform prior


def test_the_labels_mix_comes_from_gold_smoothed_toward_uniform() -> None:
    assert label_prior({}, LABELS) == pytest.approx([0.5, 0.5])
    gold = {f"g{n}": "negative" if n < 40 else "positive" for n in range(50)}
    assert label_prior(gold, LABELS, pseudo_count=5) == pytest.approx([15 / 60, 45 / 60])
    # a member that says negative 80% of the time on traffic that is 75% negative is barely corrected
    votes = {f"i{n}": [Vote("m", "negative", probs=(0.2, 0.8))] for n in range(MIN_ITEMS)}
    (vote,) = debias([Vote("m", "negative", probs=(0.3, 0.7))], fit_biases(votes, 2, prior=label_prior(gold, LABELS)),
                     LABELS)
    assert vote.label == "negative"
    (uniform,) = debias([Vote("m", "negative", probs=(0.3, 0.7))], fit_biases(votes, 2), LABELS)
    assert uniform.label == "positive"  # against a uniform mix the same vote flips


def test_auto_publishes_biases_once_and_its_winner_sees_debiased_votes() -> None:
    votes, truth = tilted_member(300, tilt=2.0, seed=3)
    params = refit("auto", votes, LABELS, dict(list(truth.items())[:60]), 20)
    assert "biases" in params and "biases" not in params["params"]
    assert accuracy("auto", votes, truth, params) > accuracy("auto", votes, truth,
                                                             refit("auto", votes, LABELS, {}, 20, debiased=False))


def test_platt_maps_an_overconfident_posterior_to_its_accuracy() -> None:
    rng = random.Random(7)
    confidences = [rng.uniform(0.9, 1.0) for _ in range(300)]
    correct = [rng.random() < 0.7 for _ in confidences]
    cal = fit_calibration(confidences, correct)
    assert calibrate(cal, 0.95) == pytest.approx(0.7, abs=0.06)
    assert calibrate(cal, 0.99) >= calibrate(cal, 0.91)  # never decreasing


def test_platt_with_no_mistakes_is_the_smoothed_rate() -> None:
    cal = fit_calibration([0.9] * 18, [True] * 18)
    assert calibrate(cal, 0.5) == pytest.approx(19 / 20)


def test_older_isotonic_maps_still_apply() -> None:
    assert calibrate({"x": [0.5, 1.0], "y": [0.6, 0.9], "n": 20}, 0.75) == pytest.approx(0.75)
