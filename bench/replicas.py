"""Several replicas on one job (issue 20): N `crowd-gateway serve` processes on one redis-server run one batch
against the fast test upstream (prints figures; not a test).

The batch (default 100,000 lines) is created on the first replica and run by all; five vLLM-dialect members vote
in one pass on a completion-style task (bench/batch.py's setup), `aggregator: dawid_skene`, the refit at its
defaults (`every_items` 50, `poll_s` 1, `max_items` 10,000). While it runs, every replica's
`/v1/annotations/params` is read every `--sample-s`. Reported: lines per second; every line answered exactly once
(the output file's custom ids, each member's prompts, the replicas' `crowd_gateway_batch_lines_total`); the refits
(from the replicas' logs: who refitted, on how many stored items, how long it took; a refit repeated by another
replica would show as two refits less than `every_items` items apart); how long after a version was first served
every replica served it, against `poll_s`; each process's CPU.

Run: flock /tmp/crowd-heavy.lock .venv/bin/python bench/replicas.py [--lines 100000] [--replicas 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.batch import cpu_seconds, fake_config, finish_batch, script_members, texts, upload_lines  # noqa: E402
from bench.scale import children  # noqa: E402
from tests.harness import Gateway, start_gateway, start_redis, start_upstream, stop  # noqa: E402
from tests.harness.batches import custom_ids, lines_run  # noqa: E402

MEMBERS = 5
REFIT = re.compile(r"refit \S+ v(\d+) on \d+ votes of \d+ items \((\d+) stored\) in ([\d.]+)s")


class Versions(threading.Thread):
    """Reads the parameter version each replica serves, every `every_s`: when each version was first served
    anywhere, and when by every replica."""

    def __init__(self, replicas: list[Gateway], every_s: float) -> None:
        super().__init__(daemon=True)
        self.replicas, self.every_s = replicas, every_s
        self.first: dict[int, float] = {}
        self.everywhere: dict[int, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.done.is_set():
                served = [max((e["version"] for e in http.get(f"{g.v1}/annotations/params").json()["data"]),
                              default=0) for g in self.replicas]
                now = time.monotonic()
                for v in range(1, max(served) + 1):
                    self.first.setdefault(v, now)
                for v in range(1, min(served) + 1):
                    self.everywhere.setdefault(v, now)
                time.sleep(self.every_s)

    def lags(self) -> list[float]:
        return [self.everywhere[v] - t for v, t in self.first.items() if v in self.everywhere]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--sample-s", type=float, default=0.1, help="how often each replica's version is read")
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args()
    load = os.getloadavg()
    started: list[subprocess.Popen[bytes]] = []
    replicas: list[Gateway] = []
    with tempfile.TemporaryDirectory(prefix="crowd-bench-replicas-") as tmp:
        workdir = Path(tmp)
        try:
            fake = start_upstream()
            started.append(fake.proc)
            upstream, upstream_port = fake.url, fake.port
            script_members(upstream, MEMBERS)
            redis, redis_url = start_redis(workdir)
            started.append(redis)
            config = fake_config(upstream_port, MEMBERS, 32, "redis", 32)
            config["batches"]["max_lines"] = args.lines
            config["ensembles"][0]["aggregator"] = "dawid_skene"
            poll_s = config.setdefault("refit", {}).setdefault("poll_s", 1.0)
            env = {"CROWD_GATEWAY_REDIS_URL": redis_url}
            logs = [workdir / f"replica-{r}.log" for r in range(args.replicas)]
            replicas = [start_gateway(config, workdir, env, output=log) for log in logs]
            cpu0 = {p.pid: cpu_seconds(p.pid) for p in [*started, *(g.proc for g in replicas)]}
            versions = Versions(replicas, args.sample_s)
            versions.start()
            first = replicas[0].openai()
            batch, elapsed = finish_batch(first, upload_lines(first, "crowd", "sentiment", texts(args.lines)),
                                          args.timeout)
            time.sleep(3 * poll_s)  # the last refit's version reaches every replica
            versions.done.set()
            versions.join()
            cpu = {pid: cpu_seconds(pid) - before for pid, before in cpu0.items()}
            workers = [sum(cpu_seconds(c) for c in children(g.proc.pid)) for g in replicas]  # spawned after cpu0
            client = replicas[-1].openai()
            once = custom_ids(client, batch) == Counter({f"i{i}": 1 for i in range(args.lines)})
            prompts = [httpx.get(f"{upstream}/_calls/m{i}").json()["prompts"] for i in range(MEMBERS)]
            ran = [lines_run(g) for g in replicas]
            refits = sorted((int(v), int(stored), float(s), r) for r, log in enumerate(logs)
                            for v, stored, s in REFIT.findall(log.read_text()))
        finally:
            for gw in replicas:
                stop(gw.proc)
            for proc in reversed(started):
                stop(proc)
    gaps = [b[1] - a[1] for a, b in zip(refits, refits[1:])]
    lags = versions.lags()
    print(f"\n{args.replicas} replicas, {args.lines:,} lines, {os.cpu_count()} cores (unpinned); load average before "
          f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, after " + " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    counts = batch.request_counts
    print(f"batch {batch.status} in {elapsed:.0f} s: {args.lines / elapsed:,.0f} lines/s; completed {counts.completed:,}, "
          f"failed {counts.failed:,}; every line exactly once in the output: {once}; prompts per member "
          f"{min(prompts):,}-{max(prompts):,}; lines run per replica {[int(x) for x in ran]} (sum {int(sum(ran)):,})")
    print(f"refits: {len(refits)} (versions {refits[0][0]}-{refits[-1][0]}, by replica "
          f"{dict(Counter(r for *_, r in refits))}); stored items between consecutive refits: min "
          f"{min(gaps, default=0):,}, median {statistics.median(gaps) if gaps else 0:,.0f}; seconds per refit: median "
          f"{statistics.median(s for _, _, s, _ in refits):.2f}, max {max(s for _, _, s, _ in refits):.2f}"
          if refits else "refits: none")
    print(f"versions served by every replica: {len(lags)} of {len(versions.first)}; seconds from first served to served "
          f"everywhere: median {statistics.median(lags):.2f}, max {max(lags):.2f} (poll_s {poll_s}, read every "
          f"{args.sample_s} s)" if lags else "versions: none seen")
    gateway_cpu = [cpu[g.proc.pid] for g in replicas]
    print(f"CPU seconds: replicas {[round(c, 1) for c in gateway_cpu]}, their refit workers "
          f"{[round(c, 1) for c in workers]}, fake upstream {cpu[started[0].pid]:.1f}, redis {cpu[started[1].pid]:.1f}")


if __name__ == "__main__":
    main()
