"""Reliability learned online, in the app served in this process: votes stored, refit published (by the refit
worker process the gateway spawns: why this module is an integration test), feedback, calibration, the review queue.
Escalation to a litellm member is in tests/integration/test_litellm_escalation.py; Redis shared by two replicas in
tests/integration/test_redis_replicas.py."""

from __future__ import annotations

import random
from typing import Any

import httpx
from openai import OpenAI

from tests.harness import Upstream, member
from tests.harness.inprocess import InProcessGateway

LABELS = ["positive", "negative"]
N_ITEMS = 60
gateway_in_this_process = True  # as in the unit tier it came from, but its members over TCP


def truth_of(i: int) -> str:
    return LABELS[i % 2] if i % 5 else "negative"  # skewed toward negative


def script_crowd(upstream: Upstream) -> None:
    """Members with known behaviour, answering per item: good, two fair, an adversary, a lazy one."""
    rng = random.Random(7)
    skills = {"good": 0.95, "fair1": 0.7, "fair2": 0.65, "adversary": 0.1}
    for name, skill in skills.items():
        answers = {f"ITEM{i:03d}X": truth_of(i) if rng.random() < skill else
                   next(label for label in LABELS if label != truth_of(i)) for i in range(N_ITEMS)}
        upstream.script(name, keywords=answers)
    upstream.script("lazy", answer="positive")


def config(upstream: Upstream, **store: Any) -> dict[str, Any]:
    crowd = ["good", "fair1", "fair2", "adversary", "lazy"]
    return {
        "store": store or {"backend": "memory"},
        "refit": {"every_items": 100000, "every_s": 3600, "min_items": 10, "min_gold_for_calibration": 10,
                  "poll_s": 0.2},
        "members": [member(upstream, n, price=(1.0, 1.0)) for n in crowd],
        "ensembles": [
            {"name": "ds", "members": crowd, "aggregator": "dawid_skene", "quorum": 3},
            {"name": "mv", "members": crowd, "aggregator": "majority", "quorum": 3},
            {"name": "rev", "members": ["good", "adversary"], "quorum": 2, "review": {"below": 0.6}},
        ],
    }


def label_all(client: OpenAI, model: str, items: range) -> dict[int, Any]:
    return {i: client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"Review ITEM{i:03d}X"}],
        extra_body={"labels": LABELS, "item_id": f"{model}-{i}"}).model_extra["annotation"] for i in items}


def accuracy(annotations: dict[int, Any]) -> float:
    return sum(a["label"] == truth_of(i) for i, a in annotations.items()) / len(annotations)


def gateway_config(upstream: Upstream) -> dict[str, Any]:
    return config(upstream)


def script_upstream(upstream: Upstream) -> None:
    script_crowd(upstream)


def feedback(gateway: Any, **body: Any) -> httpx.Response:
    return gateway.post("/v1/annotations/feedback", json=body)


def test_refit_learns_reliability_and_beats_majority(client: OpenAI, gateway: InProcessGateway) -> None:
    before = label_all(client, "ds", range(N_ITEMS))
    assert all(a["params_version"] == 0 for a in before.values())  # cold start: no fit yet, majority-like
    for i in range(0, N_ITEMS, 3):  # gold for a third of the items
        assert feedback(gateway, item_id=f"ds-{i}", label=truth_of(i), source="gold").status_code == 200
    refit = gateway.post("/v1/annotations/refit", timeout=120).json()
    assert refit["refitted"] and all(v >= 1 for v in refit["versions"].values())
    after = {i: gateway.get(f"/v1/annotations/ds-{i}").json()["aggregate"] for i in range(N_ITEMS)}
    assert all(a["params_version"] >= 1 for a in after.values())
    majority = label_all(client, "mv", range(N_ITEMS))
    print(f"\nmajority {accuracy(majority):.3f}  dawid-skene before refit {accuracy(before):.3f}  "
          f"after {accuracy(after):.3f}")
    assert accuracy(after) > accuracy(majority)
    # new requests use the published parameters, and the calibrated confidence
    fresh = client.chat.completions.create(model="ds", messages=[{"role": "user", "content": "ITEM001X"}],
                                           extra_body={"labels": LABELS, "item_id": "fresh-1"})
    ann = fresh.model_extra["annotation"]
    assert ann["params_version"] >= 1 and ann["label"] == truth_of(1)


def test_feedback_validation(gateway: InProcessGateway) -> None:
    r = feedback(gateway, item_id="ds-1", label="maybe", source="gold")
    assert r.status_code == 400 and r.json()["error"]["param"] == "label"
    r = feedback(gateway, item_id="never-seen", label="positive", source="gold")
    assert r.status_code == 404 and r.json()["error"]["code"] == "item_not_found"
    r = feedback(gateway, item_id="never-seen", label="Positive", source="gold", labels=LABELS)
    assert r.status_code == 200 and r.json()["label"] == "positive"
    r = feedback(gateway, item_id="x", label="positive", source="oracle")
    assert r.status_code == 400 and r.json()["error"]["param"] == "source"


def test_review_queue_and_human_resolution(client: OpenAI, gateway: InProcessGateway, upstream: Upstream) -> None:
    upstream.script("good", answer="yes")  # a label set no refit has seen: a split vote stays at 0.5 confidence
    upstream.script("adversary", answer="no")
    r = client.chat.completions.create(model="rev", messages=[{"role": "user", "content": "a hard one"}],
                                       extra_body={"labels": ["yes", "no"], "item_id": "hard-1"})
    assert r.model_extra["annotation"]["needs_review"] is True
    queue = gateway.get("/v1/review").json()
    entry = next(e for e in queue["data"] if e["item_id"] == "hard-1")
    assert entry["text"] == "a hard one" and entry["labels"] == ["no", "yes"]  # stored in the canonical order
    resolved = feedback(gateway, item_id="hard-1", label="no", source="human", annotator="ana").json()
    assert resolved["resolved_review"] is True
    assert all(e["item_id"] != "hard-1" for e in gateway.get("/v1/review").json()["data"])
    stored = gateway.get("/v1/annotations/hard-1").json()
    assert {"member": "human:ana", "label": "no", "raw": "no"} in stored["votes"]
    assert stored["aggregate"]["label"] == "no"  # the human breaks the tie
