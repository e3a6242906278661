"""One forward pass per vote over real HTTP: one call when the first token decides, two when it does not."""

from __future__ import annotations

from typing import Any

from openai import OpenAI

from tests.conftest import Upstream


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
