"""Gateway processes: the one place that runs `crowd-gateway serve` (tests of every tier and bench/), with what the
benches need (CPU pinning, workers, environment, log output, a config file of their own)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml
from openai import OpenAI

from tests.harness.processes import BIN, free_port, spawn, stop, wait_http

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not fetch its price map


def serve_argv(config: Path, *args: str) -> list[str]:
    """`crowd-gateway serve` for the config file `config`, with more arguments (`--port`, `--workers`, ...)."""
    return [str(BIN / "crowd-gateway"), "serve", "--config", str(config), *args]


def run_serve(config: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`crowd-gateway serve` run to its end (a config it refuses), its output captured as text."""
    return subprocess.run(serve_argv(config), capture_output=True, text=True, timeout=timeout)


class Served:
    """A gateway the tests send requests to, in a process or in this one, through its `http` client."""

    http: httpx.Client

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.post(path, **kwargs)


class Gateway(Served):
    """A `crowd-gateway serve` process on 127.0.0.1."""

    def __init__(self, port: int, proc: subprocess.Popen[Any]) -> None:
        self.port = port
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.v1 = f"{self.url}/v1"
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def openai(self, api_key: str = "unused") -> OpenAI:
        return OpenAI(base_url=self.v1, api_key=api_key, max_retries=0)

    def close(self) -> None:
        self.http.close()
        stop(self.proc)


def without_cache(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with the response cache off unless it sets `cache` itself: a test scripts the upstream anew and
    asks the same prompts again, and wants its members asked (the cache's own tests turn it on)."""
    return {"cache": {"enabled": False}, **config}


def start_gateway(config: dict[str, Any] | Path, tmp: Path, env: dict[str, str | None] | None = None, workers: int = 1,
                  output: Path | None = None, *, cpu: int | None = None, args: tuple[str, ...] = (),
                  pipes: bool = False, timeout: float = 20.0) -> Gateway:
    """Run `crowd-gateway serve` on a free port with `config` written to a file in `tmp` (the response cache off
    unless it says otherwise), or with the config file `config` as it is. `env` is added to this process's
    environment; `cpu` pins it with taskset; its stdout and stderr go to `output` when given, to pipes (text) with
    `pipes`, else to this process's own; `args` are more `serve` arguments."""
    if isinstance(config, Path):
        path = config
    else:
        path = tmp / f"config-{free_port()}.yaml"
        path.write_text(yaml.safe_dump(without_cache(config)))
    port = free_port()
    full_env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PROMETHEUS_MULTIPROC_DIR": None, **(env or {})}
    popen: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True} if pipes else {}
    proc = spawn(serve_argv(path, "--port", str(port), "--workers", str(workers), *args), cpu=cpu, env=full_env,
                 output=output, **popen)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, timeout)
    except Exception:
        stop(proc)
        raise
    return Gateway(port, proc)
