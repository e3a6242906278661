"""Integration-tier fixtures: a real redis-server for this test session."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import free_port, redis_argv, stop, wait_redis


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free port, started for this test session (deploy/system.sh installs it)."""
    port = free_port()
    proc = subprocess.Popen(redis_argv(port, tmp_path_factory.mktemp("redis")), stdout=subprocess.DEVNULL)
    try:
        wait_redis(port, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)
