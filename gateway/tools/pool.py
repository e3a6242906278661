"""`crowd-gateway pool up|down|status`: run the config's local model servers (vLLM, llama.cpp) on CPU.

Why a state file keyed by port: the port is the machine-wide resource two pools could fight over, so
the record of which process holds it must not depend on which config file started it. `down` stops
exactly the recorded processes (verified by PID and kernel start time, so a reused PID is never
signalled); a port held by anything else is reported and left alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from gateway.config import Config, ConfigError, Strict, load_config
from gateway.tools.localmodels import ModelError, cache_dir, model_path, venv_python

HOST = "127.0.0.1"
STOP_GRACE_S = 15.0
POLL_S = 0.5
State = Literal["ready", "starting", "exited", "stopped", "port-taken"]
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local servers: never via a proxy
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # servers this process started, polled to reap them


class PoolServer(Strict):
    """One local model server started by `crowd-gateway pool up` (CPU, real small models)."""

    name: str
    engine: Literal["vllm", "llamacpp"]
    model: Literal["smollm2-135m-instruct", "gemma3-270m"]
    port: int = Field(ge=1024, le=65535)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment of the server process (e.g. VLLM_CPU_OMP_THREADS_BIND to pin it to a core)."""


class Pool(Strict):
    servers: list[PoolServer] = Field(min_length=1)
    ready_timeout_s: float = Field(600.0, gt=0)



class PoolError(Exception):
    """The pool cannot be brought to the asked state; the message names the server and what to do."""


@dataclass(frozen=True)
class Launch:
    """How to start one server."""

    argv: list[str]
    env: dict[str, str]


@dataclass(frozen=True)
class Record:
    """One started server process, as written to the state file."""

    name: str
    port: int
    pid: int
    start_time: int
    argv: list[str]
    log: str


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


def launch(server: PoolServer) -> Launch:
    """The engine command line for a server, from its cached venv and prepared model files."""
    python = str(venv_python(server.engine))
    model = str(model_path(server.engine, server.model))
    if server.engine == "vllm":
        # -O0 skips torch.compile: measured on 2 cores, ready in 30-45 s instead of 100-190 s (vLLM 0.32
        # fails to reload its compile cache, so it recompiles on every start) at the same request rate.
        argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                "--served-model-name", server.model, "--max-model-len", "2048", "--dtype", "bfloat16", "-O0"]
        env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    else:
        argv = [python, "-m", "llama_cpp.server", "--model", model, "--model_alias", server.model,
                "--n_ctx", "2048"]
        if server.model == "gemma3-270m":
            argv += ["--chat_format", "gemma"]
        env = {}
    argv += ["--host", HOST, "--port", str(server.port), *server.args]
    return Launch(argv, env | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"} | server.env)


# -- the state file ------------------------------------------------------------------------------


def state_dir() -> Path:
    return cache_dir() / "pool"


@contextlib.contextmanager
def _locked_state() -> Iterator[dict[int, Record]]:
    """Read-modify-write the state file under an exclusive lock; written back atomically on exit.

    `fcntl` is imported here, not at the top: it does not exist on Windows, where the CLI must still start."""
    import fcntl

    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = read_state()
        yield records
        tmp = folder / "state.json.tmp"
        tmp.write_text(json.dumps({"servers": [asdict(r) for r in records.values()]}, indent=2))
        os.replace(tmp, folder / "state.json")


def read_state() -> dict[int, Record]:
    """Records by port; an unreadable or absent state file means no recorded servers."""
    try:
        raw = json.loads((state_dir() / "state.json").read_text())
        return {r["port"]: Record(**r) for r in raw["servers"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


# -- processes -----------------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """The kernel's start time of a live (non-zombie) process, or None; tells a reused PID apart."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        _reap(pid)
        return None
    return int(fields[19])


def _reap(pid: int) -> None:
    """Collect our own exited child, so that its PID and process group can disappear."""
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.poll()
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_ours(record: Record) -> bool:
    """The recorded server, or what is left of its process group (vLLM's engine core), still runs.

    Each server leads its own session, so its PID is also its group id; Linux does not hand out a
    PID that is still in use as a group id, so a surviving group is necessarily ours.
    """
    started = start_time(record.pid)
    if started is not None:
        return started == record.start_time
    return _group_exists(record.pid)


def stop(records: list[Record], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM each recorded process group, then SIGKILL whatever is left after the grace period."""
    live = [r for r in records if is_ours(r)]
    for record in live:
        _signal_group(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while live and time.monotonic() < deadline:
        time.sleep(0.1)
        live = [r for r in live if _running(r)]
    for record in live:
        _signal_group(record.pid, signal.SIGKILL)
    for record in live:
        while _running(record):
            time.sleep(0.05)


def _running(record: Record) -> bool:
    start_time(record.pid)  # reaps the leader if it is our exited child
    return _group_exists(record.pid)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def port_free(port: int) -> bool:
    """Whether a server could bind the port on 127.0.0.1 now (same socket options as uvicorn)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def http_ok(port: int, path: str, timeout_s: float = 2.0) -> bool:
    try:
        with _DIRECT.open(f"http://{HOST}:{port}{path}", timeout=timeout_s) as resp:
            return resp.status == 200
    except (OSError, ValueError):
        return False


def log_tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- up / down / status --------------------------------------------------------------------------


def _pool_of(config: Config | Pool) -> Pool:
    if isinstance(config, Pool):
        pool = config
    elif config.pool is None:
        raise PoolError("the config has no `pool:` section")
    else:
        try:
            pool = Pool.model_validate(config.pool)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(f"invalid config: pool.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    for attr in ("name", "port"):
        values = [getattr(s, attr) for s in pool.servers]
        if dupes := sorted({v for v in values if values.count(v) > 1}):
            raise PoolError(f"pool servers share a {attr}: {dupes}")
    return pool


def _note(message: str) -> None:
    print(f"pool: {message}", file=sys.stderr, flush=True)


def pool_up(config: Config | Pool, note: Callable[[str], None] = _note) -> list[Record]:
    """Start the servers that are not running yet and wait until every server is ready.

    Returns the records of the servers this call started (those already running are left as they
    are). A taken port stops everything before anything starts; a server that fails or is not
    ready in time, or Ctrl-C, stops what this call started.
    """
    pool = _pool_of(config)
    with _locked_state() as state:
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
        with _locked_state() as state:
            _check_ports(todo)
            for server in todo:
                record = _spawn(server, launches[server.name])
                state[server.port] = record
                started.append(record)
                note(f"{server.name}: started {server.engine} pid {record.pid} on port {server.port}, log {record.log}")
        _wait_ready(pool, running | {r.port: r for r in started}, note)
    except BaseException:
        stop(started)
        _forget(started)
        raise
    return started


def _check_ports(servers: list[PoolServer]) -> None:
    taken = [f"{s.name!r} wants port {s.port}" for s in servers if not port_free(s.port)]
    if taken:
        raise PoolError("port already in use, not starting anything: " + "; ".join(taken) +
                        ". Another process holds it (not a server recorded by this pool); stop it or change "
                        "the port in the config.")


def _spawn(server: PoolServer, spec: Launch) -> Record:
    logs = state_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{server.name}-{server.port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(spec.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=os.environ | spec.env, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    return Record(server.name, server.port, proc.pid, start_time(proc.pid) or 0, spec.argv, str(log))


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
            if all(http_ok(port, path) for path in _ready_paths(server)):
                note(f"{server.name}: ready on http://{HOST}:{port}/v1 after {time.monotonic() - began:.1f} s")
                del waiting[port]
        if waiting and time.monotonic() > deadline:
            names = ", ".join(f"{s.name!r} (log {records[p].log})" for p, s in waiting.items())
            raise PoolError(f"not ready after ready_timeout_s={pool.ready_timeout_s:g} s: {names}")
        if waiting:
            time.sleep(POLL_S)


def _ready_paths(server: PoolServer) -> tuple[str, ...]:
    return ("/health", "/v1/models") if server.engine == "vllm" else ("/v1/models",)


def _forget(records: list[Record]) -> None:
    with _locked_state() as state:
        for record in records:
            if state.get(record.port) == record:
                del state[record.port]


def pool_down(config: Config | Pool, note: Callable[[str], None] = _note) -> list[Record]:
    """Stop the recorded servers on the config's ports; returns what was stopped."""
    pool = _pool_of(config)
    ports = {s.port for s in pool.servers}
    with _locked_state() as state:
        mine = [r for p, r in state.items() if p in ports]
        for record in mine:
            del state[record.port]
    live = [r for r in mine if is_ours(r)]
    stop(live)
    for record in live:
        note(f"{record.name}: stopped pid {record.pid} (port {record.port})")
    return live


def pool_status(config: Config | Pool) -> list[ServerStatus]:
    records = read_state()
    out = []
    for server in _pool_of(config).servers:
        record = records.get(server.port)
        state: State
        if record is not None and is_ours(record):
            state = "ready" if all(http_ok(server.port, p, 1.0) for p in _ready_paths(server)) else "starting"
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
            _forget(started)
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
