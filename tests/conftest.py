"""Fixtures that start real servers on 127.0.0.1: the scriptable upstream and gateway processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20.0) -> None:
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


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Upstream:
    """Handle on the fake upstream server: script members, read their calls."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def base_url(self, member: str) -> str:
        return f"{self.url}/m/{member}/v1"

    def script(self, member: str, **behaviour: Any) -> None:
        httpx.post(f"{self.url}/_script/{member}", json=behaviour).raise_for_status()

    def calls(self, member: str) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_calls/{member}").json()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_reset").raise_for_status()


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_upstream.py"), "--port", str(port)])
    try:
        wait_http(f"http://127.0.0.1:{port}/m/x/health", proc)
        yield Upstream(port)
    finally:
        stop(proc)


class Gateway:
    def __init__(self, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.v1 = f"{self.url}/v1"


def start_gateway(config: dict[str, Any], tmp: Path, env: dict[str, str] | None = None,
                  workers: int = 1) -> Gateway:
    """Run `crowd-gateway serve` as a real process on a free port with `config` written to a file."""
    path = tmp / f"config-{free_port()}.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    full_env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", **(env or {})}
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([str(BIN / "crowd-gateway"), "serve", "--config", str(path), "--port", str(port),
                             "--workers", str(workers)], env=full_env)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    return Gateway(port, proc)


@pytest.fixture(scope="session")
def gateway_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    started: list[Gateway] = []
    tmp = tmp_path_factory.mktemp("gateways")

    def factory(config: dict[str, Any], env: dict[str, str] | None = None, workers: int = 1) -> Gateway:
        gw = start_gateway(config, tmp, env, workers)
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        stop(gw.proc)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free port, started for this test session (deploy/system.sh installs it)."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("redis-server did not start (is it installed? deploy/system.sh installs it)")
        time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)
