"""Processes and ports on 127.0.0.1: free ports, waiting for a server, stopping a process, redis-server, CPU pinning."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv: list[str], *, cpu: int | None = None, env: dict[str, str | None] | None = None,
          output: Path | None = None, **popen: Any) -> subprocess.Popen[Any]:
    """Start `argv` (on CPU `cpu` with taskset when given; `env` added to this process's, a None value removing the
    variable; stdout and stderr appended to `output` when given, else `popen`'s or this process's own)."""
    log: IO[bytes] | None = output.open("ab") if output else None
    if log:
        popen = {**popen, "stdout": log, "stderr": subprocess.STDOUT}
    try:
        return subprocess.Popen([*(["taskset", "-c", str(cpu)] if cpu is not None else []), *argv],
                                env={k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None},
                                **popen)
    finally:
        if log:
            log.close()  # the process has its own copy


def wait_http(url: str, proc: subprocess.Popen[Any] | None = None, timeout: float = 20.0) -> None:
    """Wait until `url` answers at all (any status); fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def redis_argv(port: int, workdir: Path) -> list[str]:
    """A redis-server on 127.0.0.1 without persistence (deploy/system.sh installs it)."""
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir)]


def wait_redis(port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 10.0) -> None:
    """Wait until redis answers PING; fail early if its process died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            raise RuntimeError("redis-server did not start (is it installed? deploy/system.sh installs it)")
        time.sleep(0.05)


def start_redis(workdir: Path, *options: str, cpu: int | None = None,
                output: Path | None = None) -> tuple[subprocess.Popen[Any], str]:
    """A redis-server on a free port (`options` appended to its argv); returns it and its URL (database 0)."""
    port = free_port()
    proc = spawn([*redis_argv(port, workdir), *options], cpu=cpu, output=output,
                 **({} if output else {"stdout": subprocess.DEVNULL}))
    try:
        wait_redis(port, proc)
    except RuntimeError:
        stop(proc)
        raise
    return proc, f"redis://127.0.0.1:{port}/0"


class Clock:
    """A monotonic clock the test advances by hand (breakers, queue-depth caches, leases take a `clock`)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
