"""Shared by every tier: the scriptable fake upstream (one process per session), the one `member()` helper,
gateway processes on 127.0.0.1 (integration and real tiers), the `gateway`/`client` fixtures, a manual clock.

A test module that uses the `gateway` fixture defines `gateway_config(upstream) -> dict` (the YAML config as a
dict), and may define `script_upstream(upstream)`, run before its gateway starts and again, after the upstream is
reset, before each test that takes `client`. tests/unit/conftest.py serves that config in-process (no port);
elsewhere the module gets a `crowd-gateway serve` process (`gateway_workers = N` for N workers), or with
`gateway_in_this_process = True` the app in this process served on 127.0.0.1 (for CLI runs that need a URL)."""

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
from openai import OpenAI

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not fetch its price map


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


def redis_argv(port: int, workdir: Path) -> list[str]:
    """A redis-server on 127.0.0.1 without persistence (deploy/system.sh installs it)."""
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir)]


def wait_redis(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 10.0) -> None:
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


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Upstream:
    """Handle on the fake upstream server: script members, read their calls (over one kept-alive connection)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def base_url(self, member: str) -> str:
        return f"{self.url}/m/{member}/v1"

    def script(self, member: str, **behaviour: Any) -> None:
        self.http.post(f"/_script/{member}", json=behaviour).raise_for_status()

    def calls(self, member: str) -> dict[str, Any]:
        return self.http.get(f"/_calls/{member}").json()

    def reset(self) -> None:
        self.http.post("/_reset").raise_for_status()


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_upstream.py"), "--port", str(port)])
    try:
        wait_http(f"http://127.0.0.1:{port}/m/x/health", proc)
        handle = Upstream(port)
        yield handle
        handle.http.close()
    finally:
        stop(proc)


def member(up: Upstream, name: str, *, price: tuple[float, float] | None = (1.0, 2.0), **extra: Any) -> dict[str, Any]:
    """One pool member served by the fake upstream: upstream model id `<name>-model`, vLLM dialect, 5 s timeout,
    no retries, and `price` in USD per million (input, output) tokens (None: no price); `extra` overrides."""
    fields: dict[str, Any] = {"name": name, "base_url": up.base_url(name), "model": f"{name}-model",
                              "dialect": "vllm", "timeout_s": 5, "retries": 0}
    if price is not None:
        fields["price"] = {"input_usd_per_mtok": price[0], "output_usd_per_mtok": price[1]}
    return {**fields, **extra}


class Clock:
    """A monotonic clock the test advances by hand (breakers, queue-depth caches, leases take a `clock`)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Gateway:
    """A `crowd-gateway serve` process on 127.0.0.1."""

    def __init__(self, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.v1 = f"{self.url}/v1"
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def openai(self, api_key: str = "unused") -> OpenAI:
        return OpenAI(base_url=self.v1, api_key=api_key, max_retries=0)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.post(path, **kwargs)


def without_cache(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with the response cache off unless it sets `cache` itself: a test scripts the upstream anew and
    asks the same prompts again, and wants its members asked (the cache's own tests turn it on)."""
    return {"cache": {"enabled": False}, **config}


def start_gateway(config: dict[str, Any], tmp: Path, env: dict[str, str] | None = None,
                  workers: int = 1, output: Path | None = None) -> Gateway:
    """Run `crowd-gateway serve` as a real process on a free port with `config` written to a file (the response
    cache off unless it says otherwise); its stdout and stderr go to `output` when given (a test that reads the
    log), else to the test's own."""
    path = tmp / f"config-{free_port()}.yaml"
    path.write_text(yaml.safe_dump(without_cache(config)))
    port = free_port()
    full_env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", **(env or {})}
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = output.open("ab") if output else None
    proc = subprocess.Popen([str(BIN / "crowd-gateway"), "serve", "--config", str(path), "--port", str(port),
                             "--workers", str(workers)], env=full_env, stdout=log,
                            stderr=subprocess.STDOUT if log else None)
    if log:
        log.close()  # the process has its own copy
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    return Gateway(port, proc)


@pytest.fixture(scope="session")
def gateway_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    started: list[Gateway] = []
    tmp = tmp_path_factory.mktemp("gateways")

    def factory(config: dict[str, Any], env: dict[str, str] | None = None, workers: int = 1,
                output: Path | None = None) -> Gateway:
        gw = start_gateway(config, tmp, env, workers, output)
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        gw.http.close()
        stop(gw.proc)


@pytest.fixture(scope="module")
def gateway(request: pytest.FixtureRequest, upstream: Upstream, gateway_factory: Any) -> Iterator[Any]:
    """The module's gateway, serving `gateway_config(upstream)` of the test module: a process with
    `gateway_workers` uvicorn workers (default 1), or, when the module sets `gateway_in_this_process = True`,
    the app in this process served over HTTP on 127.0.0.1 (tests/inprocess.py)."""
    config = module_config(request, upstream)
    if not getattr(request.module, "gateway_in_this_process", False):
        yield gateway_factory(config, workers=getattr(request.module, "gateway_workers", 1))
        return
    from tests.inprocess import InProcessGateway  # here, so that `pytest tests/deploy` never imports the app

    served = InProcessGateway(config, port=free_port())
    try:
        yield served
    finally:
        served.close()


def script_members(request: pytest.FixtureRequest, upstream: Upstream) -> None:
    """Run the test module's `script_upstream(upstream)`, if it has one."""
    if script := getattr(request.module, "script_upstream", None):
        script(upstream)


def module_config(request: pytest.FixtureRequest, upstream: Upstream) -> dict[str, Any]:
    """The test module's gateway config, after its members are scripted (the response cache off unless it says
    otherwise: `without_cache`)."""
    script_members(request, upstream)
    return without_cache(request.module.gateway_config(upstream))


@pytest.fixture
def client(request: pytest.FixtureRequest, gateway: Any, upstream: Upstream) -> OpenAI:
    """The official client on the module's gateway, after the upstream is reset (and re-scripted by the module's
    `script_upstream(upstream)` when it has one)."""
    upstream.reset()
    script_members(request, upstream)
    return gateway.openai()
