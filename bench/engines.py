"""What one vote costs on the real local engines (prints figures; not a test).

For each worker of deploy/local-pool.yaml, on the bundled sentiment sample: items per second, engine
CPU-seconds per item (user + system time of the vLLM server's process tree, read from /proc) and
accuracy, for constrained decoding (vLLM's structured_outputs.choice, the whole label decoded) against
one forward pass (max_tokens 1, the first token's top-20 log-probabilities), with vLLM's prefix cache
on (32-token blocks, as the pool runs) and off, with the share of prompt tokens the prefix cache served
(vLLM's `vllm:prefix_cache_hits_total` over `vllm:prefix_cache_queries_total` during the run). Every call goes through the gateway (one ensemble per
worker, so the gateway shapes the prompt exactly as in production), `--concurrency` items in flight.

Run: .venv/bin/python bench/engines.py [--items 100] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.config import parse_config
from gateway.tools.datasets import load_dataset
from gateway.tools.embedded import embedded_gateway
from gateway.tools.evaluate import annotate_items
from gateway.tools.pool import running_pool
from gateway.tools.pool_status import prefix_cache as read_prefix_cache

ROOT = Path(__file__).resolve().parent.parent
POOL = ROOT / "deploy" / "local-pool.yaml"
SAMPLE = ROOT / "gateway" / "data" / "sentiment_sample.jsonl"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(port: int) -> float:
    """User + system CPU time of the server listening on `port` and all its descendants."""
    root = next(int(p) for p in os.listdir("/proc") if p.isdigit() and _listens(int(p), port))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            todo += [int(c) for t in os.listdir(f"/proc/{pid}/task")
                     for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
        except FileNotFoundError:
            continue
    return total


def _listens(pid: int, port: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, PermissionError):
        return False
    return b"vllm.entrypoints.openai.api_server" in b" ".join(cmdline) and str(port).encode() in cmdline


def config_for(raw: dict[str, Any], decoding: str, prefix_cache: bool) -> dict[str, Any]:
    """The pool config with every member's decoding set, one ensemble per member, the prefix cache on or off."""
    out = yaml.safe_load(yaml.safe_dump(raw))
    for server in out["pool"]["servers"]:
        server["args"] = [*server.get("args", []), *([] if prefix_cache else ["--no-enable-prefix-caching"])]
    for member in out["members"]:
        member["decoding"] = decoding
    out["cache"] = {"enabled": False}  # every setting's members answer, none from the response cache
    out["ensembles"] = [{"name": f"only-{m['name']}", "members": [m["name"]], "quorum": 1, "deadline_s": 600}
                        for m in out["members"]]
    return out


def port_of(member: dict[str, Any]) -> int:
    return int(httpx.URL(member["base_url"]).port or 80)


def measure(raw: dict[str, Any], prefix_cache: bool, rows: list[dict[str, Any]], concurrency: int) -> list[tuple]:
    results = []
    configs = {d: config_for(raw, d, prefix_cache) for d in ("constrained", "one_pass")}
    with tempfile.TemporaryDirectory() as tmp, running_pool(parse_config(configs["one_pass"])):
        for decoding, cfg in configs.items():
            path = Path(tmp) / f"{decoding}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            with embedded_gateway(str(path)) as url:
                for member in cfg["members"]:
                    name, port = member["name"], port_of(member)
                    asyncio.run(annotate_items(url, "bench", f"only-{name}", rows[:8], [], concurrency, desc="warm-up",
                                               task="sentiment"))
                    cache = read_prefix_cache(port)
                    cpu, started = cpu_seconds(port), time.perf_counter()
                    records = asyncio.run(annotate_items(url, "bench", f"only-{name}", rows, [], concurrency,
                                                         desc=f"{name} {decoding}", task="sentiment"))
                    wall, cpu = time.perf_counter() - started, cpu_seconds(port) - cpu
                    after = read_prefix_cache(port)
                    hits = after.since(cache).hit_rate if after and cache else None
                    right = sum(bool(r["annotation"]) and r["annotation"]["label"] == r["gold"] for r in records)
                    results.append((name, decoding, prefix_cache, len(rows) / wall, cpu / len(rows),
                                    right / len(rows), hits))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100, help="sentences per worker and mode (default: 100)")
    parser.add_argument("--concurrency", type=int, default=8, help="items in flight (default: 8)")
    args = parser.parse_args()
    raw = yaml.safe_load(POOL.read_text())
    rows = load_dataset(SAMPLE, limit=args.items)
    results = measure(raw, True, rows, args.concurrency) + measure(raw, False, rows, args.concurrency)
    print(f"\n{len(rows)} sentences per worker and mode, {args.concurrency} in flight, each engine pinned to one core\n")
    print("| worker | decoding | prefix cache | items/s | engine CPU-s per item | accuracy | prefix cache hit rate |")
    print("|---|---|---|---|---|---|---|")
    for name, decoding, cache, rate, cpu, acc, hits in sorted(results, key=lambda r: (r[0], not r[2], r[1])):
        print(f"| {name} | {decoding.replace('_', '-')} | {'on' if cache else 'off'} | {rate:.2f} | {cpu:.3f} | "
              f"{acc:.3f} | {'-' if hits is None else f'{hits:.0%}'} |")
    base = {(r[0]): r[3] for r in results if r[1] == "constrained" and not r[2]}
    best = {(r[0]): r[3] for r in results if r[1] == "one_pass" and r[2]}
    print("\none pass + prefix cache against constrained without it: "
          + ", ".join(f"{n} {best[n] / base[n]:.1f}x" for n in sorted(best)))


if __name__ == "__main__":
    main()
