"""Escalation to a member reached through litellm, against the fake upstream as a real server: litellm calls its
provider with its own HTTP client, which the unit tier's in-memory connector does not carry (moved here from
the unit tier's test_reliability.py)."""

from __future__ import annotations

from typing import Any

from openai import OpenAI

from tests.harness import Upstream, member
from tests.integration.test_reliability import LABELS, N_ITEMS, truth_of


def gateway_config(upstream: Upstream) -> dict[str, Any]:
    return {
        "members": [member(upstream, n, price=(1.0, 1.0)) for n in ("fair1", "fair2")]
        + [member(upstream, "strong", price=(1.0, 1.0), dialect="litellm", model="openai/strong")],
        "ensembles": [{"name": "esc", "members": ["fair1", "fair2"], "quorum": 2,
                       "escalation": {"below": 0.99, "to": "strong"}}],
    }


def script_upstream(upstream: Upstream) -> None:
    upstream.script("strong", keywords={f"ITEM{i:03d}X": truth_of(i) for i in range(N_ITEMS)})


def test_escalation_asks_the_strong_member_through_litellm(client: OpenAI, upstream: Upstream) -> None:
    upstream.script("fair1", answer="positive")
    upstream.script("fair2", answer="negative")
    r = client.chat.completions.create(model="esc", messages=[{"role": "user", "content": "ITEM004X"}],
                                       extra_body={"labels": LABELS})
    ann = r.model_extra["annotation"]
    assert ann["escalated"] is True and [v["member"] for v in ann["votes"]] == ["fair1", "fair2", "strong"]
    strong = ann["votes"][2]
    assert strong["label"] == truth_of(4) and strong["error"] is None
    sent = upstream.calls("strong")["last"]  # litellm sent the JSON-schema-constrained request
    assert sent["response_format"]["json_schema"]["schema"]["properties"]["label"]["enum"] == LABELS
    assert ann["label"] == truth_of(4)
