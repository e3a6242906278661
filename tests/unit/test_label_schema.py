"""One label set, one schema: the same labels in any order or case share votes, gold and one fit, and every
client is answered in its own spelling and order (issue 12: three spellings of one set were three fits). That they
share one fit, made by the refit worker process, is in tests/integration/test_label_schema_fit.py."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai import OpenAI

from tests.harness import Upstream, member
from tests.harness.inprocess import InProcessGateway

SPELLINGS = [["positive", "negative"], ["negative", "positive"], ["Positive", "Negative"]]


def gateway_config(upstream: Upstream) -> dict[str, Any]:
    return {
        "refit": {"every_items": 100000, "every_s": 3600, "min_items": 2, "min_gold_for_calibration": 2,
                  "poll_s": 0.2},
        "members": [member(upstream, n) for n in ("a", "b", "c")],
        "ensembles": [{"name": "crowd", "members": ["a", "b", "c"], "aggregator": "dawid_skene", "quorum": 2}],
        "tasks": [{"name": "sentiment", "labels": ["positive", "negative"]}],
    }


def script_upstream(upstream: Upstream) -> None:
    upstream.script("a", answer="negative", logprobs={"neg": -0.1, "pos": -2.5})
    upstream.script("b", answer="positive")
    upstream.script("c", answer="negative")


def ask(client: OpenAI, text: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    r = client.chat.completions.create(model="crowd", messages=[{"role": "user", "content": text}], extra_body=extra)
    return r.choices[0].message.content or "", r.model_extra["annotation"]


def test_any_order_or_case_is_one_schema_answered_in_the_callers_spelling(
        client: OpenAI, gateway: InProcessGateway, upstream: Upstream) -> None:
    answers = [ask(client, "a dull film", labels=labels) for labels in SPELLINGS]
    assert len({ann["schema"] for _, ann in answers}) == 1
    assert len({ann["item_id"] for _, ann in answers}) == 1  # the derived item id is the same item, too
    for labels, (content, ann) in zip(SPELLINGS, answers):
        negative = labels[[label.casefold() for label in labels].index("negative")]
        assert content == ann["label"] == negative
        assert list(ann["distribution"]) == labels  # the caller's spelling, in the caller's order
        soft = next(v for v in ann["votes"] if v["member"] == "a")
        assert soft["label"] == negative and {v["label"] for v in ann["votes"]} <= set(labels)
        assert soft["probs"][labels.index(negative)] > 0.9  # the soft vote follows the caller's order
    assert upstream.calls("a")["last"]["structured_outputs"]["choice"] == ["Positive", "Negative"]  # prompt as sent

    stored = gateway.get(f"/v1/annotations/{answers[0][1]['item_id']}").json()
    assert stored["labels"] == ["negative", "positive"]  # stored once, canonical: casefolded, sorted
    assert sorted(v["member"] for v in stored["votes"]) == ["a", "b", "c"]  # re-asking replaced, never stacked
    assert {v["label"] for v in stored["votes"]} == {"negative", "positive"}
    assert next(v for v in stored["votes"] if v["member"] == "a")["probs"][0] > 0.9


def test_a_json_schema_enum_is_the_same_schema_and_answered_in_its_spelling(client: OpenAI) -> None:
    _, plain = ask(client, "a fine film", labels=["positive", "negative"])
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": {
        "type": "object", "properties": {"sentiment": {"enum": ["NEGATIVE", "Positive"]}}}}}
    content, ann = ask(client, "a fine film", response_format=fmt)
    assert ann["schema"] == plain["schema"] and orjson.loads(content) == {"sentiment": "NEGATIVE"}


@pytest.mark.parametrize("labels", [["positive", "Positive"], ["yes", "no", "YES"]])
def test_labels_that_differ_only_by_case_are_the_clients_400(gateway: InProcessGateway, labels: list[str]) -> None:
    r = gateway.post("/v1/chat/completions", json={"model": "crowd", "labels": labels,
                                                   "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "labels"
    r = gateway.post("/v1/annotations/feedback", json={"item_id": "case-dupe", "label": labels[0], "source": "gold",
                                                       "labels": labels})
    assert r.status_code == 400 and r.json()["error"]["param"] == "labels"


def test_a_task_takes_its_own_labels_in_any_order_or_case_and_nothing_else(client: OpenAI,
                                                                             gateway: InProcessGateway) -> None:
    content, ann = ask(client, "a task item", task="sentiment", labels=["NEGATIVE", "Positive"])
    assert ann["schema"] == "sentiment" and content == "NEGATIVE" and list(ann["distribution"]) == ["NEGATIVE",
                                                                                                    "Positive"]
    r = gateway.post("/v1/chat/completions", json={"model": "crowd", "task": "sentiment", "labels": ["yes", "no"],
                                                   "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "labels"
    assert "sentiment" in r.json()["error"]["message"]
