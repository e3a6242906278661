"""Human labels in bulk: one request carries many feedback lines, all checked before any is stored."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Upstream, member
from tests.harness.inprocess import InProcessGateway

LABELS = ["positive", "negative"]


@pytest.fixture(scope="module")
def gateway(upstream: Upstream) -> Iterator[InProcessGateway]:
    gw = InProcessGateway({"members": [member(upstream, "b1")], "ensembles": [{"name": "e", "members": ["b1"]}]})
    yield gw
    gw.close()


def line(item: str, label: str, who: str = "ana") -> dict[str, object]:
    return {"item_id": item, "label": label, "source": "human", "annotator": who, "labels": LABELS}


def test_many_human_labels_in_one_request(gateway: InProcessGateway) -> None:
    r = gateway.post("/v1/annotations/feedback", json={"data": [line(f"bulk-{i}", LABELS[i % 2]) for i in range(30)]})
    assert r.status_code == 200 and len(r.json()["data"]) == 30
    stored = gateway.get("/v1/annotations/bulk-7").json()
    assert stored["votes"] == [{"member": "human:ana", "label": "negative", "raw": "negative"}]


def test_one_bad_line_stores_none(gateway: InProcessGateway) -> None:
    r = gateway.post("/v1/annotations/feedback", json={"data": [line("fine-1", "positive"), line("bad-1", "meh")]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "label" and "bad-1" in r.json()["error"]["message"]
    assert gateway.get("/v1/annotations/fine-1").status_code == 404
    too_many = gateway.post("/v1/annotations/feedback", json={"data": [line("x", "positive")] * 1001})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "data"


def test_uncertain_items_come_first_for_human_labels(gateway: InProcessGateway, upstream: Upstream) -> None:
    gateway.post("/v1/annotations/feedback", json={"data": [line("sure-1", "positive", "ana"),
                                                            line("sure-1", "positive", "bo"),
                                                            line("torn-1", "positive", "ana"),
                                                            line("torn-1", "negative", "bo")]})
    entries = gateway.get("/v1/review", params={"strategy": "uncertain", "limit": 1000}).json()["data"]
    order = [e["item_id"] for e in entries]
    assert order.index("torn-1") < order.index("sure-1")
    torn = next(e for e in entries if e["item_id"] == "torn-1")
    assert torn["margin"] == 0.0 and torn["agreement"] == 0.5
    assert gateway.get("/v1/review", params={"strategy": "loudest"}).status_code == 400
