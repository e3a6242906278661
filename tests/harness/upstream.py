"""The fake upstream (fake_upstream.py) and its scriptable handle, two ways: `start_upstream` runs it as a process
on 127.0.0.1 (integration tests, bench/: the one place that starts it), `InProcessUpstream` holds it in this
process, reached by the gateway through `connector()` without a socket (the unit tier). Both handles script members
and read their calls the same way (`script`, `calls`, `reset`, `base_url`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.harness.fake_upstream import Members
from tests.harness.memory import HOST, InMemoryConnector
from tests.harness.processes import free_port, spawn, stop, wait_http


class Upstream:
    """Handle on a fake upstream process: script members, read their calls (over one kept-alive connection)."""

    def __init__(self, port: int, proc: subprocess.Popen[Any] | None = None) -> None:
        self.port = port
        self.proc = proc
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

    def close(self) -> None:
        """Stop the process (when this handle started it)."""
        self.http.close()
        if self.proc is not None:
            stop(self.proc)

    def __enter__(self) -> Upstream:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def start_upstream(cpu: int | None = None, output: Path | None = None) -> Upstream:
    """The fake upstream as a process on a free port of 127.0.0.1 (on CPU `cpu`, its output to `output`)."""
    port = free_port()
    proc = spawn([sys.executable, str(Path(__file__).with_name("fake_upstream.py")), "--port", str(port)], cpu=cpu,
                 output=output)
    try:
        wait_http(f"http://127.0.0.1:{port}/m/x/health", proc)
    except Exception:
        stop(proc)
        raise
    return Upstream(port, proc)


class InProcessUpstream:
    """The fake upstream in this process: the same scripts and counts, no socket. A gateway built with
    `connector=upstream.connector` reaches it at `http://fake-upstream.test/m/{member}/v1`."""

    url = f"http://{HOST}"

    def __init__(self) -> None:
        self.members = Members()

    def connector(self) -> InMemoryConnector:
        return InMemoryConnector(self.members)

    def base_url(self, member: str) -> str:
        return f"{self.url}/m/{member}/v1"

    def script(self, member: str, **behaviour: Any) -> None:
        self.members.set_script(member, behaviour)

    def calls(self, member: str) -> dict[str, Any]:
        return self.members.report(member)

    def reset(self) -> None:
        self.members.__init__()  # type: ignore[misc]


AnyUpstream = Upstream | InProcessUpstream


def member(up: AnyUpstream, name: str, *, price: tuple[float, float] | None = (1.0, 2.0),
           **extra: Any) -> dict[str, Any]:
    """One pool member served by the fake upstream: upstream model id `<name>-model`, vLLM dialect, 5 s timeout,
    no retries, and `price` in USD per million (input, output) tokens (None: no price); `extra` overrides."""
    fields: dict[str, Any] = {"name": name, "base_url": up.base_url(name), "model": f"{name}-model",
                              "dialect": "vllm", "timeout_s": 5, "retries": 0}
    if price is not None:
        fields["price"] = {"input_usd_per_mtok": price[0], "output_usd_per_mtok": price[1]}
    return {**fields, **extra}
