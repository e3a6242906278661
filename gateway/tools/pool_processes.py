"""The pool's server processes: the state file that records them by port, and starting and stopping them.

Why a state file keyed by port: the port is the machine-wide resource two pools could fight over, so the record of
which process holds it must not depend on which config file started it. Stopping signals exactly the recorded
processes (verified by PID and kernel start time, so a reused PID is never signalled).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.tools.localmodels import cache_dir
from gateway.tools.pool_config import HOST, Launch, PoolServer

STOP_GRACE_S = 15.0
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # servers this process started, polled to reap them


@dataclass(frozen=True)
class Record:
    """One started server process, as written to the state file."""

    name: str
    port: int
    pid: int
    start_time: int
    argv: list[str]
    log: str


def state_dir() -> Path:
    return cache_dir() / "pool"


@contextlib.contextmanager
def locked_state() -> Iterator[dict[int, Record]]:
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


def log_tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def spawn(server: PoolServer, spec: Launch) -> Record:
    logs = state_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{server.name}-{server.port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(spec.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=os.environ | spec.env, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    return Record(server.name, server.port, proc.pid, start_time(proc.pid) or 0, spec.argv, str(log))


def forget(records: list[Record]) -> None:
    with locked_state() as state:
        for record in records:
            if state.get(record.port) == record:
                del state[record.port]
