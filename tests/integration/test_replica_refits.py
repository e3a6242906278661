"""Two `crowd-gateway serve` replicas on one real redis-server run one job (issue 20): every line answered once,
one refit per `refit.every_items` new items between them (never one each), and both serve each new version."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
from openai import OpenAI

from tests.harness import Gateway, Upstream, member
from tests.harness.batches import custom_ids, finish, start_batch
from tests.integration.test_batches_durability import db_url

EVERY = 30
POLL_S = 0.2


def config(up: Upstream, names: list[str]) -> dict[str, Any]:
    return {"store": {"backend": "redis"},
            "batches": {"concurrency": 8, "poll_s": 0.05},
            "refit": {"every_items": EVERY, "every_s": 3600, "min_items": 5, "poll_s": POLL_S},
            "members": [member(up, n, price=None) for n in names],
            "ensembles": [{"name": "crowd", "members": names, "aggregator": "dawid_skene", "quorum": len(names)}]}


def versions(replicas: list[Gateway]) -> list[int]:
    """The parameter version each replica serves for the batch's schema (0 before any)."""
    served = []
    for gw in replicas:
        data = httpx.get(f"{gw.v1}/annotations/params").json()["data"]
        served.append(max((entry["version"] for entry in data), default=0))
    return served


def served_by_all(replicas: list[Gateway], version: int, timeout_s: float = 60.0) -> list[int]:
    """Wait until every replica serves `version` (a refit's worker process starts and imports in seconds)."""
    deadline = time.monotonic() + timeout_s
    while (seen := versions(replicas)) != [version] * len(replicas) and time.monotonic() < deadline:
        time.sleep(POLL_S / 2)
    return seen


def test_two_replicas_refit_once_per_every_items_and_serve_the_same_version(upstream: Upstream,
                                                                           gateway_factory: Any,
                                                                           redis_url: str) -> None:
    names = ["v1", "v2", "v3"]
    for name, answer in zip(names, ["yes", "yes", "no"]):
        upstream.script(name, answer=answer)
    env = {"CROWD_GATEWAY_REDIS_URL": db_url(redis_url, 3)}
    replicas = [gateway_factory(config(upstream, names), env=env) for _ in range(2)]
    a, b = (OpenAI(base_url=g.v1, api_key="unused", max_retries=0) for g in replicas)
    for round_, client in enumerate((a, b), start=1):
        batch = finish(client, start_batch(client, EVERY, first=EVERY * (round_ - 1)))
        assert custom_ids(client, batch) == Counter({f"item-{i}": 1 for i in range(EVERY * (round_ - 1),
                                                                                     EVERY * round_)})
        assert served_by_all(replicas, round_) == [round_, round_]  # one refit between them, served by both
        time.sleep(5 * POLL_S)  # time enough for a replica that would refit the same items again
        assert versions(replicas) == [round_, round_]
    fitted = httpx.get(f"{replicas[0].v1}/annotations/params").json()["data"][0]["fitted_on"]
    assert fitted["items"] == fitted["stored_items"] == 2 * EVERY
