"""The refit at scale (issue 20): what one refit costs as a job grows to a million items, and what reading a
bounded sample (gateway/store/sampling.py, `refit.max_items`) instead of every vote costs in accuracy (prints
figures; not a test).

A simulated job: the six members of ensembles/simulation.py's standard pool (one good, two fair, one biased, an
adversary, a lazy one) vote soft on 3 labels (more sure when right), 50 gold items among the first 10,000. The
job grows in the memory store and in Redis (a redis-server of its own) to each size of `--sizes`; at each, the
gateway's own background refit (gateway/reliability.py: the store's sample, the spawned worker process, the
publish) runs `--refits` times back to back, `--poll-s` apart, as it does while a job outruns it. Reported per
store, aggregator and size: seconds per refit; CPU seconds per refit of the gateway process (reading the sample,
sending it to the worker), of the refit worker and of redis-server; their share of one core over the run. `full`
rows read every stored vote, as the refit did before the bound (`refit.max_items` above the item count; in Redis
up to `--redis-full-up-to`). Accuracy:
the request-path posterior under the bounded fit's and under the full fit's parameters, on the same votes (every
item up to 100,000, a seeded 100,000 beyond), against the truth. Redis: used_memory per stored vote (the item
records and indexes included).

In the memory store the votes of one member share a few dozen dict objects (so a million items fit in this
machine's memory; pickling them to the worker is then cheaper than for real votes); Redis keeps each vote apart.

Run: flock /tmp/crowd-heavy.lock .venv/bin/python bench/scale.py [--sizes 10000,100000,1000000]
     [--stores memory,redis] [--aggregators auto,dawid_skene] [--full-up-to 1000000] [--refits 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.batch import cpu_seconds  # noqa: E402
from ensembles.aggregators import get_aggregator, pick  # noqa: E402
from ensembles.simulation import standard_pool  # noqa: E402
from ensembles.votes import Vote  # noqa: E402
from gateway.config import parse_config  # noqa: E402
from gateway.reliability import Reliability  # noqa: E402
from gateway.store.health import StoreHealth  # noqa: E402
from gateway.store.votes import ItemRecord, MemoryVoteStore, VoteStore  # noqa: E402
from gateway.store.votes_redis import RedisVoteStore  # noqa: E402
from tests.harness import free_port, redis_argv, stop, wait_redis  # noqa: E402

LABELS = ("positive", "negative", "neutral")
MIX = (0.5, 0.3, 0.2)
SCHEMA = "bench"
GOLD_EVERY, GOLD = 200, 50
"""Items 0, 200, ..., 9,800 are gold: 50 gold items, all there from 10,000 items on."""
EVAL_ITEMS = 100_000
FULL = 10**12
"""`refit.max_items` that reads every stored vote."""


class Job:
    """The simulated job: item i's truth and votes, the same whenever asked (seeded by i)."""

    def __init__(self) -> None:
        self.pool = standard_pool()
        self.texts = [json.loads(line)["text"] for line in (ROOT / "gateway/data/sentiment_sample.jsonl").open()]
        self.protos = {(w.name, label): [self._vote(w.name, label, j) for j in range(16)]
                       for w in self.pool for label in LABELS}
        self.parsed = {id(v): Vote.from_wire(v, len(LABELS)) for vs in self.protos.values() for v in vs}

    @staticmethod
    def _vote(member: str, label: str, j: int) -> dict[str, Any]:
        """A soft vote for `label` of confidence rank j (0-15); the biased member leans the rest to negative."""
        p = 0.5 + 0.028 * j
        rest = [x for x in LABELS if x != label]
        lean = 0.75 if member == "biased" and "negative" in rest else 0.5
        other = {rest[0]: (1 - p) * (lean if rest[0] == "negative" else 1 - lean), rest[1]: 0.0}
        other[rest[1]] = 1 - p - other[rest[0]]
        probs = tuple(p if x == label else other[x] for x in LABELS)
        return Vote(member, label, raw=" " + label, probs=probs, latency_ms=41.5 + j, prompt_tokens=183,
                    completion_tokens=1, cost_usd=1.9e-05).wire()

    def item(self, i: int) -> tuple[str, list[dict[str, Any]]]:
        rng = random.Random(i)
        truth = rng.choices(LABELS, weights=MIX)[0]
        votes = []
        for w in self.pool:
            label = w.answer(truth, LABELS, rng)
            votes.append(self.protos[(w.name, label)][rng.randrange(8) + (8 if label == truth else 0)])
        return truth, votes

    def record(self, i: int) -> ItemRecord:
        return ItemRecord(f"job-{i}", SCHEMA, list(LABELS), f"{self.texts[i % len(self.texts)]} (#{i})", "crowd")


async def grow(store: VoteStore, job: Job, start: int, end: int, concurrency: int) -> None:
    """Items start..end-1 and their votes into the store, gold labels as they come."""
    async def one(i: int) -> None:
        truth, votes = job.item(i)
        await store.record(job.record(i), votes)
        if i % GOLD_EVERY == 0 and i < GOLD * GOLD_EVERY:
            await store.add_label(job.record(i), truth, "gold", "bench")

    for first in range(start, end, concurrency):
        await asyncio.gather(*(one(i) for i in range(first, min(first + concurrency, end))))


def children(pid: int) -> set[int]:
    """The child processes of `pid` (a gateway's refit worker, multiprocessing's helpers; here redis-server too)."""
    pids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids.update(int(p) for p in (task / "children").read_text().split())
    return pids


@dataclass
class Row:
    store: str
    aggregator: str
    mode: str
    items: int
    read: int
    wall: float
    gateway: float
    worker: float
    redis: float
    share: float


async def measure(rel: Reliability, store_name: str, mode: str, items: int, refits: int, poll_s: float,
                  redis_pid: int | None) -> Row:
    """`refits` refits back to back, `poll_s` apart, as the refit loop runs them while a job outruns it."""
    workers = children(os.getpid()) - {redis_pid}
    started, gateway0 = time.perf_counter(), time.process_time()
    worker0 = sum(cpu_seconds(p) for p in workers)
    redis0 = cpu_seconds(redis_pid) if redis_pid else 0.0
    walls = []
    for _ in range(refits):
        t0 = time.perf_counter()
        assert await rel.refit_due(force=True) == [SCHEMA]
        walls.append(time.perf_counter() - t0)
        await asyncio.sleep(poll_s)
    elapsed = time.perf_counter() - started
    gateway = time.process_time() - gateway0
    worker = sum(cpu_seconds(p) for p in workers) - worker0
    red = (cpu_seconds(redis_pid) - redis0) if redis_pid else 0.0
    name = rel.aggregators[0]
    read = rel.params[(SCHEMA, name)].params["fitted_on"]["items"]
    return Row(store_name, name, mode, items, read, sum(walls) / refits, gateway / refits, worker / refits,
               red / refits, (gateway + worker + red) / elapsed)


def reliability(store: VoteStore, job: Job, aggregator: str, max_items: int, poll_s: float) -> Reliability:
    names = [w.name for w in job.pool]
    config = parse_config({"refit": {"max_items": max_items, "poll_s": poll_s},
                           "members": [{"name": n, "base_url": "http://127.0.0.1:9/v1", "model": n} for n in names],
                           "ensembles": [{"name": "crowd", "members": names, "aggregator": aggregator}]})
    return Reliability(store, config, StoreHealth(store.ping))


def accuracy(job: Job, aggregator: str, params: Any, items: int) -> tuple[float, list[str]]:
    """The request-path posterior's accuracy on the job's items (a seeded EVAL_ITEMS of them beyond), and its labels."""
    agg = get_aggregator(aggregator)
    ids = range(items) if items <= EVAL_ITEMS else sorted(random.Random(items).sample(range(items), EVAL_ITEMS))
    right, labels = 0, []
    for i in ids:
        truth, votes = job.item(i)
        label = LABELS[pick(agg.posterior([job.parsed[id(v)] for v in votes], LABELS, params))]
        right += label == truth
        labels.append(label)
    return right / len(ids), labels


async def run_store(name: str, job: Job, args: argparse.Namespace, workdir: Path) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []
    redis_proc = None
    if name == "redis":
        port = free_port()
        redis_proc = subprocess.Popen(redis_argv(port, workdir), stdout=subprocess.DEVNULL)
        wait_redis(port, redis_proc)
        client = aioredis.from_url(f"redis://127.0.0.1:{port}/0")
        store: VoteStore = RedisVoteStore(client)
        empty = int((await client.info("memory"))["used_memory"])
    else:
        store = MemoryVoteStore()
    try:
        rels: dict[tuple[str, str], Reliability] = {}
        have = 0
        for size in args.sizes:
            t0 = time.perf_counter()
            await grow(store, job, have, size, 64 if redis_proc else 1)
            have = size
            print(f"{name}: {size:,} items stored in {time.perf_counter() - t0:.0f} s", flush=True)
            if redis_proc:
                used = int((await client.info("memory"))["used_memory"]) - empty
                notes.append(f"Redis at {size:,} items: {used / 2**20:,.0f} MiB used, {used / (size * 6):,.0f} "
                             f"bytes per stored vote ({used / size:,.0f} per item of 6 votes and its record)")
                print(notes[-1], flush=True)
            for aggregator in args.aggregators:
                fits = {}
                for mode, max_items in (("bounded", args.max_items), ("full", FULL)):
                    if mode == "full" and size > (args.redis_full_up_to if redis_proc else args.full_up_to):
                        continue
                    rel = rels.get((aggregator, mode))
                    if rel is None:  # its first refit spawns and warms up the worker process: not counted
                        rel = rels[(aggregator, mode)] = reliability(store, job, aggregator, max_items, args.poll_s)
                        await rel.refit_due(force=True)
                    row = await measure(rel, name, mode, size, 1 if mode == "full" else args.refits, args.poll_s,
                                        redis_proc.pid if redis_proc else None)
                    rows.append(row)
                    fits[mode] = rel.params[(SCHEMA, aggregator)].params
                    print(f"  {aggregator} {mode}: {row.wall:.2f} s per refit, read {row.read:,} items, CPU s per "
                          f"refit gateway {row.gateway:.2f} worker {row.worker:.2f} redis {row.redis:.2f}, "
                          f"share {row.share:.2f}", flush=True)
                if len(fits) == 2 and name == args.stores[0]:
                    bounded, labels_b = accuracy(job, aggregator, fits["bounded"], size)
                    full, labels_f = accuracy(job, aggregator, fits["full"], size)
                    differ = sum(a != b for a, b in zip(labels_b, labels_f)) / len(labels_b)
                    notes.append(f"| {aggregator} | {size:,} | {min(size, EVAL_ITEMS):,} | {full:.4f} | "
                                 f"{bounded:.4f} | {100 * (bounded - full):+.2f} | {100 * differ:.2f}% |")
                    print(notes[-1], flush=True)
        for rel in rels.values():
            await rel.stop()
    finally:
        await store.close()
        if redis_proc:
            stop(redis_proc)
    return rows, notes


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--stores", default="memory,redis")
    parser.add_argument("--aggregators", default="auto,dawid_skene")
    parser.add_argument("--full-up-to", type=int, default=1_000_000, help="largest size also fitted on every vote")
    parser.add_argument("--redis-full-up-to", type=int, default=100_000,
                        help="the same in Redis (a full read of a million items holds every vote in the gateway)")
    parser.add_argument("--max-items", type=int, default=10_000, help="refit.max_items of the bounded refit")
    parser.add_argument("--refits", type=int, default=3, help="bounded refits measured per size")
    parser.add_argument("--poll-s", type=float, default=1.0, help="refit.poll_s: the pause between refits")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.stores = args.stores.split(",")
    args.aggregators = args.aggregators.split(",")
    job, load = Job(), os.getloadavg()
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="crowd-bench-scale-") as workdir:
        for name in args.stores:
            found, said = await run_store(name, job, args, Path(workdir))
            rows += found
            notes += said
            gc.collect()
    print(f"\n{os.cpu_count()} cores; load average before {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, after "
          + " / ".join(f"{x:.2f}" for x in os.getloadavg()) + f"; refit.max_items {args.max_items:,}, "
          f"poll_s {args.poll_s}, {args.refits} bounded refits per size (1 full)")
    print("| store | aggregator | read | items stored | items the fit read | s per refit | gateway CPU s | worker CPU s "
          "| redis CPU s | share of one core |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.store} | {r.aggregator} | {r.mode} | {r.items:,} | {r.read:,} | {r.wall:.2f} | {r.gateway:.2f} | "
              f"{r.worker:.2f} | {r.redis:.2f} | {r.share:.2f} |")
    print("\n| aggregator | items stored | items scored | full fit accuracy | bounded fit accuracy | points | labels "
          "that differ |\n|---|---|---|---|---|---|---|")
    print("\n".join(n for n in notes if n.startswith("|")))
    print("\n" + "\n".join(n for n in notes if not n.startswith("|")))


if __name__ == "__main__":
    asyncio.run(main())
