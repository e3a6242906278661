"""Outages and shutdown on real processes (issue 24; issue 20, item 2), each test with a redis-server of its own.

A gateway sent SIGTERM with Redis gone exits within `gateway.shutdown_timeout_s`, mid-batch and just after one
(`CROWD_GATEWAY_SIGTERM_RUNS` repetitions of each, 2 by default: each run starts a gateway, about 4 s);
a Redis outage is a few log lines, not a traceback per call; batch lines wait out a stalled store instead of
calling members for results nobody can record; a stalled Redis turns the store routes and /readyz into 503s
within 2 s while completions still answer; a SIGKILLed gateway leaves no worker process behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.harness import Gateway, Upstream, free_port, member, redis_argv, stop, wait_redis
from tests.integration.test_batches_durability import custom_ids, finish, start_batch

BOUND_S = 8.0
"""gateway.shutdown_timeout_s of the SIGTERM tests: the exit must come before it."""
RUNS = int(os.environ.get("CROWD_GATEWAY_SIGTERM_RUNS", "2"))
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
        proc = subprocess.Popen([*redis_argv(self.port, self.workdir), *self.options], stdout=subprocess.DEVNULL)
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


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    redis = OwnRedis(tmp_path)
    try:
        yield redis
    finally:
        redis.close()


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


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("when", ["mid-batch", "after-batch"])
def test_sigterm_with_redis_gone_exits_within_the_bound(when: str, run: int, upstream: Upstream,
                                                       gateway_factory: Any, own_redis: OwnRedis,
                                                       tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    took, code = sigterm_with_redis_gone(when, upstream, gateway_factory, own_redis, log)
    text = log.read_text()
    assert took < BOUND_S and code == -signal.SIGTERM, (took, code, text[-3000:])
    assert "Application shutdown complete." in text and "left behind" not in text, text[-3000:]


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


def test_an_idle_outage_is_a_few_log_lines(upstream: Upstream, gateway_factory: Any, own_redis: OwnRedis,
                                           tmp_path: Path) -> None:
    """Redis gone for 3 s under an idle gateway: each component that met it (background work waits for the store
    once the outage is known) logs its start and its end, without a traceback; the outage is in
    crowd_gateway_store_up and /readyz; it ends by itself when Redis is back."""
    log = tmp_path / "gateway.log"
    gw = gateway_factory(config(upstream), env={"CROWD_GATEWAY_REDIS_URL": own_redis.url}, output=log)
    lines, ready = idle_outage(gw, own_redis, log, 3.0)
    assert ready.status_code == 503 and "ConnectionError" in ready.json()["store"], ready.text
    assert httpx.get(f"{gw.url}/readyz").status_code == 200
    starts = Counter(re.search(r"store unavailable \((\w[\w ]*)\)", line).group(1)
                     for line in lines if "store unavailable (" in line)
    ends = Counter(re.search(r"store available again \((\w[\w ]*)\)", line).group(1)
                   for line in lines if "available again" in line)
    assert starts and set(starts) <= {"refit", "batches", "readiness"}, lines  # whichever met it before it was known
    assert starts == ends and max(starts.values()) == 1 and len(lines) == 2 * len(starts), lines
    assert all("ConnectionError: Error 111" in line for line in lines if "unavailable" in line), lines


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


def test_batch_lines_wait_out_a_stalled_store(upstream: Upstream, gateway_factory: Any, own_redis: OwnRedis,
                                              tmp_path: Path) -> None:
    """Redis stalled (SIGSTOP) for 3 s mid-batch: no line starts and no member is called once the stall is seen;
    the lines that were running keep their results and record them when Redis answers again, so no line runs
    twice; the batch then completes by itself, every line exactly once."""
    upstream.reset()
    for name in NAMES:
        upstream.script(name, answer="yes", latency_ms=150)
    log = tmp_path / "gateway.log"
    gw = gateway_factory(config(upstream, batches={"concurrency": 4, "lease_s": 4.0, "poll_s": 0.05}),
                         env={"CROWD_GATEWAY_REDIS_URL": own_redis.url}, output=log)
    seen = batch_through_outage(upstream, gw, own_redis, log, "stall", 3.0, 40)
    assert seen.calls_while_seen == 0 and seen.calls_until_seen <= 4 * len(NAMES), seen
    assert seen.extra_calls == 0 and seen.discarded == 0 and seen.exactly_once, seen
    assert not any("Traceback" in line for line in seen.lines) and len(seen.lines) <= 8, seen.lines


def test_a_stalled_redis_is_a_503_within_2s_and_completions_still_answer(upstream: Upstream, gateway_factory: Any,
                                                                          own_redis: OwnRedis) -> None:
    upstream.reset()
    for name in NAMES:
        upstream.script(name, answer="yes")
    gw = gateway_factory(config(upstream), env={"CROWD_GATEWAY_REDIS_URL": own_redis.url})
    body = {"model": "crowd", "labels": ["yes", "no"], "item_id": "kept", "messages": [{"role": "user",
                                                                                      "content": "x"}]}
    assert httpx.post(f"{gw.v1}/chat/completions", json=body, timeout=30).json()["annotation"]["stored"] is True
    own_redis.stall()
    for path in ("/v1/annotations/kept", "/v1/review", "/readyz", "/v1/annotations/kept"):
        started = time.monotonic()
        r = httpx.get(f"{gw.url}{path}", timeout=10)
        took = time.monotonic() - started
        assert r.status_code == 503 and took < 2.0, (path, r.status_code, took, r.text)
        assert (r.json()["ready"] is False) if path == "/readyz" else r.json()["error"]["code"] == "store_unavailable"
    started = time.monotonic()
    r = httpx.post(f"{gw.v1}/chat/completions", json={**body, "item_id": "lost"}, timeout=30)
    assert r.status_code == 200 and r.json()["annotation"]["stored"] is False and time.monotonic() - started < 2.0
    own_redis.resume()
    wait_for("ready again", lambda: httpx.get(f"{gw.url}/readyz").status_code == 200)
    assert httpx.get(f"{gw.v1}/annotations/kept").status_code == 200


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pids: list[int]) -> list[int]:
    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    return [pid for pid in pids if running(pid)]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_sigkilled_gateway_leaves_no_process_behind(workers: int, upstream: Upstream, gateway_factory: Any) -> None:
    """The refit worker process and multiprocessing's resource tracker (and with --workers, the uvicorn workers
    and their refit workers) end when the gateway is SIGKILLed, instead of living on as orphans."""
    upstream.reset()
    for name in NAMES:
        upstream.script(name, answer="yes")
    gw = gateway_factory({**config(upstream), "store": {"backend": "memory"},
                          "refit": {"every_items": 3, "min_items": 3, "poll_s": 0.1}}, workers=workers)
    for i in range(8 * workers):
        httpx.post(f"{gw.v1}/chat/completions", timeout=30, json={
            "model": "crowd", "labels": ["yes", "no"], "messages": [{"role": "user", "content": f"item {i}"}]})

    def spawned() -> int:  # uvicorn's workers and the refit workers (the resource tracker runs another command)
        return sum(b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in alive(descendants(
            gw.proc.pid)))

    wait_for("a refit worker process", lambda: spawned() >= (1 if workers == 1 else workers + 1), timeout_s=60)
    below = descendants(gw.proc.pid)
    gw.proc.kill()
    gw.proc.wait()
    try:
        wait_for("every process below the gateway to end", lambda: not alive(below), timeout_s=10)
    finally:
        for pid in alive(below):  # this test's own processes, left behind: named in the failure above
            os.kill(pid, signal.SIGKILL)
