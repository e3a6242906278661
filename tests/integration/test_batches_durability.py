"""Durability on a real redis-server: a gateway SIGKILLed mid-batch, and two replicas sharing one batch."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from typing import Any

import pytest
import redis
from openai import OpenAI

from tests.harness import Gateway, Upstream, member
from tests.harness.batches import custom_ids, finish, lines_run, start_batch

LEASE_S = 1.0
CONCURRENCY = 6


def config(up: Upstream, names: list[str]) -> dict[str, Any]:
    return {"store": {"backend": "redis"},
            "batches": {"concurrency": CONCURRENCY, "lease_s": LEASE_S, "poll_s": 0.05},
            "members": [member(up, n, price=None) for n in names],
            "ensembles": [{"name": "crowd", "members": names, "quorum": len(names)}]}


def db_url(redis_url: str, db: int) -> str:
    """Each test its own database, so no batch left behind by another test is picked up."""
    url = redis_url.rsplit("/", 1)[0] + f"/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


def test_sigkill_mid_batch_then_restart_loses_and_duplicates_nothing(upstream: Upstream, gateway_factory: Any,
                                                                      redis_url: str) -> None:
    names, n = ["k1", "k2", "k3"], 60
    for name in names:
        upstream.script(name, answer="yes", latency_ms=120)
    env = {"CROWD_GATEWAY_REDIS_URL": db_url(redis_url, 1)}
    first: Gateway = gateway_factory(config(upstream, names), env=env)
    client = OpenAI(base_url=first.v1, api_key="unused", max_retries=0)
    batch_id = start_batch(client, n)
    store = redis.Redis.from_url(env["CROWD_GATEWAY_REDIS_URL"])
    # killed while lines are leased (between two leases none is, and under load that gap is long enough to hit)
    while (client.batches.retrieve(batch_id).request_counts.completed < 12
           or store.zcard(f"crowd:batch:{{{batch_id}}}:leases") == 0):
        time.sleep(0.01)
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()

    # what the dead process left behind in Redis: these leased lines are the only ones that may run twice
    leased_at_kill = store.zcard(f"crowd:batch:{{{batch_id}}}:leases")
    done_at_kill = int(store.hget(f"crowd:batch:{{{batch_id}}}", "completed"))
    assert 0 < leased_at_kill <= CONCURRENCY and 12 <= done_at_kill < n  # the kill landed mid-batch

    second: Gateway = gateway_factory(config(upstream, names), env=env)
    client = OpenAI(base_url=second.v1, api_key="unused", max_retries=0)
    batch = finish(client, batch_id)
    assert batch.request_counts.completed == n and batch.request_counts.failed == 0
    assert custom_ids(client, batch) == Counter({f"item-{i}": 1 for i in range(n)})  # every line exactly once
    for name in names:
        calls = upstream.calls(name)["calls"]
        # each line asks each member once; only lines leased at the kill may have asked twice
        assert n <= calls <= n + leased_at_kill, (name, calls, leased_at_kill)
    assert store.zcard("crowd:batches:active") == 0 and not store.exists(f"crowd:batch:{{{batch_id}}}:results")


@pytest.mark.parametrize("n", [90])
def test_two_replicas_on_one_redis_run_every_line_exactly_once(upstream: Upstream, gateway_factory: Any,
                                                                redis_url: str, n: int) -> None:
    names = ["r1", "r2", "r3"]
    for name in names:
        upstream.script(name, answer="no", latency_ms=40)
    env = {"CROWD_GATEWAY_REDIS_URL": db_url(redis_url, 2)}
    replicas = [gateway_factory(config(upstream, names), env=env) for _ in range(2)]
    a, b = (OpenAI(base_url=g.v1, api_key="unused", max_retries=0) for g in replicas)
    batch_id = start_batch(a, n)
    batch = finish(b, batch_id)  # created on one replica, followed on the other
    assert batch.request_counts.completed == n
    assert custom_ids(b, batch) == Counter({f"item-{i}": 1 for i in range(n)})
    assert a.files.content(batch.output_file_id).content == b.files.content(batch.output_file_id).content
    for name in names:
        assert upstream.calls(name)["calls"] == n  # no line ran twice
    shares = [lines_run(g) for g in replicas]
    assert sum(shares) == n and min(shares) > 0, shares  # both replicas worked on it
