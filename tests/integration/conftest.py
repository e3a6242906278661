"""Integration-tier fixtures: a real redis-server for this test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import start_redis, stop


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free port, started for this test session (deploy/system.sh installs it)."""
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        stop(proc)
