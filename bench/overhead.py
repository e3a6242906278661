"""Gateway overhead, measured side by side in one run (prints figures; not a test).

Targets, all in front of the same fast test upstream (the test harness's fake upstream, tests/harness/):
  direct       the upstream itself
  passthrough  crowd-gateway, `model` = one member
  litellm      LiteLLM's proxy (litellm[proxy], pinned in bench/setup.sh), one worker, no database
  ensemble-5   crowd-gateway fanning each item out to 5 members, majority vote

The gateway and LiteLLM are pinned to CPU 0, the upstream and load generators to CPU 1, so the
figures are "on one core". Latency: an open-loop client at fixed request rates (p50/p99 and the
latency added over direct). Throughput: wrk, closed loop, 64 connections; plus the server's CPU
time per request (/proc), which gives the rate one core could sustain.

Run: .venv/bin/python bench/overhead.py [--seconds 5] [--rates 100,400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.harness import (  # noqa: E402
    Gateway, Upstream, free_port, spawn, start_gateway, start_upstream, stop, wait_http)

MASTER_KEY = "sk-bench"
CHAT = {"messages": [{"role": "user", "content": "The film was a delight from start to finish."}]}


@dataclass
class Target:
    name: str
    url: str
    body: dict
    pid: int
    headers: dict = field(default_factory=dict)
    latency: dict[int, tuple[float, float, float]] = field(default_factory=dict)  # rate -> (p50, p99, achieved)
    max_rps: float = 0.0
    errors: int = 0
    cpu_us: float = 0.0


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a process and its children (uvicorn workers), from /proc."""
    total = 0.0
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def open_loop(target: Target, rate: int, seconds: float) -> tuple[float, float, float]:
    """Send at a fixed rate regardless of answers; return p50 and p99 latency (ms) and the achieved rate."""
    latencies: list[float] = []
    payload = json.dumps(target.body).encode()
    headers = {"Content-Type": "application/json", **target.headers}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one() -> None:
            started = time.perf_counter()
            async with session.post(target.url, data=payload, headers=headers) as resp:
                await resp.read()
                if resp.status == 200:
                    latencies.append((time.perf_counter() - started) * 1000)

        for _ in range(20):  # warm the connection pools
            await one()
        latencies.clear()
        n = int(rate * seconds)
        start = time.perf_counter()
        tasks = []
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.perf_counter() - start
    if len(latencies) < 2:
        return float("nan"), float("nan"), 0.0
    q = statistics.quantiles(latencies, n=100)
    return statistics.median(latencies), q[98], len(latencies) / elapsed


def wrk(target: Target, seconds: float, connections: int) -> tuple[float, int]:
    """Closed-loop maximum rate with wrk on CPU 1; returns (requests/s, non-2xx responses)."""
    lua = Path(tempfile.mkstemp(suffix=".lua")[1])
    headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in target.headers.items())
    lua.write_text(f'wrk.method = "POST"\nwrk.body = [[{json.dumps(target.body)}]]\n'
                   f'wrk.headers["Content-Type"] = "application/json"\n{headers}')
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(lua),
                          target.url], capture_output=True, text=True, check=True).stdout
    lua.unlink()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    errors += sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return rps, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    parser.add_argument("--rates", default="100,400", help="fixed request rates for the latency runs")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]

    litellm_venv = subprocess.run([str(ROOT / "bench" / "setup.sh")], capture_output=True, text=True,
                                  check=True).stdout.strip().splitlines()[-1]
    tmp = Path(tempfile.mkdtemp(prefix="crowd-bench-"))
    procs: list[subprocess.Popen] = []
    upstream: Upstream | None = None
    gateway: Gateway | None = None
    try:
        ll_port = free_port()
        upstream = start_upstream(cpu=1)
        up = upstream.url
        names = [f"m{i}" for i in range(1, 6)]
        for i, name in enumerate(names):
            upstream.script(name, answer="positive" if i < 3 else "negative")
        members = [{"name": n, "base_url": upstream.base_url(n), "model": n, "max_concurrency": 256,
                    "price": {"input_usd_per_mtok": 0.02, "output_usd_per_mtok": 0.05}} for n in ["solo", *names]]
        config = {"gateway": {"api_keys_env": None}, "cache": {"enabled": False}, "members": members,  # one body
                  "ensembles": [{"name": "crowd5", "members": names, "quorum": 3, "deadline_s": 10}]}
        gateway = start_gateway(config, tmp, cpu=0, output=tmp / "gw.log")
        gw_proc, gw_port = gateway.proc, gateway.port
        (tmp / "litellm.yaml").write_text(yaml.safe_dump({"model_list": [{"model_name": "solo", "litellm_params": {
            "model": "openai/solo", "api_base": f"{up}/m/solo/v1", "api_key": "unused"}}]}))
        procs.append(spawn([f"{litellm_venv}/bin/litellm", "--config", str(tmp / "litellm.yaml"), "--port",
                            str(ll_port), "--num_workers", "1"], cpu=0,
                           env={"LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_LOG": "ERROR",
                                "LITELLM_LOCAL_MODEL_COST_MAP": "True", "DISABLE_SCHEMA_UPDATE": "True"},
                           output=tmp / "litellm.log"))
        ll_proc = procs[-1]
        wait_http(f"http://127.0.0.1:{ll_port}/health/liveliness", ll_proc, timeout=180)

        targets = [
            Target("direct", f"{up}/m/solo/v1/chat/completions", {"model": "solo", **CHAT}, upstream.proc.pid),
            Target("passthrough", f"http://127.0.0.1:{gw_port}/v1/chat/completions", {"model": "solo", **CHAT},
                   gw_proc.pid),
            Target("litellm", f"http://127.0.0.1:{ll_port}/v1/chat/completions", {"model": "solo", **CHAT},
                   ll_proc.pid, headers={"Authorization": f"Bearer {MASTER_KEY}"}),
            Target("ensemble-5", f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                   {"model": "crowd5", "labels": ["positive", "negative"], **CHAT}, gw_proc.pid),
        ]
        for target in targets:
            print(f"measuring {target.name} ...", file=sys.stderr)
            for rate in rates:
                target.latency[rate] = asyncio.run(open_loop(target, rate, args.seconds))
            cpu0 = cpu_seconds(target.pid)
            target.max_rps, target.errors = wrk(target, args.seconds, args.connections)
            served = target.max_rps * args.seconds
            target.cpu_us = (cpu_seconds(target.pid) - cpu0) / served * 1e6 if served else float("nan")
        report(targets, rates, args)
    finally:
        for proc in reversed(procs):
            stop(proc)
        for started in (gateway, upstream):
            if started is not None:
                started.close()


def report(targets: list[Target], rates: list[int], args: argparse.Namespace) -> None:
    by = {t.name: t for t in targets}
    direct, litellm = by["direct"], by["litellm"]
    print(f"\nOverhead benchmark: {args.seconds:g} s per run, wrk -c{args.connections}; servers on CPU 0, "
          f"upstream and load on CPU 1\n")
    head = "".join(f"| p50 / p99 ms @{r}/s | added p50 ms @{r}/s " for r in rates)
    print(f"| target {head}| max req/s (wrk) | errors | server CPU us/req | 1-core req/s from CPU |")
    print("|---" * (1 + 2 * len(rates) + 4) + "|")
    for t in targets:
        cells = ""
        for r in rates:
            p50, p99, achieved = t.latency[r]
            sat = "" if achieved >= 0.95 * r else f" (got {achieved:.0f}/s)"
            cells += f"| {p50:.2f} / {p99:.2f}{sat} | {p50 - direct.latency[r][0]:+.2f} "
        print(f"| {t.name} {cells}| {t.max_rps:,.0f} | {t.errors} | {t.cpu_us:,.0f} | {1e6 / t.cpu_us:,.0f} |")
    gw = by["passthrough"]
    print("\nRatios against LiteLLM's proxy (same upstream, same core):")
    for r in rates:
        added_gw = gw.latency[r][0] - direct.latency[r][0]
        added_ll = litellm.latency[r][0] - direct.latency[r][0]
        print(f"  added p50 latency @{r}/s: crowd-gateway {added_gw:.3f} ms, LiteLLM {added_ll:.3f} ms "
              f"({added_ll / added_gw if added_gw > 0 else float('inf'):.1f}x less)")
    print(f"  sustained rate: crowd-gateway {gw.max_rps:,.0f}/s vs LiteLLM {litellm.max_rps:,.0f}/s "
          f"({gw.max_rps / litellm.max_rps:.1f}x)")
    print(f"  ensemble of 5: {by['ensemble-5'].max_rps:,.0f} items/s "
          f"({by['ensemble-5'].max_rps * 5:,.0f} member calls/s)")


if __name__ == "__main__":
    main()
