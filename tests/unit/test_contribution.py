"""What each member adds: `tune` recommends dropping a member whose removal costs no accuracy."""

from __future__ import annotations

import random

import pytest

from ensembles.votes import Vote
from gateway.tools.tune import recommend_members

LABELS = ["negative", "positive"]


def test_tune_recommends_dropping_a_copy_and_keeps_independent_members(capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(4)
    recording, gold = {}, {}
    for n in range(240):
        truth = rng.choice(LABELS)
        gold[f"i{n}"] = truth
        said = {m: truth if rng.random() < 0.8 else LABELS[1 - LABELS.index(truth)] for m in ("a", "b", "c")}
        said["copy-of-a"] = said["a"]
        recording[f"i{n}"] = {m: Vote(m, label) for m, label in said.items()}
    drop = recommend_members(recording, LABELS, gold)
    out = capsys.readouterr().out
    assert "copy-of-a" in drop and "b" not in drop and "c" not in drop
    assert "Marginal contribution" in out and "recommendation: drop" in out and "copy-of-a" in out.split("recommendation")[1]
