"""One forward pass per vote, and tasks that own their prompts (variants), on constructed requests."""

from __future__ import annotations

import math

import orjson

from gateway.asking.dialects import one_pass, prompt_template, shape
from gateway.asking.extract import decisive_vote
from gateway.config import parse_config
from gateway.task import build_task

INTENTS = ["play_music", "search_creative_work", "search_screening_event"]
CONFIG = parse_config({
    "members": [{"name": "v", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
                {"name": "vb", "base_url": "http://127.0.0.1:9/v1", "model": "m", "variant": "b"},
                {"name": "chat", "base_url": "http://127.0.0.1:9/v1", "model": "m", "prompt_style": "chat"},
                {"name": "fixed", "base_url": "http://127.0.0.1:9/v1", "model": "m", "decoding": "constrained"},
                {"name": "oai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "dialect": "openai"}],
    "tasks": [{"name": "sent", "labels": ["positive", "negative"], "prompt_style": "completion",
               "instructions": "Label it as {labels}.", "examples": [{"text": "good", "label": "positive"}],
               "variants": {"b": {"instructions": "Is it {labels}?",
                                  "examples": [{"text": "bad", "label": "negative"}]}}}],
})


def task(**body: object):  # type: ignore[no-untyped-def]
    return build_task({"messages": [{"role": "user", "content": "fine film"}], "task": "sent", **body}, "chat", CONFIG)


def top(*pairs: tuple[str, float]) -> dict:
    return {"logprobs": {"tokens": [pairs[0][0]], "top_logprobs": [dict(pairs)]}}


def test_the_first_token_decides_only_when_it_names_one_label() -> None:
    found = decisive_vote(top((" positive", math.log(0.7)), (" negative", math.log(0.2)), (" The", math.log(0.1))),
                          ["positive", "negative"])
    assert found is not None and math.isclose(found.vote()[0], 0.7 / 0.9)
    assert decisive_vote(top((" search", -0.1), (" play", -3.0)), INTENTS) is None, "two intents start with search"
    assert decisive_vote(top((" The", -0.1), (" positive", -3.0)), ["positive", "negative"]) is None
    assert decisive_vote({"logprobs": None}, ["positive", "negative"]) is None


def test_a_task_owns_the_prompt_and_members_name_its_variants() -> None:
    sent = CONFIG.tasks[0]
    assert prompt_template(CONFIG.member("v"), task()).instructions == sent.instructions
    b = prompt_template(CONFIG.member("vb"), task())
    assert b.instructions == "Is it {labels}?" and [e.text for e in b.examples] == ["bad"]
    assert b.prompt_style == "completion"
    assert prompt_template(CONFIG.member("chat"), task()).prompt_style == "chat"


def test_one_pass_asks_for_one_token_with_top_logprobs() -> None:
    assert one_pass(CONFIG.member("v"), task())
    assert not one_pass(CONFIG.member("chat"), task()), "auto: completion prompts only"
    assert not one_pass(CONFIG.member("fixed"), task())
    assert not one_pass(CONFIG.member("oai"), task())
    path, raw = shape(CONFIG.member("v"), task(), first_token=True)
    body = orjson.loads(raw)
    assert path == "/completions" and body["max_tokens"] == 1 and body["logprobs"] == 20
    assert "structured_outputs" not in body and body["prompt"].endswith("Text: fine film\nLabel:")
    _, raw = shape(CONFIG.member("v"), task())
    assert orjson.loads(raw)["structured_outputs"]["choice"][:2] == ["positive", "negative"]
