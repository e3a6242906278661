"""People through the gateway: labels posted as feedback join the next answers on their items (the completion and
the stored annotation agree), the refit learns their reliability, and params say what was fitted or skipped."""

from __future__ import annotations

import random
from typing import Any

import httpx
from openai import OpenAI

from tests.harness import Upstream

LABELS = ["positive", "negative"]
MEMBERS = ("m1", "m2", "m3")


def ask(client: OpenAI, item: str) -> dict[str, Any]:
    r = client.chat.completions.create(model="crowd", messages=[{"role": "user", "content": f"{item} "}],
                                       extra_body={"labels": LABELS, "item_id": item})
    return r.model_extra["annotation"]


def test_a_person_joins_the_answers_on_their_items(upstream: Upstream, gateway_factory: Any) -> None:
    """Three 0.7-accurate members; people (right 95% of the time) label every item, 40 of them gold."""
    rng = random.Random(4)
    truth = {f"txt-{i:03d}": rng.choice(LABELS) for i in range(80)}
    flip = {"positive": "negative", "negative": "positive"}
    upstream.reset()
    for name in MEMBERS:
        upstream.script(name, keywords={f"{t} ": (g if rng.random() < 0.7 else flip[g]) for t, g in truth.items()})
    config = {"refit": {"every_items": 10**6, "every_s": 3600, "min_items": 10, "min_gold_for_calibration": 20},
              "members": [{"name": n, "base_url": upstream.base_url(n), "model": n} for n in MEMBERS],
              "ensembles": [{"name": "crowd", "members": list(MEMBERS), "aggregator": "auto", "quorum": 1}]}
    gw = gateway_factory(config)
    client = OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
    for i, (item, label) in enumerate(truth.items()):
        ask(client, item)
        person = label if rng.random() < 0.95 else flip[label]
        lines = [{"item_id": item, "label": person, "source": "human", "annotator": f"p{i % 8}"}]
        if i < 40:
            lines.append({"item_id": item, "label": label, "source": "gold"})
        assert httpx.post(f"{gw.v1}/annotations/feedback", json={"data": lines}).status_code == 200
    refit = httpx.post(f"{gw.v1}/annotations/refit", timeout=120).json()
    assert refit["refitted"] == [refit["refitted"][0]] and refit["skipped"] == []
    params = httpx.get(f"{gw.v1}/annotations/params").json()["data"][0]
    assert params["people"]["method"] == "em" and params["people"]["people"] == 8
    assert params["baseline"]["label"] in LABELS and "prior" in params["candidates"]

    right_with, disagreeing = 0, 0
    for item in list(truth)[40:]:
        ann = ask(client, item)
        people = [v for v in ann["votes"] if v["member"].startswith("human:")]
        assert len(people) == 1 and people[0]["cost_usd"] == 0
        stored = httpx.get(f"{gw.v1}/annotations/{item}").json()["aggregate"]
        assert (stored["label"], stored["distribution"], stored["confidence"]) == (
            ann["label"], ann["distribution"], ann["confidence"]), "one function serves both"
        right_with += ann["label"] == truth[item]
        llm = [v["label"] for v in ann["votes"] if not v["member"].startswith("human:")]
        disagreeing += max(llm.count("positive"), llm.count("negative")) < 3 or llm[0] != people[0]["label"]
    assert disagreeing > 5
    assert right_with / 40 >= 0.9, "the people's 95% carry the answers the members split on"


def test_an_empty_refit_says_why(upstream: Upstream, gateway_factory: Any) -> None:
    upstream.reset()
    config = {"refit": {"every_items": 10**6, "every_s": 3600, "min_items": 10},
              "members": [{"name": n, "base_url": upstream.base_url(n), "model": n, "template": None} for n in MEMBERS],
              "ensembles": [{"name": "crowd", "members": list(MEMBERS), "aggregator": "auto", "quorum": 1}]}
    gw = gateway_factory(config)
    client = OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
    ask(client, "only-one")
    refit = httpx.post(f"{gw.v1}/annotations/refit", timeout=60).json()
    assert refit["refitted"] == [] and refit["versions"] == {}
    skipped = refit["skipped"][0]
    assert skipped["setting"] == "refit.min_items" and "1 items have two or more votes" in skipped["reason"]
    assert httpx.get(f"{gw.v1}/annotations/params").json()["skipped"] == refit["skipped"]
