"""The test harness, shared by every test tier and by bench/: processes and ports (processes.py), the fake upstream
and its scriptable handle, as a process or in this process (fake_upstream.py, upstream.py, memory.py), gateway
processes (gateway.py: the one place that runs `crowd-gateway serve`) and the gateway app in this process
(inprocess.py, imported on its own so that the deploy tier never imports the app)."""

from tests.harness.gateway import Gateway, run_serve, start_gateway, without_cache
from tests.harness.processes import (
    BIN,
    ROOT,
    Clock,
    free_port,
    redis_argv,
    spawn,
    start_redis,
    stop,
    wait_http,
    wait_redis,
)
from tests.harness.upstream import AnyUpstream, InProcessUpstream, Upstream, member, start_upstream

__all__ = ["BIN", "ROOT", "AnyUpstream", "Clock", "Gateway", "InProcessUpstream", "Upstream", "free_port", "member",
           "redis_argv", "run_serve", "spawn", "start_gateway", "start_redis", "start_upstream", "stop", "wait_http",
           "wait_redis", "without_cache"]
