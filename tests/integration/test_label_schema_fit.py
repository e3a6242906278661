"""One label set, one fit: votes and gold sent in three spellings of one label set are refitted as one schema, by the
refit worker process the gateway spawns (why this is an integration test; the rest of the rule is in
tests/unit/test_label_schema.py, whose gateway config this module serves)."""

from __future__ import annotations

from openai import OpenAI

from tests.harness.inprocess import InProcessGateway
from tests.unit.test_label_schema import SPELLINGS, ask, gateway_config, script_upstream  # noqa: F401 - module hooks

gateway_in_this_process = True  # as in the unit tier it came from, but its members over TCP


def test_votes_gold_and_the_fit_merge_across_spellings(client: OpenAI, gateway: InProcessGateway) -> None:
    schemas = set()
    for i in range(6):
        _, ann = ask(client, f"merge item {i}", labels=SPELLINGS[i % 3], item_id=f"merge-{i}")
        schemas.add(ann["schema"])
        gold = gateway.post("/v1/annotations/feedback", json={
            "item_id": f"merge-{i}", "label": "NEGATIVE", "source": "gold"}).json()
        schemas.add(gold["schema"])
        assert gold["label"] == "negative"  # stored in the canonical spelling
    fresh = gateway.post("/v1/annotations/feedback", json={
        "item_id": "merge-new", "label": "Positive", "source": "gold", "labels": ["NEGATIVE", "POSITIVE"]}).json()
    schemas.add(fresh["schema"])
    assert len(schemas) == 1
    (schema,) = schemas
    refit = gateway.post("/v1/annotations/refit", timeout=120).json()
    assert schema in refit["refitted"]
    params = [p for p in gateway.get("/v1/annotations/params").json()["data"] if p["schema"].startswith("labels-")]
    assert [p["schema"] for p in params] == [schema]  # one fit for the three spellings
    assert params[0]["fitted_on"]["gold"] >= 6
