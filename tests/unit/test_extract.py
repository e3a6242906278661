"""Raw answers -> labels, and log-probabilities -> soft votes."""

from __future__ import annotations

import dataclasses
import math

import pytest

from ensembles.votes import Vote
from gateway.asking.extract import first_token, parse_answer, soft_vote

LABELS = ["positive", "negative", "very negative"]


@pytest.mark.parametrize("raw, label", [
    ("positive", "positive"), ("  Positive.\n", "positive"), ('"negative"', "negative"), ("**NEGATIVE**", "negative"),
    ('{"label": "negative"}', "negative"), ('{"sentiment": "positive"}', "positive"), ("pos", "positive"),
    ("positive sentiment overall", "positive"), ("Very  negative!", "very negative"), ("very_negative", "very negative"),
])
def test_parse_answer_maps_to_one_label(raw: str, label: str) -> None:
    assert parse_answer(raw, LABELS) == (label, None)


@pytest.mark.parametrize("raw", ["", None, "   ", "maybe", "neutral", "{not json", '{"a": "x", "b": "y"}'])
def test_parse_answer_abstains_with_reason(raw: str | None) -> None:
    label, error = parse_answer(raw, LABELS)
    assert label is None and error


def test_ambiguous_prefix_abstains() -> None:
    label, error = parse_answer("ne", ["negative", "neutral"])
    assert label is None and "matches no label" in error


def test_soft_vote_from_chat_logprobs() -> None:
    choice = {"logprobs": {"content": [{"token": "pos", "logprob": math.log(0.6), "top_logprobs": [
        {"token": "pos", "logprob": math.log(0.6)}, {"token": "neg", "logprob": math.log(0.3)},
        {"token": "the", "logprob": math.log(0.1)}]}]}}
    assert soft_vote(choice, ["positive", "negative"]) == pytest.approx((2 / 3, 1 / 3))


def test_soft_vote_from_completion_logprobs_skips_whitespace_tokens() -> None:
    choice = {"logprobs": {"tokens": [" ", "neg"], "top_logprobs": [{" ": -0.01}, {"neg": math.log(0.8),
                                                                                  "positive": math.log(0.2)}]}}
    assert soft_vote(choice, ["positive", "negative"]) == pytest.approx((0.2, 0.8))


def test_a_label_the_top_logprobs_missed_gets_the_truncation_bound_not_zero() -> None:
    """Top three of a 20-token list: the label none of them begins gets at most the least top probability and at
    most the mass the top left over (here 1 - 0.95, shared by one missing label)."""
    choice = {"logprobs": {"top_logprobs": [{" positive": math.log(0.6), " negative": math.log(0.3),
                                             " The": math.log(0.05)}]}}
    probs = soft_vote(choice, ["positive", "negative", "neutral"])
    assert probs == pytest.approx((0.6 / 0.95, 0.3 / 0.95, 0.05 / 0.95))
    found = first_token([(" positive", math.log(0.9)), (" negative", math.log(0.0999))], ["positive", "negative", "x"])
    assert found is not None and found.missing == [2] and found.worth_scoring == []  # bound 0.0001: not worth a call
    assert found.vote({2: 0.5})[2] == pytest.approx(0.0001 / 1.0, rel=0.01), "a score is capped at the bound"


def test_soft_vote_absent_or_ambiguous_is_none() -> None:
    assert soft_vote({"logprobs": None}, LABELS) is None
    shared = {"logprobs": {"content": [{"token": "very", "logprob": 0.0, "top_logprobs": [{"token": "very", "logprob": 0.0}]}]}}
    assert soft_vote(shared, ["very positive", "very negative"]) is None


def test_a_vote_on_the_wire_has_every_field_rounded() -> None:
    vote = Vote(member="m", label="a", raw=" a", probs=(0.1234567, 0.8765433), latency_ms=1.23456,
                prompt_tokens=3, completion_tokens=1, cost_usd=1.0000000000001, error=None)
    wire = vote.wire()
    assert list(wire) == [f.name for f in dataclasses.fields(Vote)]
    assert wire["probs"] == [0.123457, 0.876543] and wire["latency_ms"] == 1.235 and wire["cost_usd"] == 1.0
    assert Vote(member="m", label=None, error="x").wire()["probs"] is None
