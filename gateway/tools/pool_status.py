"""What each pool server is doing: ready, starting, exited, stopped, or its port taken; and vLLM's prefix cache."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from typing import Literal

from gateway.config import Config
from gateway.tools.pool_config import HOST, Pool, PoolServer, pool_of
from gateway.tools.pool_processes import is_ours, port_free, read_state

State = Literal["ready", "starting", "exited", "stopped", "port-taken"]
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local servers: never via a proxy


@dataclass(frozen=True)
class PrefixCache:
    """vLLM's prefix cache counters, in prompt tokens: looked up, and found cached."""

    queries: float
    hits: float

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.queries if self.queries else None

    def since(self, before: PrefixCache) -> PrefixCache:
        return PrefixCache(self.queries - before.queries, self.hits - before.hits)

    def describe(self) -> str:
        rate = self.hit_rate
        return "no prompts yet" if rate is None else f"{rate:.0%} of {self.queries:,.0f} prompt tokens"


@dataclass(frozen=True)
class ServerStatus:
    name: str
    engine: str
    model: str
    port: int
    state: State
    pid: int | None
    log: str | None
    prefix_cache: PrefixCache | None = None
    """A ready vLLM server's prefix cache counters since it started."""


PREFIX_CACHE_COUNTERS = {"vllm:prefix_cache_queries_total": "queries", "vllm:prefix_cache_hits_total": "hits"}


def parse_prefix_cache(text: str) -> PrefixCache | None:
    """The prefix cache counters of a vLLM server's /metrics, summed over its engines; None if it has none."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {"queries": 0.0, "hits": 0.0}
    seen = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (which := PREFIX_CACHE_COUNTERS.get(sample.name)) is not None:
                found[which] += sample.value
                seen = True
    return PrefixCache(**found) if seen else None


def prefix_cache(port: int, timeout_s: float = 2.0) -> PrefixCache | None:
    """The prefix cache counters of the vLLM server on `port`; None when it cannot be read."""
    try:
        with _DIRECT.open(f"http://{HOST}:{port}/metrics", timeout=timeout_s) as resp:
            return parse_prefix_cache(resp.read().decode(errors="replace"))
    except (OSError, ValueError):
        return None


def http_ok(port: int, path: str, timeout_s: float = 2.0) -> bool:
    try:
        with _DIRECT.open(f"http://{HOST}:{port}{path}", timeout=timeout_s) as resp:
            return resp.status == 200
    except (OSError, ValueError):
        return False


def ready_paths(server: PoolServer) -> tuple[str, ...]:
    return ("/health", "/v1/models") if server.engine == "vllm" else ("/v1/models",)


def pool_status(config: Config | Pool) -> list[ServerStatus]:
    records = read_state()
    out = []
    for server in pool_of(config).servers:
        record = records.get(server.port)
        state: State
        if record is not None and is_ours(record):
            state = "ready" if all(http_ok(server.port, p, 1.0) for p in ready_paths(server)) else "starting"
        elif record is not None:
            state = "exited"
        else:
            state = "stopped" if port_free(server.port) else "port-taken"
        cache = prefix_cache(server.port) if state == "ready" and server.engine == "vllm" else None
        out.append(ServerStatus(server.name, server.engine, server.model, server.port, state,
                                record.pid if record else None, record.log if record else None, cache))
    return out


def format_status(statuses: list[ServerStatus]) -> str:
    rows = [("NAME", "ENGINE", "MODEL", "PORT", "STATE", "PID", "PREFIX CACHE HITS", "LOG")]
    rows += [(s.name, s.engine, s.model, str(s.port), s.state, str(s.pid or "-"),
              s.prefix_cache.describe() if s.prefix_cache else "-", s.log or "-") for s in statuses]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows)
