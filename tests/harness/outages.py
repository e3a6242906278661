"""Store outages and shutdown on real processes, as scenarios: a redis-server to kill, stall and restart, a gateway
sent SIGTERM with Redis gone, an idle outage, a batch through an outage. tests/integration/test_outages.py asserts
on what they return; bench/outages.py measures them."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

from tests.harness.batches import custom_ids, finish, start_batch
from tests.harness.gateway import Gateway
from tests.harness.processes import free_port, redis_argv, spawn, stop, wait_redis
from tests.harness.upstream import Upstream, member

BOUND_S = 8.0
"""gateway.shutdown_timeout_s of the SIGTERM tests: the exit must come before it."""
NAMES = ["o1", "o2", "o3"]


class OwnRedis:
    """A redis-server on a port of its own, to kill, start again on the same port, stall (SIGSTOP) and resume;
    `options` are more redis-server arguments (`--appendonly yes` keeps its data across a kill)."""

    def __init__(self, workdir: Path, *options: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.options = options
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        proc = spawn([*redis_argv(self.port, self.workdir), *self.options], stdout=subprocess.DEVNULL)
        wait_redis(self.port, proc)
        return proc

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> None:
        self.proc = self._start()

    def stall(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.resume()
            stop(self.proc)


def config(up: Upstream, **sections: Any) -> dict[str, Any]:
    """A Redis-backed gateway of three members, refitting often (so a refit is likely in flight at a stop)."""
    return {"gateway": {"shutdown_timeout_s": BOUND_S}, "store": {"backend": "redis"},
            "batches": {"concurrency": 6, "lease_s": 4.0, "poll_s": 0.05},
            "refit": {"every_items": 5, "min_items": 3, "every_s": 0.5, "poll_s": 0.05},
            "members": [member(up, n, price=None) for n in NAMES],
            "ensembles": [{"name": "crowd", "members": NAMES, "quorum": len(NAMES)}], **sections}


def client(gw: Gateway) -> OpenAI:
    return OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 20.0) -> float:
    """Poll `check` until it holds; the monotonic time it first held."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s}s"
        time.sleep(0.02)
    return time.monotonic()


def metric(gw: Gateway, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", httpx.get(f"{gw.url}/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def member_calls(up: Upstream) -> int:
    return sum(up.calls(n)["calls"] for n in NAMES)


def store_lines(log: Path, start: int) -> list[str]:
    """The log lines about the store written after byte `start` of the log, and any traceback."""
    text = log.read_bytes()[start:].decode()
    return [line for line in text.splitlines() if "store " in line or "Traceback" in line]


def sigterm_with_redis_gone(when: str, upstream: Upstream, start: Callable[..., Gateway], redis: OwnRedis,
                            log: Path) -> tuple[float, int | None]:
    """Run a gateway to `when` (`mid-batch`, `after-batch`), kill Redis, make the members drop every call, send
    SIGTERM: (seconds until the process ended, its exit code; None when it still ran BOUND_S + 10 s later)."""
    upstream.reset()
    for name in NAMES:
        upstream.script(name, answer="yes", latency_ms=80)
    gw = start(config(upstream), env={"CROWD_GATEWAY_REDIS_URL": redis.url}, output=log)
    if when == "mid-batch":  # a refit is in flight too: it starts at the 5th item and its worker takes seconds
        batch_id = start_batch(client(gw), 200)
        wait_for("10 lines done", lambda: client(gw).batches.retrieve(batch_id).request_counts.completed >= 10)
    else:
        finish(client(gw), start_batch(client(gw), 20))
    redis.kill()
    for name in NAMES:
        upstream.script(name, drop=True)
    started = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = gw.proc.wait(timeout=BOUND_S + 10)
    except subprocess.TimeoutExpired:
        gw.proc.kill()
        code = None
    return time.monotonic() - started, code


def idle_outage(gw: Gateway, redis: OwnRedis, log: Path, seconds: float) -> tuple[list[str], httpx.Response]:
    """Kill Redis under an idle gateway for `seconds`, then start it again: (the log lines about the store from the
    kill until the gateway saw Redis back, /readyz during the outage)."""
    wait_for("ready", lambda: httpx.get(f"{gw.url}/readyz").status_code == 200)
    start = log.stat().st_size
    redis.kill()
    began = time.monotonic()
    wait_for("the outage to be seen", lambda: metric(gw, "crowd_gateway_store_up") == 0)
    ready = httpx.get(f"{gw.url}/readyz")
    time.sleep(max(0.0, seconds - (time.monotonic() - began)))
    redis.restart()
    wait_for("the outage to end", lambda: metric(gw, "crowd_gateway_store_up") == 1)
    return store_lines(log, start), ready


@dataclass
class ThroughOutage:
    """What a batch went through when its store went away for a while."""

    calls_until_seen: int
    """Member calls between the outage's start and the gateway seeing it (the lines already running)."""
    calls_while_seen: int
    """Member calls from then until Redis was back (aim 0)."""
    extra_calls: int
    """Member calls beyond one per line and member over the whole batch: results thrown away (aim 0)."""
    discarded: float
    exactly_once: bool
    """Every line in the output files exactly once."""
    lines: list[str]
    """The log lines about the store from the outage's start to the batch's end."""


def batch_through_outage(upstream: Upstream, gw: Gateway, redis: OwnRedis, log: Path, how: str, seconds: float,
                         n: int) -> ThroughOutage:
    """Start a batch of `n` lines, stall (`how="stall"`, SIGSTOP) or kill Redis a fifth of the way in for
    `seconds`, resume or restart it, and follow the batch to its end (its members scripted by the caller)."""
    batch_id = start_batch(client(gw), n)
    wait_for(f"{n // 5} lines done", lambda: client(gw).batches.retrieve(batch_id).request_counts.completed >= n // 5)
    start = log.stat().st_size
    before = member_calls(upstream)
    began = time.monotonic()
    redis.stall() if how == "stall" else redis.kill()
    wait_for("the outage to be seen", lambda: metric(gw, "crowd_gateway_store_up") == 0)
    seen = member_calls(upstream)
    time.sleep(max(0.0, seconds - (time.monotonic() - began)))
    during = member_calls(upstream)
    redis.resume() if how == "stall" else redis.restart()
    batch = finish(client(gw), batch_id, timeout=60 + n / 20)
    return ThroughOutage(seen - before, during - seen, member_calls(upstream) - n * len(NAMES),
                         metric(gw, 'crowd_gateway_batch_lines_total{outcome="discarded"}'),
                         custom_ids(client(gw), batch) == Counter({f"item-{i}": 1 for i in range(n)}),
                         store_lines(log, start))
