"""Fixtures of every tier, thin ones over the harness (tests/harness/): the fake upstream (one process per session),
gateway processes on 127.0.0.1 (integration and real tiers), the `gateway`/`client` fixtures.

A test module that uses the `gateway` fixture defines `gateway_config(upstream) -> dict` (the YAML config as a
dict), and may define `script_upstream(upstream)`, run before its gateway starts and again, after the upstream is
reset, before each test that takes `client`. tests/unit/conftest.py serves that config in-process, its members
reached in memory (no socket); elsewhere the module gets a `crowd-gateway serve` process (`gateway_workers = N` for N
workers), or with `gateway_in_this_process = True` the app in this process served on 127.0.0.1 (for CLI runs that
need a URL)."""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: the fits in tests are small, and BLAS
# threads spinning on them cost several times the work on this shared 2-core machine (a stacking fit: 19 s vs 6 s)

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from openai import OpenAI  # noqa: E402

from tests.harness import AnyUpstream, Gateway, Upstream, free_port, start_gateway, start_upstream, without_cache  # noqa: E402


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    with start_upstream() as handle:
        yield handle


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
        gw.close()


@pytest.fixture(scope="module")
def gateway(request: pytest.FixtureRequest, upstream: Upstream, gateway_factory: Any) -> Iterator[Any]:
    """The module's gateway, serving `gateway_config(upstream)` of the test module: a process with
    `gateway_workers` uvicorn workers (default 1), or, when the module sets `gateway_in_this_process = True`,
    the app in this process served over HTTP on 127.0.0.1 (tests/harness/inprocess.py)."""
    config = module_config(request, upstream)
    if not getattr(request.module, "gateway_in_this_process", False):
        yield gateway_factory(config, workers=getattr(request.module, "gateway_workers", 1))
        return
    from tests.harness.inprocess import InProcessGateway  # here, so that `pytest tests/deploy` never imports the app

    served = InProcessGateway(config, port=free_port())
    try:
        yield served
    finally:
        served.close()


def script_members(request: pytest.FixtureRequest, upstream: AnyUpstream) -> None:
    """Run the test module's `script_upstream(upstream)`, if it has one."""
    if script := getattr(request.module, "script_upstream", None):
        script(upstream)


def module_config(request: pytest.FixtureRequest, upstream: AnyUpstream) -> dict[str, Any]:
    """The test module's gateway config, after its members are scripted (the response cache off unless it says
    otherwise: `without_cache`)."""
    script_members(request, upstream)
    return without_cache(request.module.gateway_config(upstream))


@pytest.fixture
def client(request: pytest.FixtureRequest, gateway: Any, upstream: AnyUpstream) -> OpenAI:
    """The official client on the module's gateway, after the upstream is reset (and re-scripted by the module's
    `script_upstream(upstream)` when it has one)."""
    upstream.reset()
    script_members(request, upstream)
    return gateway.openai()
