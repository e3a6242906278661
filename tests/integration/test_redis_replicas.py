"""Two gateway replicas on one real redis-server share votes and gold: what one stored, the other reads.
The replicas are two apps in this process (the store is the point, not the process)."""

from __future__ import annotations

import pytest

from tests.harness import Upstream
from tests.harness.inprocess import InProcessGateway
from tests.integration.test_reliability import LABELS, config, feedback


def test_redis_store_is_shared_by_replicas(upstream: Upstream, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_REDIS_URL", redis_url)
    cfg = config(upstream, backend="redis", redis_url_env="TEST_REDIS_URL")
    one, two = InProcessGateway(cfg), InProcessGateway(cfg)
    try:
        one.openai().chat.completions.create(model="ds", messages=[{"role": "user", "content": "ITEM002X"}],
                                             extra_body={"labels": LABELS, "item_id": "shared-1"})
        seen = two.get("/v1/annotations/shared-1").json()
        assert sorted(v["member"] for v in seen["votes"]) == sorted(["good", "fair1", "fair2", "adversary", "lazy"])
        assert feedback(two, item_id="shared-1", label="negative", source="gold").status_code == 200
        assert one.get("/v1/annotations/shared-1").json()["gold"] == "negative"
    finally:
        one.close()
        two.close()
