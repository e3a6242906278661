"""Annotation jobs at scale: N items through the Batch API and through `crowd-gateway annotate`, with and
without grouping the members' calls (prints figures; not a test).

For each ensemble size and grouping setting, a real `crowd-gateway serve` process in front of the fast
test upstream (the harness's, tests/harness/, answering as vLLM does, list prompts included): the members are
vLLM-dialect workers voting in one forward pass on a completion-style task, as the local pool does. Upload
N JSONL requests with the official client, create a batch, poll until it completes; then the same N rows
as a CSV through the CLI (which sends `service_tier: "flex"`). `--grouping 1,32` compares
`batches.grouping.max_prompts` 1 (one call per item and member) with 32. The gateway is pinned to CPU 0,
the fake upstream, redis and the clients to CPU 1 (on a machine with two cores or more). Reported: items
per second, the gateway's CPU per item and per item and member (user+system from /proc), member calls
per item and member, and the CLI's own CPU per item.

With `--config FILE --ensemble NAME` the gateway runs that config instead (e.g. the real local pool), no
fake upstream is started and the lines name the config's `--task`.

Run: .venv/bin/python bench/batch.py [--items 10000] [--members 5] [--grouping 1,32] [--store memory,redis]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from openai import OpenAI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.harness import BIN, Upstream, start_gateway, start_redis, start_upstream, stop  # noqa: E402

LABELS = ["positive", "negative"]
TASK = {"name": "sentiment", "labels": LABELS, "prompt_style": "completion",
        "instructions": "Label the sentiment of each review as {labels}.",
        "examples": [{"text": "This place was such a nice surprise!", "label": "positive"},
                     {"text": "Worst food/service I've had in a while.", "label": "negative"}]}
TICK = os.sysconf("SC_CLK_TCK")
PINNED = (os.cpu_count() or 1) >= 2
"""Gateway on CPU 0, everything else on CPU 1: the gateway's figures are then those of one core."""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def texts(n: int) -> list[str]:
    sample = [json.loads(line)["text"] for line in (ROOT / "gateway/data/sentiment_sample.jsonl").open()]
    return [f"{sample[i % len(sample)]} (#{i})" for i in range(n)]


def fake_config(upstream_port: int, members: int, concurrency: int, store: str, group: int,
                cache: bool = False) -> dict[str, Any]:
    names = [f"m{i}" for i in range(members)]
    return {"store": {"backend": store}, "cache": {"enabled": cache},  # off: each run asks its members
            "batches": {"concurrency": concurrency, "poll_s": 0.1, "grouping": {"max_prompts": group}},
            "gateway": {"max_items_in_flight": max(512, 2 * concurrency)},
            "members": [{"name": n, "base_url": f"http://127.0.0.1:{upstream_port}/m/{n}/v1", "model": n,
                         "dialect": "vllm", "retries": 0,
                         "price": {"input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.2}} for n in names],
            "ensembles": [{"name": "crowd", "members": names, "quorum": members}],
            "tasks": [TASK]}


def script_members(upstream: str, members: int) -> None:
    """Each member votes in one pass; three say positive, the others negative, so the votes disagree."""
    for i in range(members):
        httpx.post(f"{upstream}/_script/m{i}", json={"answer": " positive" if i < 3 else " negative",
                                                     "logprobs": "answer", "usage": [60, 1]}).raise_for_status()


def upstream_calls(upstream: str | None, members: int) -> int:
    return sum(httpx.get(f"{upstream}/_calls/m{i}").json()["calls"] for i in range(members)) if upstream else 0


def upload_lines(client: OpenAI, ensemble: str, task: str, items: list[str]) -> str:
    """A batch input file of one line per item (custom and item id `i<n>`); returns its file id."""
    lines = [json.dumps({"custom_id": f"i{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": ensemble, "task": task, "item_id": f"i{i}",
                                  "messages": [{"role": "user", "content": text}]}}) for i, text in enumerate(items)]
    return client.files.create(file=("bench.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch").id


def finish_batch(client: OpenAI, file_id: str, timeout: float) -> tuple[Any, float]:
    """(the finished batch, seconds from its creation until it finished)."""
    t0 = time.perf_counter()
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    while batch.status not in ("completed", "failed", "cancelled"):
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"batch still {batch.status} after {timeout}s: {batch.request_counts}")
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    return batch, time.perf_counter() - t0


def run_batch(url: str, pid: int, ensemble: str, task: str, items: list[str], timeout: float) -> tuple[float, float]:
    """(items/s, gateway CPU ms per item) of one batch, timed from creation to `completed`."""
    client = OpenAI(base_url=f"{url}/v1", api_key=os.environ.get("CROWD_GATEWAY_API_KEY", "unused"))
    file_id = upload_lines(client, ensemble, task, items)
    cpu0 = cpu_seconds(pid)
    batch, elapsed = finish_batch(client, file_id, timeout)
    cpu = cpu_seconds(pid) - cpu0
    counts = batch.request_counts
    if counts is not None and counts.failed:
        print(f"  warning: {counts.failed} of {counts.total} lines failed", file=sys.stderr)
    return len(items) / elapsed, cpu / len(items) * 1000


def run_cli(url: str, pid: int, ensemble: str, task: str, items: list[str], concurrency: int, workdir: Path,
            timeout: float) -> tuple[float, float, float]:
    """(items/s, gateway CPU ms per item, CLI CPU ms per item) of `crowd-gateway annotate`."""
    source, out = workdir / "items.csv", workdir / f"out-{time.monotonic_ns()}.csv"
    with source.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        writer.writerows((f"i{i}", text) for i, text in enumerate(items))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    subprocess.run([str(BIN / "crowd-gateway"), "annotate", str(source), "--task", task,
                    "--ensemble", ensemble, "--out", str(out), "--gateway", url, "--concurrency", str(concurrency)],
                   check=True, timeout=timeout, stderr=subprocess.DEVNULL)
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cli_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return len(items) / elapsed, cpu / len(items) * 1000, cli_cpu / len(items) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--members", default="5", help="ensemble sizes to run against the fake upstream")
    parser.add_argument("--grouping", default="1,32", help="batches.grouping.max_prompts values to compare")
    parser.add_argument("--store", default="memory", help="store backends to run: memory, redis or both")
    parser.add_argument("--concurrency", type=int, default=128, help="batch lines / CLI rows in flight")
    parser.add_argument("--config", help="a gateway config to run instead of the fake upstream (e.g. the pool)")
    parser.add_argument("--ensemble", default="crowd", help="ensemble to ask (with --config)")
    parser.add_argument("--task", default="sentiment", help="task the lines name (with --config)")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--cache", action="store_true", help="the response cache on (every item is new: its lookups "
                                                             "miss and its votes are kept)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per run")
    args = parser.parse_args()

    items = texts(args.items)
    workdir = Path(tempfile.mkdtemp(prefix="crowd-bench-batch-"))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    if PINNED:
        os.sched_setaffinity(0, {1})  # this process, the fake upstream, redis and the CLI: CPU 1
    started: list[subprocess.Popen[bytes]] = []
    rows = []
    load = os.getloadavg()
    fake: Upstream | None = None
    try:
        upstream = None
        if not args.config:
            fake = start_upstream()
            upstream, upstream_port = fake.url, fake.port
        for store in args.store.split(","):
            run_env = dict(env)
            if store == "redis":
                redis, run_env["CROWD_GATEWAY_REDIS_URL"] = start_redis(workdir)
                started.append(redis)
            sizes = [0] if args.config else [int(m) for m in args.members.split(",")]
            groupings = [0] if args.config else [int(g) for g in args.grouping.split(",")]
            for members in sizes:
                for group in groupings:
                    path = Path(args.config) if args.config else workdir / f"config-{store}-{members}-{group}.yaml"
                    if upstream:
                        path.write_text(yaml.safe_dump(fake_config(upstream_port, members, args.concurrency, store,
                                                                   group, args.cache)))
                        script_members(upstream, members)
                    gw = start_gateway(path, workdir, run_env, cpu=0 if PINNED else None, timeout=120)
                    gateway, url = gw.proc, gw.url
                    try:
                        label = (f"{store}, {members} members, " + (f"groups of {group}" if group > 1
                                                                    else "one call per vote")
                                 if members else f"{store}, {path.name}:{args.ensemble}")
                        runs = [("batch API", lambda: (*run_batch(url, gateway.pid, args.ensemble, args.task,
                                                                  items, args.timeout), None))]
                        if not args.skip_cli:
                            runs.append(("CLI", lambda: run_cli(url, gateway.pid, args.ensemble, args.task, items,
                                                                args.concurrency, workdir, args.timeout)))
                        for path_name, run in runs:
                            calls0 = upstream_calls(upstream, members)
                            rate, cpu, cli = run()
                            calls = (upstream_calls(upstream, members) - calls0) / len(items) / max(members, 1)
                            rows.append((label, path_name, rate, cpu, cpu / max(members, 1), calls, cli))
                            print(f"{label:42} {path_name:9} {rate:7.0f} items/s  gateway {cpu:5.2f} ms CPU/item"
                                  f"  {calls:5.3f} calls/item/member"
                                  + (f"  CLI {cli:5.2f} ms CPU/item" if cli is not None else ""), flush=True)
                    finally:
                        gw.close()
    finally:
        for proc in reversed(started):
            stop(proc)
        if fake is not None:
            fake.close()
    print(f"\n{args.items} items, {args.concurrency} in flight, {os.cpu_count()} cores, "
          + ("gateway pinned to CPU 0, upstream and clients to CPU 1" if PINNED else "unpinned")
          + f"; load average before {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, after "
          + " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    print("| setup | path | items/s | gateway CPU ms/item | gateway CPU us per item and member | items per gateway "
          "CPU-second | member calls per item and member | CLI CPU ms/item |")
    print("|---|---|---|---|---|---|---|---|")
    for label, path_name, rate, cpu, per_member, calls, cli in rows:
        print(f"| {label} | {path_name} | {rate:,.0f} | {cpu:.3f} | {per_member * 1000:.0f} | {1000 / cpu:,.0f} | "
              f"{calls:.3f} | {'-' if cli is None else f'{cli:.2f}'} |")


if __name__ == "__main__":
    main()
