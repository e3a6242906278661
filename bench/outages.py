"""Issue 24's figures: store outages and stopping, measured against real processes (prints a table; not a test).

  idle outage      Redis killed for 6 s under an idle gateway, then started again: the log lines it cost
                   (before the fix: 750-800, a traceback per poll) and the seconds until the gateway saw it back.
  batch outage     a 2,000-line batch (32 lines in flight, three members at 100 ms) whose Redis is stalled
                   (SIGSTOP) or killed (and restarted from its append-only file) for 3 s a fifth of the way in:
                   log lines, member calls before and after the gateway saw the outage, calls beyond one per line
                   and member over the batch (results thrown away), whether every line is in the output once.
  SIGTERM          a gateway sent SIGTERM with Redis killed and every member dropping calls, mid-batch (a refit
                   in flight too) and right after a batch, RUNS times each: seconds from the signal to its exit.

The scenarios are the harness's (tests/harness/outages.py, asserted by tests/integration/test_outages.py), with more
lines and repetitions.
Run: flock /tmp/crowd-heavy.lock .venv/bin/python bench/outages.py [--runs 10]   (about 3 minutes)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.harness import Gateway, Upstream, start_gateway, start_upstream  # noqa: E402
from tests.harness.outages import (  # noqa: E402
    BOUND_S, NAMES, OwnRedis, batch_through_outage, config, idle_outage, sigterm_with_redis_gone)


@contextmanager
def gateways(tmp: Path) -> Iterator[Any]:
    """A `start_gateway` that stops every gateway it started when the scenario ends."""
    started: list[Gateway] = []

    def start(cfg: dict[str, Any], **kwargs: Any) -> Gateway:
        started.append(start_gateway(cfg, tmp, **kwargs))
        return started[-1]

    try:
        yield start
    finally:
        for gw in started:
            gw.close()


@contextmanager
def redis_server(tmp: Path, *options: str) -> Iterator[OwnRedis]:
    redis = OwnRedis(tmp, *options)
    try:
        yield redis
    finally:
        redis.close()


def idle(up: Upstream, tmp: Path) -> str:
    log = tmp / "idle.log"
    with redis_server(tmp) as redis, gateways(tmp) as start:
        gw = start(config(up), env={"CROWD_GATEWAY_REDIS_URL": redis.url}, output=log)
        began = time.monotonic()
        lines, ready = idle_outage(gw, redis, log, 6.0)
        took = time.monotonic() - began
    tracebacks = sum("Traceback" in line for line in lines)
    return (f"| idle, Redis killed 6 s | {len(lines)} | {tracebacks} | - | - | - | /readyz {ready.status_code} "
            f"during; back {took - 6.0:.1f} s after Redis; lines: " + " / ".join(lines) + " |")


def batch(up: Upstream, tmp: Path, how: str) -> str:
    log = tmp / f"batch-{how}.log"
    up.reset()
    for name in NAMES:
        up.script(name, answer="yes", latency_ms=100)
    with redis_server(tmp, "--appendonly", "yes", "--appendfsync", "always") as redis, gateways(tmp) as start:
        gw = start(config(up, batches={"concurrency": 32, "poll_s": 0.05}),
                   env={"CROWD_GATEWAY_REDIS_URL": redis.url}, output=log)
        seen = batch_through_outage(up, gw, redis, log, how, 3.0, 2000)
    tracebacks = sum("Traceback" in line for line in seen.lines)
    what = "stalled (SIGSTOP)" if how == "stall" else "killed, restarted from its AOF"
    return (f"| 2,000-line batch, Redis {what} 3 s | {len(seen.lines)} | {tracebacks} | "
            f"{seen.calls_until_seen} / {seen.calls_while_seen} | {seen.extra_calls} | "
            f"{'yes' if seen.exactly_once else 'NO'} | discarded results {seen.discarded:.0f} |")


def sigterm(up: Upstream, tmp: Path, runs: int) -> str:
    times: dict[str, list[float]] = {"mid-batch": [], "after-batch": []}
    unclean = 0
    for run in range(runs):
        for when, seconds in times.items():
            log = tmp / f"sigterm-{when}-{run}.log"
            with redis_server(tmp) as redis, gateways(tmp) as start:
                took, code = sigterm_with_redis_gone(when, up, start, redis, log)
            seconds.append(took)
            text = log.read_text()
            unclean += code != -15 or "Application shutdown complete." not in text or "left behind" in text
    every = [t for ts in times.values() for t in ts]
    per = "; ".join(f"{when} {min(ts):.2f}/{statistics.median(ts):.2f}/{max(ts):.2f} s" for when, ts in times.items())
    return (f"| SIGTERM with Redis gone, {len(every)} runs | - | - | - | - | - | exit after min/median/max "
            f"{min(every):.2f}/{statistics.median(every):.2f}/{max(every):.2f} s (bound {BOUND_S:.0f} s; {per}); "
            f"{unclean} unclean exits |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="SIGTERM runs of each kind (default: 10)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="crowd-outages-"))
    started = time.monotonic()
    with start_upstream() as up:
        rows = [idle(up, tmp), batch(up, tmp, "stall"), batch(up, tmp, "kill"), sigterm(up, tmp, args.runs)]
    print(f"\nOutage benchmark (issue 24), {time.monotonic() - started:.0f} s in all\n")
    print("| scenario | store log lines | tracebacks | member calls before / after the outage was seen | "
          "calls thrown away | every line once | notes |")
    print("|---|---|---|---|---|---|---|")
    print(*rows, sep="\n")


if __name__ == "__main__":
    main()
