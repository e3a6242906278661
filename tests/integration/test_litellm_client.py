"""LiteLLM as a client of the gateway (the README's recipe): `openai/<ensemble>` with `api_base`, the label set
through `extra_body`; the annotation block arrives as an attribute of the response, the `x-crowd-*` headers in
`_hidden_params["additional_headers"]` (prefixed `llm_provider-`), which is all a streamed call keeps."""

from __future__ import annotations

import os
from typing import Any

from tests.conftest import Upstream, member
from tests.inprocess import InProcessGateway

gateway_in_this_process = True  # litellm's own HTTP client needs a URL
LABELS = ["positive", "negative"]


def script_upstream(upstream: Upstream) -> None:
    for name in ("la", "lb"):
        upstream.script(name, keywords={"good": "positive", "bad": "negative"})


def gateway_config(upstream: Upstream) -> dict[str, Any]:
    return {"members": [member(upstream, n) for n in ("la", "lb")],
            "ensembles": [{"name": "crowd", "members": ["la", "lb"], "quorum": 2}]}


def test_litellm_completion_gets_label_annotation_and_headers(gateway: InProcessGateway, upstream: Upstream) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    call = {"model": "openai/crowd", "api_base": gateway.v1, "api_key": "unused",
            "messages": [{"role": "user", "content": "a good film"}], "extra_body": {"labels": LABELS}}
    answer = litellm.completion(**call)
    assert answer.choices[0].message.content == "positive"
    assert answer.annotation["label"] == "positive" and len(answer.annotation["votes"]) == 2
    assert answer.usage.cost_usd > 0
    headers = answer._hidden_params["additional_headers"]
    assert float(headers["llm_provider-x-crowd-confidence"]) == answer.annotation["confidence"]

    stream = litellm.completion(**call, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "positive"
    assert "llm_provider-x-crowd-confidence" in stream._hidden_params["additional_headers"]
