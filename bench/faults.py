"""Issue 12's reliability rules under fault injection, measured against real processes (prints a table; not a test).

Each row runs its own `crowd-gateway serve` process (pinned to CPU 0) in front of the scriptable
fake upstream of the test harness, tests/harness/ (CPU 1, with this load generator and redis-server). Every
client is an async httpx client on 127.0.0.1; every loop is bounded in requests and in time.

  odd replies   five-member ensembles, one member returning well-formed but odd JSON (the shapes of
                tests/integration/test_faults.py: content as list/int/dict, choices as strings, usage
                negative/strings/2**64-1/1e30, a JSON list, garbage logprobs), one odd member per shape:
                5xx answers (aim 0), and whether each malformed member's breaker opened
                (crowd_gateway_circuit_state 2) while garbage logprobs only cost the soft vote.
  bad 429s      a member answering 429 with Retry-After `garbage`, `1.5s`, `nan` (and `120`, past the
                deadline), beside a healthy one: 5xx answers (aim 0), p99 latency against the 3 s deadline.
  redis bursts  a real redis-server (started here, no persistence), bursts of 150/300/400 concurrent
                requests with unique item ids: answers with `annotation.stored` false, and LOST votes:
                votes of answers that said `stored: true` but are not in GET /v1/annotations/{item_id}
                afterwards (aim 0).
  overload      issue 20's two shapes: members that take 1 s a call with max_concurrency 8, and fast members
                behind a gateway whose own CPU is the bottleneck. Capacity is measured first with a closed
                loop, then an open loop (aiohttp, new connections as needed, 15 s client timeout) sends 5x
                capacity for 8 s: goodput (200s per second, aim >= 80% of capacity), share and latency of
                the 429s (aim: milliseconds), latency of the 200s, client timeouts, breakers opened (aim
                none), and one request right after.
  hostile       a few hundred bad bodies and queries (invalid JSON, 8,001 labels with a duplicate,
                json_schema as a string or list, a text part of 5, temperature "hot", a message without
                content, /v1/batches?limit=² or huge): 5xx answers (aim 0), bodies that are not
                OpenAI-shaped errors, and the slowest single request (linear checks: aim < 1 s).
  connections   2,500 connections that send nothing, 100 that trickle their headers and 100 their body, opened
                at once against gateway.connections limits of 2 s, while a normal client labels items: how
                long the last one was held (aim: closed at the limit, none held past it), 408s to the
                tricklers, the normal client's 5xx (aim 0) and p99.
  disconnects   1,000 clients that go away: before their body arrived, while their ensemble answer is made,
                during an ensemble stream and during a passthrough stream, while a normal client labels items:
                log lines and tracebacks they cost (aim: one short line per body-less drop, no traceback),
                /healthz right after, the normal client's 5xx (aim 0) and p99.

Run: PYTHONPATH=$PWD /work/main/.venv/bin/python bench/faults.py [SCENARIO ...]   (from the repository or
     worktree root; PYTHONPATH makes this checkout's gateway code the one the gateway processes run; SCENARIO
     names rows to run, e.g. `overload_members overload_cpu`)
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.overhead import cpu_seconds  # noqa: E402
from tests.harness import Upstream, member, start_gateway, start_redis, start_upstream, stop  # noqa: E402
from tests.harness.faults import ODD_LOGPROBS, ODD_REPLIES  # noqa: E402

GATEWAY_CPU, LOAD_CPU = 0, 1
LABELS = ["positive", "negative"]
HEALTHY = ["f1", "f2", "f3", "f4"]
ODD_PER_SHAPE = 20
"""Requests per odd shape (the breaker opens after 5 failures; the rest must still be answered)."""
RETRY_HINTS = ["garbage", "1.5s", "nan", "120"]
PER_HINT = 30
DEADLINE_429_S = 3.0
BURSTS = (150, 300, 400)
OVERLOAD_FACTOR = 5
CAPACITY_S = 4.0
BURST_S = 8.0
CLIENT_TIMEOUT_S = 15.0
HOSTILE_ROUNDS = 30
CONCURRENCY = 8
"""In-flight requests of the closed loops of the odd, 429 and hostile rows."""
CONNECTION_LIMIT_S = 2.0
"""gateway.connections' three limits in the connections row (the defaults are 65/10/60 s)."""
IDLE_CONNECTIONS = 2500
SLOW_CONNECTIONS = 100
DROPS = 1000
DROP_CONCURRENCY = 50
ROW_BUDGET_S = 60.0
"""No row's requests may run longer than this (the loops are bounded in count as well)."""


@dataclass
class Row:
    area: str
    tried: int
    failed: int
    lost: str
    notes: str
    measured: str


def fast_member(up: Upstream, name: str, **extra: Any) -> dict[str, Any]:
    """A member of the fake upstream as this benchmark runs it: unpriced, upstream model id its name."""
    return member(up, name, price=None, model=name, **extra)


@contextmanager
def gateway(config: dict[str, Any], tmp: Path, name: str, env: dict[str, str] | None = None,
            started: list[int] | None = None) -> Iterator[str]:
    """A `crowd-gateway serve` process on CPU 0 serving `config`; yields its base URL and stops it after.
    `started` receives its pid."""
    config = {**config, "gateway": {"api_keys_env": None, **config.get("gateway", {})}}
    gw = start_gateway(config, tmp, cpu=GATEWAY_CPU, output=tmp / f"{name}.log", env=env)
    if started is not None:
        started.append(gw.proc.pid)
    try:
        yield gw.url
    finally:
        gw.close()


@contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """A real redis-server on a free port, without persistence; yields its URL."""
    proc, url = start_redis(tmp, cpu=LOAD_CPU, output=tmp / "redis.log")
    try:
        yield url
    finally:
        stop(proc)


def circuit_states(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {m: float(v) for m, v in re.findall(r'crowd_gateway_circuit_state\{member="([^"]+)"\} (\S+)', text)}


def label_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "labels": LABELS, "messages": [{"role": "user", "content": "fine"}], **extra}


@dataclass
class Answer:
    status: int
    seconds: float
    body: Any


async def send(http: httpx.AsyncClient, method: str, path: str, *, json: Any = None,
               content: bytes | None = None) -> Answer:
    started = time.perf_counter()
    r = await http.request(method, path, json=json, content=content,
                           headers={"Content-Type": "application/json"} if content is not None else None)
    try:
        body = r.json()
    except ValueError:
        body = None
    return Answer(r.status_code, time.perf_counter() - started, body)


async def closed_loop(calls: list[Callable[[], Awaitable[Answer]]], concurrency: int) -> list[Answer]:
    """Run `calls` with `concurrency` in flight, stopping (the rest untried) after ROW_BUDGET_S."""
    gate = asyncio.Semaphore(concurrency)
    until = time.perf_counter() + ROW_BUDGET_S

    async def one(call: Callable[[], Awaitable[Answer]]) -> Answer | None:
        async with gate:
            return await call() if time.perf_counter() < until else None

    return [a for a in await asyncio.gather(*(one(c) for c in calls)) if a is not None]


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else (values[0] if values else math.nan)


def fivexx(answers: list[Answer]) -> int:
    return sum(a.status >= 500 for a in answers)


def statuses(answers: list[Answer]) -> str:
    return ", ".join(f"{s}: {n}" for s, n in sorted(Counter(a.status for a in answers).items()))


def vote_of(answer: Answer, member: str) -> dict[str, Any] | None:
    if answer.status != 200:
        return None
    return next((v for v in answer.body["annotation"]["votes"] if v["member"] == member), None)


def odd_replies(up: Upstream, tmp: Path) -> Row:
    shapes = [("reply", raw) for raw in ODD_REPLIES] + [
        ("logprobs", {"choices": [{"message": {"content": "negative"}, "logprobs": lp}]}) for lp in ODD_LOGPROBS]
    odd = [f"odd{i}" for i in range(len(shapes))]
    for name in HEALTHY:
        up.script(name, answer="positive")
    for name, (_, raw) in zip(odd, shapes):
        up.script(name, raw=raw)
    config = {"members": [fast_member(up, n) for n in HEALTHY + odd],
              "ensembles": [{"name": f"five-{n}", "members": [*HEALTHY, n], "quorum": 3} for n in odd]}
    with gateway(config, tmp, "odd") as url:
        async def run() -> list[Answer]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                calls = [lambda n=n: send(http, "POST", "/v1/chat/completions", json=label_body(f"five-{n}"))
                         for _ in range(ODD_PER_SHAPE) for n in odd]
                return await closed_loop(calls, CONCURRENCY)

        answers = asyncio.run(run())
        states = circuit_states(url)
    per_member = {n: [a for a in answers if a.status == 200 and a.body["model"] == f"five-{n}"] for n in odd}
    malformed = [n for n, (kind, _) in zip(odd, shapes) if kind == "reply"]
    soft = [n for n, (kind, _) in zip(odd, shapes) if kind == "logprobs"]
    opened = sum(states.get(n) == 2 for n in malformed)
    hard_kept = sum(all((v := vote_of(a, n)) is not None and v["label"] == "negative" and v["probs"] is None
                        for a in per_member[n]) for n in soft)
    soft_closed = sum(states.get(n) == 0 for n in soft)
    right = sum(a.status == 200 and a.body["choices"][0]["message"]["content"] == "positive" for a in answers)
    odd_calls = sum(up.calls(n)["calls"] for n in malformed)
    return Row("odd member replies", len(answers), fivexx(answers), "-",
               f"breaker open {opened}/{len(malformed)} malformed; garbage logprobs kept as hard votes "
               f"{hard_kept}/{len(soft)} (breaker closed {soft_closed}/{len(soft)})",
               f"{len(shapes)} odd shapes x {ODD_PER_SHAPE} requests to 1-odd-of-5 ensembles: statuses "
               f"{statuses(answers)}; right label {right}/{len(answers)}; the malformed members got {odd_calls} calls "
               f"before their breakers cut them off")


def bad_retry_after(up: Upstream, tmp: Path) -> Row:
    up.script("f1", answer="positive")
    config = {"gateway": {"breaker": {"failure_threshold": 100_000}},  # keep the 429 member asked on every request
              "members": [fast_member(up, "f1"), fast_member(up, "r429", retries=2)],
              "ensembles": [{"name": "limited", "members": ["f1", "r429"], "quorum": 1,
                             "deadline_s": DEADLINE_429_S}]}
    answers: list[Answer] = []
    per_hint: list[str] = []
    with gateway(config, tmp, "r429") as url:
        for hint in RETRY_HINTS:
            up.script("r429", fail=[429] * (3 * PER_HINT + 10), retry_after=hint)

            async def run() -> list[Answer]:
                async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                    calls = [lambda: send(http, "POST", "/v1/chat/completions", json=label_body("limited"))
                             for _ in range(PER_HINT)]
                    return await closed_loop(calls, CONCURRENCY)

            got = asyncio.run(run())
            answers += got
            failed_votes = sum((v := vote_of(a, "r429")) is not None and v["label"] is None and "429" in v["error"]
                               for a in got)
            per_hint.append(f"`{hint}`: 5xx {fivexx(got)}, p99 {p99([a.seconds for a in got]):.2f} s, "
                            f"429 as r429's failed vote {failed_votes}/{len(got)}")
    worst = p99([a.seconds for a in answers])
    return Row("429 with bad Retry-After", len(answers), fivexx(answers), "-",
               f"p99 {worst:.2f} s vs {DEADLINE_429_S:g} s deadline "
               f"({'under' if worst < DEADLINE_429_S else 'NOT under'})",
               f"{PER_HINT} requests per hint, member retries 2, statuses {statuses(answers)}; "
               + "; ".join(per_hint))


def redis_bursts(up: Upstream, tmp: Path) -> Row:
    names = HEALTHY[:3]
    for name in names:
        up.script(name, answer="positive")
    config = {"gateway": {"max_items_in_flight": 1000, "max_items_in_flight_per_key": 1000},
              "store": {"backend": "redis"},
              "members": [fast_member(up, n, max_concurrency=256) for n in names],
              "ensembles": [{"name": "three", "members": names, "quorum": 2}]}
    tried = failed = not_stored = lost = lost_items = checked = 0
    per_burst: list[str] = []
    with redis_server(tmp) as redis_url, gateway(config, tmp, "redis",
                                                 env={"CROWD_GATEWAY_REDIS_URL": redis_url}) as url:
        for size in BURSTS:
            async def run(size: int = size) -> tuple[list[tuple[str, Answer]], list[tuple[str, int, Answer]]]:
                limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
                async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
                    ids = [f"burst{size}-{i}" for i in range(size)]
                    burst = await asyncio.wait_for(asyncio.gather(*(
                        send(http, "POST", "/v1/chat/completions", json=label_body("three", item_id=i))
                        for i in ids)), ROW_BUDGET_S)
                    kept = [(i, a) for i, a in zip(ids, burst)
                            if a.status == 200 and a.body["annotation"]["stored"] is True]
                    calls = [lambda i=i: send(http, "GET", f"/v1/annotations/{i}") for i, _ in kept]
                    found = await closed_loop(calls, 32)
                    return list(zip(ids, burst)), [(i, len(a.body["annotation"]["votes"]), f)
                                                   for (i, a), f in zip(kept, found)]

            burst, stored = asyncio.run(run())
            answers = [a for _, a in burst]
            missing = [want - (len(f.body["votes"]) if f.status == 200 else 0) for _, want, f in stored]
            said_not = sum(a.status == 200 and a.body["annotation"]["stored"] is False for a in answers)
            tried += len(answers)
            failed += fivexx(answers)
            not_stored += said_not
            checked += len(stored)
            lost += sum(missing)
            lost_items += sum(m > 0 for m in missing)
            per_burst.append(f"{size}: statuses {statuses(answers)}, stored false {said_not}, "
                             f"p99 {p99([a.seconds for a in answers]):.2f} s, lost {sum(missing)}")
    return Row("redis store bursts", tried, failed, str(lost),
               f"stored false {not_stored}; {checked} stored-true items read back, {lost_items} missing votes",
               f"bursts of {'/'.join(map(str, BURSTS))} concurrent requests (3 members, default redis pool "
               f"max_connections 200, pool_timeout_s 10), votes read back with GET /v1/annotations/{{id}}: "
               + "; ".join(per_burst))


@dataclass
class Shape:
    """One overload shape: who is the bottleneck, the config that makes it so, and the request sent."""

    area: str
    config: dict[str, Any]
    body: dict[str, Any]
    capacity_concurrency: int
    """In-flight requests of the closed loop that measures capacity: enough to keep the bottleneck busy."""
    what: str


def member_bound(up: Upstream) -> Shape:
    """Issue 20's first shape: members that take 1 s per call with max_concurrency 8 (capacity ~7.7 items/s)."""
    names = HEALTHY[:3]
    for name in names:
        up.script(name, answer="positive", latency_ms=1000)
    config = {"members": [fast_member(up, n, max_concurrency=8) for n in names],
              "ensembles": [{"name": "slow", "members": names, "quorum": 2, "deadline_s": 5}]}
    return Shape("overload at 5x, members' capacity", config, label_body("slow"), 8,
                 "3 members x 1 s, max_concurrency 8, quorum 2, deadline 5 s")


def cpu_bound(up: Upstream) -> Shape:
    """Issue 20's second shape: fast members, the gateway's own CPU is the bottleneck (~200 items/s on a core)."""
    names = [f"c{i}" for i in range(8)]
    labels = [f"topic-{i}" for i in range(200)]
    for name in names:
        up.script(name, answer=labels[0])
    config = {"members": [fast_member(up, n, max_concurrency=256) for n in names],
              "ensembles": [{"name": "heavy", "members": names, "quorum": 2, "deadline_s": 10,
                             "aggregator": "weighted"}]}
    body = {"model": "heavy", "labels": labels, "messages": [{"role": "user", "content": "a long review " * 500}]}
    return Shape("overload at 5x, gateway CPU", config, body, 128,
                 "8 fast members, 200 labels, 7 KB text, weighted")


async def timed_post(http: aiohttp.ClientSession, url: str, payload: bytes) -> Answer:
    """One request; a client timeout or a dropped connection is status 0."""
    started = time.perf_counter()
    try:
        async with http.post(url, data=payload, headers={"Content-Type": "application/json"}) as resp:
            await resp.read()
            return Answer(resp.status, time.perf_counter() - started, None)
    except (TimeoutError, aiohttp.ClientError):
        return Answer(0, time.perf_counter() - started, None)


async def capacity_of(http: aiohttp.ClientSession, url: str, payload: bytes, concurrency: int) -> float:
    """200s per second of a closed loop with `concurrency` requests in flight for CAPACITY_S."""
    served = 0
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal served
        while time.perf_counter() - started < CAPACITY_S:
            answer = await timed_post(http, url, payload)
            served += answer.status == 200  # after the await: `served += await ...` loses updates

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return served / (time.perf_counter() - started)


def overload(up: Upstream, tmp: Path, shape: Shape) -> Row:
    """Capacity first (closed loop), then OVERLOAD_FACTOR x capacity open loop for BURST_S, fresh connections
    allowed as a client's pool would open them, a client timeout of CLIENT_TIMEOUT_S."""
    pids: list[int] = []
    with gateway(shape.config, tmp, "overload", started=pids) as url:
        target = f"{url}/v1/chat/completions"
        payload = json.dumps(shape.body).encode()
        cpu: list[float] = []

        async def run() -> tuple[float, list[Answer], float, Answer, float]:
            timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:
                cpu.append(cpu_seconds(pids[0]))
                capacity = await capacity_of(http, target, payload, shape.capacity_concurrency)
                cpu.append(cpu_seconds(pids[0]))
                rate = OVERLOAD_FACTOR * capacity
                tasks: list[asyncio.Task[Answer]] = []
                started = time.perf_counter()
                for i in range(int(rate * BURST_S)):
                    delay = started + i / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(timed_post(http, target, payload)))
                offered = len(tasks) / (time.perf_counter() - started)
                answers = list(await asyncio.gather(*tasks))
                window = time.perf_counter() - started
                cpu.append(cpu_seconds(pids[0]))
                after = await timed_post(http, target, payload)
                return capacity, answers, window, after, offered

        capacity, answers, window, after, offered = asyncio.run(run())
        states = circuit_states(url)
    good = [a.seconds for a in answers if a.status == 200]
    refused = [a.seconds for a in answers if a.status == 429]
    opened = sorted(n for n, state in states.items() if state != 0)
    goodput = len(good) / window
    per_item = [(cpu[1] - cpu[0]) / (capacity * CAPACITY_S) * 1000, (cpu[2] - cpu[1]) / max(len(good), 1) * 1000]
    return Row(shape.area, len(answers), fivexx(answers), "-",
               f"goodput {goodput / capacity:.0%} of capacity, {len(refused) / len(answers):.0%} refused with 429 "
               f"(p50 {ms(refused, 50)} / p99 {ms(refused, 99)} ms), 200s p50 {ms(good, 50)} / p99 {ms(good, 99)} ms, "
               f"{sum(a.status == 0 for a in answers)} client timeouts, breakers opened: {', '.join(opened) or 'none'}, "
               f"next request {after.status} in {after.seconds * 1000:.0f} ms",
               f"{shape.what}: capacity {capacity:.1f}/s (closed loop, {shape.capacity_concurrency} in flight, "
               f"{CAPACITY_S:g} s); open loop offered {offered:.0f}/s for {BURST_S:g} s, statuses {statuses(answers)}, "
               f"goodput {goodput:.1f}/s over {window:.2f} s until the last answer; gateway CPU per answered item "
               f"{per_item[0]:.2f} ms at capacity, {per_item[1]:.2f} ms under overload (refusals included)")


def ms(seconds: list[float], percentile: int) -> str:
    if not seconds:
        return "-"
    return f"{(statistics.median(seconds) if percentile == 50 else p99(seconds)) * 1000:.0f}"


def hostile_requests() -> list[tuple[str, str, str, dict[str, Any] | None, bytes | None]]:
    """(kind, method, path, JSON body, raw body) of each bad request."""
    chat = "/v1/chat/completions"
    base = {"model": "five", "messages": [{"role": "user", "content": "x"}]}
    return [
        ("invalid JSON", "POST", chat, None, b'{"model": "five", "labels": ["a", '),
        ("not UTF-8", "POST", chat, None, b'{"model": "five", "labels": ["\xff\xfe"]}'),
        ("8,001 labels, one duplicate", "POST", chat,
         {**base, "labels": [f"label-{i}" for i in range(8000)] + ["label-7"]}, None),
        ("json_schema a string", "POST", chat,
         {**base, "response_format": {"type": "json_schema", "json_schema": "oops"}}, None),
        ("json_schema a list", "POST", chat,
         {**base, "response_format": {"type": "json_schema", "json_schema": [1]}}, None),
        ("text part 5", "POST", chat,
         {**base, "labels": LABELS, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, None),
        ("temperature hot", "POST", chat, {**base, "labels": LABELS, "temperature": "hot"}, None),
        ("message without content", "POST", chat, {**base, "labels": LABELS, "messages": [{"role": "user"}]}, None),
        ("limit=²", "GET", "/v1/batches?limit=%C2%B2", None, None),
        ("limit=100000", "GET", "/v1/batches?limit=100000", None, None),
    ]


def hostile(up: Upstream, tmp: Path) -> Row:
    for name in HEALTHY:
        up.script(name, answer="positive")
    five = [*HEALTHY, "f5"]
    up.script("f5", answer="positive")
    config = {"gateway": {"max_labels": 10_000},  # so 8,001 labels reach the duplicate check, not the count cap
              "members": [fast_member(up, n) for n in five], "ensembles": [{"name": "five", "members": five, "quorum": 3}]}
    kinds = hostile_requests()
    with gateway(config, tmp, "hostile") as url:
        async def run() -> list[tuple[str, Answer]]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                async def one(kind: str, method: str, path: str, body: dict[str, Any] | None,
                              raw: bytes | None) -> tuple[str, Answer]:
                    return kind, await send(http, method, path, json=body, content=raw)

                calls = [lambda k=k: one(*k) for _ in range(HOSTILE_ROUNDS) for k in kinds]
                return await closed_loop(calls, CONCURRENCY)

        results = asyncio.run(run())
    answers = [a for _, a in results]
    shaped = {"message", "type", "param", "code"}
    not_openai = sum(not (isinstance(a.body, dict) and isinstance(a.body.get("error"), dict)
                          and shaped <= set(a.body["error"])) for a in answers)
    slowest_kind, slowest = max(results, key=lambda r: r[1].seconds)
    by_kind = {k: Counter(a.status for kk, a in results if kk == k) for k, *_ in kinds}
    return Row("hostile client bodies", len(answers), fivexx(answers), "-",
               f"max single request {slowest.seconds * 1000:.0f} ms ({slowest_kind}); not OpenAI-shaped {not_openai}",
               f"{len(kinds)} kinds x {HOSTILE_ROUNDS}, {CONCURRENCY} in flight, statuses by kind: "
               + "; ".join(f"{k} " + ", ".join(f"{s}x{n}" for s, n in sorted(c.items())) for k, c in by_kind.items()))


async def hold(url: str, first: bytes, trickle: bytes, within: float) -> tuple[float, bytes]:
    """Open a connection, send `first`, then `trickle` every 0.5 s until the gateway closes it (at most `within`
    seconds); (seconds it stayed open, what the gateway sent)."""
    host, port = url.removeprefix("http://").split(":")
    started = time.perf_counter()  # before connecting: the gateway's deadline starts when it accepts
    reader, writer = await asyncio.open_connection(host, int(port))
    got = b""
    try:
        writer.write(first)
        while time.perf_counter() - started < within:
            try:
                data = await asyncio.wait_for(reader.read(65536), 0.5)
            except TimeoutError:
                if trickle:
                    writer.write(trickle)
                continue
            if not data:
                break
            got += data
    except OSError:  # reset by the gateway while trickling
        pass
    finally:
        writer.close()
    return time.perf_counter() - started, got


async def normal_client(url: str, until: Callable[[], bool]) -> list[Answer]:
    """A well-behaved client labelling items one after another while `until()` is false."""
    answers = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while not until():
            answers.append(await send(http, "POST", "/v1/chat/completions", json=label_body("three")))
    return answers


def slow_connections(up: Upstream, tmp: Path) -> Row:
    names = HEALTHY[:3]
    for name in names:
        up.script(name, answer="positive")
    limits = {"keep_alive_s": CONNECTION_LIMIT_S, "header_timeout_s": CONNECTION_LIMIT_S,
              "body_timeout_s": CONNECTION_LIMIT_S}
    config = {"gateway": {"connections": limits}, "members": [fast_member(up, n) for n in names],
              "ensembles": [{"name": "three", "members": names, "quorum": 2}]}
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    kinds = {"idle": (b"", b"", IDLE_CONNECTIONS), "slow headers": (head, b"X", SLOW_CONNECTIONS),
             "slow body": (head + b"Content-Length: 100000\r\n\r\n{", b" ", SLOW_CONNECTIONS)}
    with gateway(config, tmp, "connections") as url:
        async def run() -> tuple[dict[str, list[tuple[float, bytes]]], list[Answer]]:
            held = {kind: [asyncio.create_task(hold(url, first, trickle, 4 * CONNECTION_LIMIT_S + 10))
                           for _ in range(n)] for kind, (first, trickle, n) in kinds.items()}
            everyone = [t for tasks in held.values() for t in tasks]
            served = await normal_client(url, lambda: all(t.done() for t in everyone))
            return {kind: [t.result() for t in tasks] for kind, tasks in held.items()}, served

        held, served = asyncio.run(run())
    late = sum(seconds > CONNECTION_LIMIT_S + 1.0 for results in held.values() for seconds, _ in results)
    timed_out = sum(got.startswith(b"HTTP/1.1 408 ") for kind in ("slow headers", "slow body")
                    for _, got in held[kind])
    worst = {kind: max(seconds for seconds, _ in results) for kind, results in held.items()}
    return Row("idle and slow connections", len(served), fivexx(served), "-",
               f"{IDLE_CONNECTIONS:,} idle + {2 * SLOW_CONNECTIONS} trickling connections all closed, the last "
               f"after {max(worst.values()):.1f} s (limit {CONNECTION_LIMIT_S:g} s), {late} held past it; "
               f"408 to {timed_out}/{2 * SLOW_CONNECTIONS} tricklers; a normal client's p99 "
               f"{p99([a.seconds for a in served]) * 1000:.0f} ms meanwhile",
               f"gateway.connections at {CONNECTION_LIMIT_S:g} s each; connections opened at once and held until "
               f"closed: " + ", ".join(f"{kind} {len(r)} (longest {worst[kind]:.2f} s)" for kind, r in held.items())
               + f"; the normal client (3-member ensemble, one request at a time): statuses {statuses(served)}")


async def drop(url: str, body: bytes, partial: bool, read: bool) -> None:
    """Send a completion request (all of its body, or half) and go away: at once, or after the first bytes of
    its answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    writer.write(head + (body[:len(body) // 2] if partial else body))
    await writer.drain()
    if read:
        await reader.read(64)
    writer.transport.abort()


def disconnects(up: Upstream, tmp: Path) -> Row:
    names = HEALTHY[:3]
    up.script(names[0], answer="positive " * 500, latency_ms=50)  # a long stream for the passthrough drops
    for name in names[1:]:
        up.script(name, answer="positive", latency_ms=50)
    config = {"members": [fast_member(up, n) for n in names], "ensembles": [{"name": "three", "members": names,
                                                                        "quorum": 2}]}
    messages = [{"role": "user", "content": "fine"}]
    ensemble = encoded(label_body("three"))
    kinds = {"before its body arrived": (ensemble, True, False),
             "while its ensemble answer was made": (ensemble, False, False),
             "during an ensemble stream": (encoded(label_body("three", stream=True)), False, True),
             "during a passthrough stream": (encoded({"model": names[0], "messages": messages, "stream": True}),
                                             False, True)}
    log = tmp / "disconnects.log"
    with gateway(config, tmp, "disconnects") as url:
        before = len(log.read_text().splitlines())

        async def run() -> tuple[list[Answer], float]:
            stop_at = time.perf_counter() + ROW_BUDGET_S
            gate = asyncio.Semaphore(DROP_CONCURRENCY)

            async def one(body: bytes, partial: bool, read: bool) -> None:
                async with gate:
                    if time.perf_counter() < stop_at:
                        await drop(url, body, partial, read)

            done = False
            normal = asyncio.create_task(normal_client(url, lambda: done))
            await asyncio.gather(*(one(*kinds[kind]) for _ in range(DROPS // len(kinds)) for kind in kinds))
            done = True
            served = await normal
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                health = await send(http, "GET", "/healthz")
            return served, health.seconds

        served, health_s = asyncio.run(run())
        time.sleep(0.5)
        lines = log.read_text().splitlines()[before:]
        counted = re.search(r"^crowd_gateway_client_disconnects_total (\S+)$", httpx.get(f"{url}/metrics").text,
                            re.MULTILINE)
    tracebacks = sum("Traceback" in line for line in lines)
    return Row("client disconnects", len(served), fivexx(served), "-",
               f"{DROPS:,} dropped connections: {len(lines)} log lines, {tracebacks} tracebacks; /healthz right "
               f"after in {health_s * 1000:.0f} ms; a normal client's p99 {p99([a.seconds for a in served]) * 1000:.0f} "
               f"ms meanwhile",
               f"{DROPS // len(kinds)} each of: went away " + ", ".join(kinds) + f" ({DROP_CONCURRENCY} at a time); "
               f"crowd_gateway_client_disconnects_total {counted.group(1) if counted else '?'}; the normal client: "
               f"statuses {statuses(served)}")


def overload_members(up: Upstream, tmp: Path) -> Row:
    return overload(up, tmp, member_bound(up))


def overload_cpu(up: Upstream, tmp: Path) -> Row:
    return overload(up, tmp, cpu_bound(up))


def encoded(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def main() -> None:
    only = set(sys.argv[1:])
    """Rows to run, by scenario name (e.g. `overload_members overload_cpu`); none: all."""
    os.sched_setaffinity(0, {LOAD_CPU})
    tmp = Path(tempfile.mkdtemp(prefix="crowd-faults-"))
    started = time.monotonic()
    rows: list[Row] = []
    with start_upstream(cpu=LOAD_CPU, output=tmp / "upstream.log") as up:
        scenarios = {f.__name__: f for f in (odd_replies, bad_retry_after, redis_bursts, overload_members,
                                             overload_cpu, hostile, slow_connections, disconnects)}
        for name, scenario in scenarios.items():
            if only and name not in only:
                continue
            up.reset()
            print(f"running {name} ...", file=sys.stderr)
            rows.append(scenario(up, tmp))
    print(f"\nFault benchmark (issue 12): gateway on CPU {GATEWAY_CPU}; fake upstream, redis-server and load on CPU "
          f"{LOAD_CPU}; {time.monotonic() - started:.0f} s in all\n")
    print("| area | requests tried | failed (5xx) | lost votes | notes |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row.area} | {row.tried} | {row.failed} | {row.lost} | {row.notes} |")
    print()
    for row in rows:
        print(f"- {row.area}: {row.measured}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
