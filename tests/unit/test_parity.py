"""Aggregators' online posteriors (from their published parameters) on a simulated pool. Against crowd-kit's own fit
of each: tests/integration/test_crowdkit_parity.py (crowd-kit's pandas-bound fits take 17 s)."""

from __future__ import annotations

from collections import defaultdict

import pytest

from ensembles.aggregators import FitData, get_aggregator, pick
from ensembles.simulation import SimulatedWorker, simulate, standard_pool
from ensembles.votes import Vote

LABELS = ["positive", "negative", "neutral"]


@pytest.fixture(scope="module")
def votes() -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    return simulate(standard_pool(), LABELS, n_items=150, seed=1, class_weights=[0.5, 0.3, 0.2])


def online_labels(name: str, triples: list[tuple[str, str, str]]) -> dict[str, str]:
    agg = get_aggregator(name)
    params = agg.fit(FitData.of(triples, LABELS))
    by_item: dict[str, list[Vote]] = defaultdict(list)
    for item, member, label in triples:
        by_item[item].append(Vote(member=member, label=label))
    return {item: LABELS[pick(agg.posterior(vs, LABELS, params))] for item, vs in by_item.items()}


def test_dawid_skene_beats_majority_on_a_skewed_pool(votes: tuple) -> None:
    truth, triples = votes

    def accuracy(labels: dict[str, str]) -> float:
        return sum(labels[i] == t for i, t in truth.items()) / len(truth)

    assert accuracy(online_labels("dawid_skene", triples)) > accuracy(online_labels("majority", triples)) + 0.05


def test_unseen_member_gets_the_default_one_coin_skill(votes: tuple) -> None:
    _, triples = votes
    agg = get_aggregator("dawid_skene")
    params = agg.fit(FitData.of(triples, LABELS))
    newcomer = agg.posterior([Vote("brand-new", "neutral")], LABELS, params)
    assert LABELS[pick(newcomer)] == "neutral"


def test_gold_anchors_dawid_skene() -> None:
    pool = [SimulatedWorker("a", 0.6), SimulatedWorker("b", 0.6), SimulatedWorker("flip", 0.05)]
    truth, triples = simulate(pool, ["positive", "negative"], n_items=200, seed=3)
    agg = get_aggregator("dawid_skene")
    gold = dict(list(truth.items())[:40])
    params = agg.fit(FitData.of(triples, ["positive", "negative"], gold))
    # with gold the model learns that "flip" is reliably wrong, i.e. informative
    assert params["confusion"]["flip"]["positive"]["negative"] > 0.8


def test_calibration_is_fitted_on_soft_posteriors() -> None:
    """The refit job calibrates the posterior the request path computes, soft votes included."""
    from ensembles.refit import refit

    labels = ["positive", "negative"]
    item_votes = {f"i{n}": [{"member": "m", "label": "positive", "probs": [0.6, 0.4]},
                            {"member": "h", "label": "positive"}] for n in range(30)}
    gold = {f"i{n}": "positive" if n % 3 else "negative" for n in range(30)}
    params = refit("weighted", item_votes, labels, gold, min_gold=20)
    assert params["fitted_on"] == {"items": 30, "votes": 60, "gold": 30, "people": 0, "people_items": 0}
    # every item has the same soft posterior, right 2 times in 3: the map sends it to 2/3
    from ensembles.calibration import calibrate

    assert calibrate(params["calibration"], 0.8) == pytest.approx(20 / 30, abs=0.02)  # add-one smoothed: 21/32


def test_calibration_per_number_of_votes() -> None:
    """After one vote a cascade must not trust a unanimous posterior as it would after three."""
    import random

    from ensembles.calibration import calibrate
    from ensembles.refit import refit

    labels = ["positive", "negative"]
    rng = random.Random(5)
    truth = {f"i{n}": rng.choice(labels) for n in range(400)}
    item_votes = {item: [{"member": m, "label": t if rng.random() < 0.7 else next(x for x in labels if x != t)}
                         for m in ("a", "b", "c")] for item, t in truth.items()}
    params = refit("majority", item_votes, labels, truth, min_gold=20)
    cal = params["calibration"]
    assert set(cal["by_votes"]) == {"1", "2"}  # with all three votes in, the main map

    def confidence(*said: str) -> float:
        """What the request path answers: the posterior's top probability, calibrated for the number of votes."""
        dist = get_aggregator("majority").posterior([Vote(m, x) for m, x in zip("abc", said)], labels, params)
        return calibrate(cal, max(dist), len(said))

    # one vote: majority says 1.0, but a 0.7-accurate member is right about 70% of the time
    assert confidence("positive") == pytest.approx(0.7, abs=0.06)
    # three agreeing votes: 0.343 / (0.343 + 0.027) = 0.93
    assert confidence("positive", "positive", "positive") == pytest.approx(0.93, abs=0.05)
    # two against one: 0.147 / (0.147 + 0.063) = 0.7
    assert confidence("positive", "positive", "negative") == pytest.approx(0.7, abs=0.06)
    assert calibrate(cal, 0.8, 7) == calibrate(cal, 0.8), "no map for that count: the main map"
