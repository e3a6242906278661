"""`crowd-gateway pool up|down|status`: run the config's local model servers (vLLM, llama.cpp) on CPU.

Bringing the pool up and down; the config and command lines are in pool_config.py, the processes and their state
file in pool_processes.py, each server's status in pool_status.py. A port held by anything but a recorded server
is reported and left alone.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

from gateway.config import Config, ConfigError, load_config
from gateway.tools.localmodels import ModelError
from gateway.tools.pool_config import HOST, Pool, PoolError, PoolServer, launch, pool_of
from gateway.tools.pool_processes import Record, forget, is_ours, locked_state, log_tail, port_free, spawn, stop
from gateway.tools.pool_status import ServerStatus, format_status, http_ok, pool_status, ready_paths

POLL_S = 0.5


def _note(message: str) -> None:
    print(f"pool: {message}", file=sys.stderr, flush=True)


def pool_up(config: Config | Pool, note: Callable[[str], None] = _note) -> list[Record]:
    """Start the servers that are not running yet and wait until every server is ready.

    Returns the records of the servers this call started (those already running are left as they
    are). A taken port stops everything before anything starts; a server that fails or is not
    ready in time, or Ctrl-C, stops what this call started.
    """
    pool = pool_of(config)
    with locked_state() as state:
        for port, record in list(state.items()):
            if not is_ours(record):
                del state[port]
        running = dict(state)
    todo = [s for s in pool.servers if s.port not in running]
    _check_ports(todo)
    launches = {s.name: launch(s) for s in pool.servers}  # prepares models: may take a minute, once
    for server in pool.servers:
        if server.port in running and running[server.port].argv != launches[server.name].argv:
            raise PoolError(f"server {server.name!r}: port {server.port} is held by a pool server started with a "
                            f"different command (pid {running[server.port].pid}); run `crowd-gateway pool down` "
                            f"with the config that started it first")
    for server in pool.servers:
        if server.port in running:
            note(f"{server.name}: already running, pid {running[server.port].pid} on port {server.port}")
    started: list[Record] = []
    try:
        with locked_state() as state:
            _check_ports(todo)
            for server in todo:
                record = spawn(server, launches[server.name])
                state[server.port] = record
                started.append(record)
                note(f"{server.name}: started {server.engine} pid {record.pid} on port {server.port}, log {record.log}")
        _wait_ready(pool, running | {r.port: r for r in started}, note)
    except BaseException:
        stop(started)
        forget(started)
        raise
    return started


def _check_ports(servers: list[PoolServer]) -> None:
    taken = [f"{s.name!r} wants port {s.port}" for s in servers if not port_free(s.port)]
    if taken:
        raise PoolError("port already in use, not starting anything: " + "; ".join(taken) +
                        ". Another process holds it (not a server recorded by this pool); stop it or change "
                        "the port in the config.")


def _wait_ready(pool: Pool, records: dict[int, Record], note: Callable[[str], None]) -> None:
    began = time.monotonic()
    deadline = began + pool.ready_timeout_s
    waiting = {s.port: s for s in pool.servers}
    while waiting:
        for port, server in list(waiting.items()):
            record = records[port]
            if not is_ours(record):
                raise PoolError(f"server {server.name!r} exited before it was ready; last lines of {record.log}:\n"
                                f"{log_tail(record.log)}")
            if all(http_ok(port, path) for path in ready_paths(server)):
                note(f"{server.name}: ready on http://{HOST}:{port}/v1 after {time.monotonic() - began:.1f} s")
                del waiting[port]
        if waiting and time.monotonic() > deadline:
            names = ", ".join(f"{s.name!r} (log {records[p].log})" for p, s in waiting.items())
            raise PoolError(f"not ready after ready_timeout_s={pool.ready_timeout_s:g} s: {names}")
        if waiting:
            time.sleep(POLL_S)


def pool_down(config: Config | Pool, note: Callable[[str], None] = _note) -> list[Record]:
    """Stop the recorded servers on the config's ports; returns what was stopped."""
    pool = pool_of(config)
    ports = {s.port for s in pool.servers}
    with locked_state() as state:
        mine = [r for p, r in state.items() if p in ports]
        for record in mine:
            del state[record.port]
    live = [r for r in mine if is_ours(r)]
    stop(live)
    for record in live:
        note(f"{record.name}: stopped pid {record.pid} (port {record.port})")
    return live


@contextlib.contextmanager
def running_pool(config: Config | Pool, note: Callable[[str], None] = _note) -> Iterator[list[ServerStatus]]:
    """Bring the pool up for the duration of a block; on exit stop exactly what it started.

    Servers already running are reused and left running. SIGTERM is turned into SystemExit inside
    the block (main thread only), so a terminated demo or test run cleans up like Ctrl-C does.
    """
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        started = pool_up(config, note)
        try:
            yield pool_status(config)
        finally:
            stop(started)
            forget(started)
            for record in started:
                note(f"{record.name}: stopped pid {record.pid}")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


# -- CLI -----------------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `pool up|down|status --config FILE`; the parsed args carry `func(args) -> exit code`."""
    pool = subparsers.add_parser("pool", help="run the config's local model servers (vLLM, llama.cpp on CPU)",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = pool.add_subparsers(dest="pool_action", required=True)
    for name, text in (("up", "start the servers and wait until they are ready"),
                       ("down", "stop the servers this pool started"),
                       ("status", "show each server's state")):
        action = actions.add_parser(name, help=text, description=f"crowd-gateway pool {name}: {text}.")
        action.add_argument("--config", help="YAML config with a `pool:` section (default: $CROWD_GATEWAY_CONFIG)")
        action.set_defaults(func=run_pool_command)


def run_pool_command(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        if args.pool_action == "up":
            pool_up(config)
            print(format_status(pool_status(config)))
        elif args.pool_action == "down":
            pool_down(config)
        else:
            statuses = pool_status(config)
            print(format_status(statuses))
            return 0 if all(s.state == "ready" for s in statuses) else 3
    except (ConfigError, PoolError, ModelError) as exc:
        print(f"pool {args.pool_action}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
