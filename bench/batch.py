"""Annotation jobs at scale: N items through the Batch API and through `crowd-gateway annotate`
(prints figures; not a test).

For each ensemble size, a real `crowd-gateway serve` process in front of the fast test upstream
(tests/fake_upstream.py): upload N JSONL requests with the official client, create a batch, poll
until it completes; then the same N rows as a CSV through the CLI. Reported: items per second,
the gateway's CPU per item (user+system from /proc), and the CLI's own CPU per item.

With `--config FILE --ensemble NAME` the gateway runs that config instead (e.g. the real local
pool) and no fake upstream is started.

Run: .venv/bin/python bench/batch.py [--items 10000] [--members 3,5] [--store memory,redis]
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

import yaml
from openai import OpenAI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.conftest import BIN, free_port, stop, wait_http  # noqa: E402

LABELS = ["positive", "negative"]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def texts(n: int) -> list[str]:
    sample = [json.loads(line)["text"] for line in (ROOT / "gateway/data/sentiment_sample.jsonl").open()]
    return [f"{sample[i % len(sample)]} (#{i})" for i in range(n)]


def fake_config(upstream_port: int, members: int, concurrency: int, store: str) -> dict[str, Any]:
    names = [f"m{i}" for i in range(members)]
    return {"store": {"backend": store}, "batches": {"concurrency": concurrency, "poll_s": 0.1},
            "members": [{"name": n, "base_url": f"http://127.0.0.1:{upstream_port}/m/{n}/v1", "model": n,
                         "retries": 0, "price": {"input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.2}}
                        for n in names],
            "ensembles": [{"name": "crowd", "members": names, "quorum": members}]}


def start_gateway(config_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([str(BIN / "crowd-gateway"), "serve", "--config", str(config_path), "--port", str(port)],
                            env=env)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=120)
    return proc, f"http://127.0.0.1:{port}"


def run_batch(url: str, pid: int, ensemble: str, items: list[str], timeout: float) -> tuple[float, float]:
    """(items/s, gateway CPU ms per item) of one batch, timed from creation to `completed`."""
    client = OpenAI(base_url=f"{url}/v1", api_key=os.environ.get("CROWD_GATEWAY_API_KEY", "unused"))
    lines = [json.dumps({"custom_id": f"i{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": ensemble, "labels": LABELS, "item_id": f"i{i}",
                                  "messages": [{"role": "user", "content": text}]}}) for i, text in enumerate(items)]
    file = client.files.create(file=("bench.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch")
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    while batch.status not in ("completed", "failed", "cancelled"):
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"batch still {batch.status} after {timeout}s: {batch.request_counts}")
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    counts = batch.request_counts
    if counts.failed:
        print(f"  warning: {counts.failed} of {counts.total} lines failed", file=sys.stderr)
    return len(items) / elapsed, cpu / len(items) * 1000


def run_cli(url: str, pid: int, ensemble: str, items: list[str], concurrency: int, workdir: Path,
            timeout: float) -> tuple[float, float, float]:
    """(items/s, gateway CPU ms per item, CLI CPU ms per item) of `crowd-gateway annotate`."""
    source, out = workdir / "items.csv", workdir / f"out-{time.monotonic_ns()}.csv"
    with source.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        writer.writerows((f"i{i}", text) for i, text in enumerate(items))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    subprocess.run([str(BIN / "crowd-gateway"), "annotate", str(source), "--labels", ",".join(LABELS),
                    "--ensemble", ensemble, "--out", str(out), "--gateway", url, "--concurrency", str(concurrency)],
                   check=True, timeout=timeout, stderr=subprocess.DEVNULL)
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cli_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return len(items) / elapsed, cpu / len(items) * 1000, cli_cpu / len(items) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--members", default="3,5", help="ensemble sizes to run against the fake upstream")
    parser.add_argument("--store", default="memory", help="store backends to run: memory, redis or both")
    parser.add_argument("--concurrency", type=int, default=64, help="batch lines / CLI rows in flight")
    parser.add_argument("--config", help="a gateway config to run instead of the fake upstream (e.g. the pool)")
    parser.add_argument("--ensemble", default="crowd", help="ensemble to ask (with --config)")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per run")
    args = parser.parse_args()

    items = texts(args.items)
    workdir = Path(tempfile.mkdtemp(prefix="crowd-bench-batch-"))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    started: list[subprocess.Popen[bytes]] = []
    rows = []
    try:
        upstream_port = 0
        if not args.config:
            upstream_port = free_port()
            started.append(subprocess.Popen([sys.executable, str(ROOT / "tests/fake_upstream.py"), "--port",
                                             str(upstream_port)]))
            wait_http(f"http://127.0.0.1:{upstream_port}/m/x/health", started[-1])
        for store in args.store.split(","):
            run_env = dict(env)
            if store == "redis":
                redis_port = free_port()
                started.append(subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "",
                                                 "--appendonly", "no", "--dir", str(workdir)],
                                                stdout=subprocess.DEVNULL))
                time.sleep(0.3)
                run_env["CROWD_GATEWAY_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            sizes = [0] if args.config else [int(m) for m in args.members.split(",")]
            for members in sizes:
                path = Path(args.config) if args.config else workdir / f"config-{store}-{members}.yaml"
                if not args.config:
                    path.write_text(yaml.safe_dump(fake_config(upstream_port, members, args.concurrency, store)))
                gateway, url = start_gateway(path, run_env)
                try:
                    label = f"{store}, {members} members" if members else f"{store}, {path.name}:{args.ensemble}"
                    rate, cpu = run_batch(url, gateway.pid, args.ensemble, items, args.timeout)
                    rows.append((label, "batch API", rate, cpu, None))
                    print(f"{label:24} batch API  {rate:8.0f} items/s  gateway {cpu:6.2f} ms CPU/item", flush=True)
                    if not args.skip_cli:
                        rate, cpu, cli = run_cli(url, gateway.pid, args.ensemble, items, args.concurrency, workdir,
                                                 args.timeout)
                        rows.append((label, "CLI", rate, cpu, cli))
                        print(f"{label:24} CLI        {rate:8.0f} items/s  gateway {cpu:6.2f} ms CPU/item  "
                              f"CLI {cli:6.2f} ms CPU/item", flush=True)
                finally:
                    stop(gateway)
    finally:
        for proc in reversed(started):
            stop(proc)
    print(f"\n{args.items} items, {args.concurrency} in flight, {os.cpu_count()} cores (gateway, upstream and "
          f"client share them)")
    print(f"{'setup':26} {'path':10} {'items/s':>8} {'gw ms CPU/item':>15} {'CLI ms CPU/item':>16}")
    for label, path_name, rate, cpu, cli in rows:
        print(f"{label:26} {path_name:10} {rate:8.0f} {cpu:15.2f} {'-' if cli is None else f'{cli:.2f}':>16}")


if __name__ == "__main__":
    main()
