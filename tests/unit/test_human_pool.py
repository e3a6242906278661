"""Humans are a crowd too: sparse annotators shrink toward the pooled human reliability, not DEFAULT_SKILL."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from ensembles.aggregators import get_aggregator
from ensembles.aggregators.base import DEFAULT_SKILL
from ensembles.simulation import SimulatedWorker
from ensembles.votes import HUMAN_PREFIX, Vote
from tests.unit.crowds import LABELS, crowd, fit

LLMS = [SimulatedWorker("llm-a", 0.8), SimulatedWorker("llm-b", 0.75), SimulatedWorker("llm-c", 0.7), SimulatedWorker("llm-d", 0.65)]


@pytest.fixture(scope="module")
def with_humans() -> tuple[dict[str, str], dict[str, list[Vote]]]:
    """300 items; 150 annotators, right 95% of the time, each labelling 1 to 3 items."""
    truth, votes = crowd(LLMS, 300, seed=9)
    rng = random.Random(9)
    items = list(truth)
    for h in range(150):
        for item in rng.sample(items, rng.randint(1, 3)):
            label = truth[item] if rng.random() < 0.95 else next(x for x in LABELS if x != truth[item])
            votes[item].append(Vote(f"{HUMAN_PREFIX}{h}", label))
    return truth, votes


@pytest.mark.parametrize("name", ["dawid_skene", "weighted"])
def test_sparse_humans_get_the_pooled_human_reliability_not_the_default(name: str, with_humans: tuple) -> None:
    _, votes = with_humans
    params = fit(name, votes, {})
    acc = get_aggregator(name).accuracies(params, LABELS)
    humans = [a for m, a in acc.items() if m.startswith(HUMAN_PREFIX)]
    assert len(humans) == 150
    # shrunk toward DEFAULT_SKILL, even 3 right labels would give at most (3 + 10 * 0.7) / 13 = 0.77
    assert statistics.median(humans) > 0.85 > DEFAULT_SKILL + 0.1
    assert acc["llm-d"] < 0.8  # LLM members still shrink toward the default


@pytest.mark.parametrize("name", ["dawid_skene", "weighted"])
def test_an_unseen_annotator_weighs_like_the_pooled_humans(name: str, with_humans: tuple) -> None:
    _, votes = with_humans
    params = fit(name, votes, {})
    agg = get_aggregator(name)
    human = agg.posterior([Vote(f"{HUMAN_PREFIX}new", "negative"), Vote("llm-a", "positive")], LABELS, params)
    llm = agg.posterior([Vote("unseen-llm", "negative"), Vote("llm-a", "positive")], LABELS, params)
    assert human[1] > 0.5 > llm[1]
    assert not math.isclose(human[1], llm[1])
