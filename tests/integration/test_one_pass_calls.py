"""One forward pass per vote over real HTTP: one call when the first token decides, two when it does not."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.harness import Upstream


def test_one_call_per_vote_unless_the_first_token_is_ambiguous(upstream: Upstream, gateway_factory: Any) -> None:
    upstream.reset()
    upstream.script("sure", answer=" negative", logprobs={" negative": -0.1, " positive": -2.5})
    upstream.script("unsure", answer=" search", logprobs={" search": -0.2, " play": -1.8})
    config = {"members": [{"name": n, "base_url": upstream.base_url(n), "model": n} for n in ("sure", "unsure")],
              "ensembles": [{"name": "e", "members": ["sure", "unsure"]}],
              "tasks": [{"name": "t", "labels": ["positive", "negative", "search_a", "search_b"],
                         "prompt_style": "completion", "examples": [{"text": "x", "label": "positive"}]}]}
    gw = gateway_factory(config)
    client = OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
    r = client.chat.completions.create(model="e", messages=[{"role": "user", "content": "meh"}],
                                       extra_body={"task": "t"})
    votes = {v["member"]: v for v in r.model_extra["annotation"]["votes"]}
    assert upstream.calls("sure")["calls"] == 1 and upstream.calls("sure")["last"]["max_tokens"] == 1
    assert votes["sure"]["label"] == "negative" and votes["sure"]["probs"][1] > 0.9
    assert upstream.calls("unsure")["calls"] == 2, "ambiguous first token: asked again, constrained"
    assert "structured_outputs" in upstream.calls("unsure")["last"]


def test_labels_the_top_logprobs_missed_get_a_probability_never_zero(upstream: Upstream, gateway_factory: Any) -> None:
    """A vLLM member whose first-token top log-probabilities name one label of four: the three others are scored
    with one more call (prompt log-probabilities of the prompt followed by each); a chat-prompted member, which has
    no such call, gives them the truncation bound. No stored soft vote has a 0.0."""
    upstream.reset()
    scored = {"positive": -2.5, "search_a": -4.0, "search_b": -6.0}  # each under the truncation bound, as real
    for name in ("scored", "bounded"):
        upstream.script(name, answer=" negative", logprobs={" negative": -0.5}, label_logprobs=scored)
    config = {"members": [{"name": "scored", "base_url": upstream.base_url("scored"), "model": "scored"},
                          {"name": "bounded", "base_url": upstream.base_url("bounded"), "model": "bounded",
                           "decoding": "one_pass", "prompt_style": "chat"}],
              "ensembles": [{"name": "e", "members": ["scored", "bounded"]}],
              "tasks": [{"name": "t", "labels": ["positive", "negative", "search_a", "search_b"],
                         "prompt_style": "completion", "examples": [{"text": "x", "label": "positive"}]}]}
    gw = gateway_factory(config)
    client = OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
    r = client.chat.completions.create(model="e", messages=[{"role": "user", "content": "meh"}],
                                       extra_body={"task": "t", "item_id": "missing-1"})
    votes = {v["member"]: v for v in r.model_extra["annotation"]["votes"]}
    assert upstream.calls("scored")["calls"] == 2
    asked = upstream.calls("scored")["last"]
    assert asked["prompt_logprobs"] == 0 and asked["prompt"][1] == asked["prompt"][0] + " positive"
    probs = dict(zip(["positive", "negative", "search_a", "search_b"], votes["scored"]["probs"]))
    assert min(probs.values()) > 0.0 and probs["negative"] == max(probs.values())
    assert probs["positive"] / probs["search_a"] == pytest.approx(math.exp(-2.5 + 4.0), rel=1e-3)
    assert upstream.calls("bounded")["calls"] == 1, "no scoring call for a chat prompt"
    bounded = votes["bounded"]["probs"]
    assert min(bounded) > 0.0 and len(set(round(p, 6) for p in bounded)) == 2, "the three missing share the bound"
    stored = httpx.get(f"{gw.v1}/annotations/missing-1").json()["votes"]
    assert all(min(v["probs"]) > 0.0 for v in stored)
