"""What each member adds: `tune` recommends dropping a member only when the crowd is measurably more accurate
without it (enough items, a 95% interval below zero), and never the whole ensemble (issue 23)."""

from __future__ import annotations

import random

import pytest

from ensembles.votes import Vote
from gateway.tools.contribution import MIN_ITEMS, Contribution, droppable, paired
from gateway.tools.tune import recommend_members

LABELS = ["negative", "positive"]


def crowd(items: int, seed: int = 4) -> tuple[dict, dict]:
    """Three independent 80% members and a copy of the first."""
    rng = random.Random(seed)
    recording, gold = {}, {}
    for n in range(items):
        truth = rng.choice(LABELS)
        gold[f"i{n}"] = truth
        said = {m: truth if rng.random() < 0.8 else LABELS[1 - LABELS.index(truth)] for m in ("a", "b", "c")}
        said["copy-of-a"] = said["a"]
        recording[f"i{n}"] = {m: Vote(m, label) for m, label in said.items()}
    return recording, gold


def test_a_copy_has_no_measurable_effect_and_is_not_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    recording, gold = crowd(240)
    assert recommend_members(recording, LABELS, gold) == []
    out = capsys.readouterr().out
    assert "positive, the crowd is more accurate with it" in out
    copy = next(line for line in out.splitlines() if line.startswith("| copy-of-a |"))
    assert copy.endswith("| no measurable effect |") and "recommendation" not in out


def test_four_items_are_too_few_for_any_recommendation(capsys: pytest.CaptureFixture[str]) -> None:
    recording, gold = crowd(8)
    assert recommend_members(recording, LABELS, gold) == []
    assert "too few to tell" in capsys.readouterr().out


def test_only_members_the_crowd_is_measurably_better_without_and_never_all() -> None:
    helps = paired([True] * 40, [True] * 30 + [False] * 10)
    assert helps.value == 0.25 and helps.low > 0 and helps.verdict == "helps"
    harmful = paired([True] * 30 + [False] * 10, [True] * 40)
    assert harmful.high < 0 and harmful.verdict == "hurts"
    noisy = paired([True, False] * 20, [False, True] * 20)
    assert noisy.low < 0 < noisy.high and noisy.verdict == "no measurable effect"
    few = Contribution(-0.5, -0.9, -0.1, MIN_ITEMS - 1)
    assert droppable({"x": few, "y": harmful}) == ["y"]
    assert droppable({"x": harmful, "y": harmful, "z": harmful}, keep=2) == ["x"]
    assert droppable({"x": harmful}) == [], "never the whole ensemble"
