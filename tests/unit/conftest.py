"""Unit-tier fixtures: the fake upstream lives in this process and the module's gateway is the app in this process
(httpx.ASGITransport, lifespan run), its calls to members carried in memory (tests/harness/memory.py): no socket,
no process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import module_config
from tests.harness import InProcessUpstream
from tests.harness.inprocess import InProcessGateway


@pytest.fixture(scope="session")
def upstream() -> InProcessUpstream:
    return InProcessUpstream()


@pytest.fixture(scope="module")
def gateway(request: pytest.FixtureRequest, upstream: InProcessUpstream) -> Iterator[InProcessGateway]:
    """The app for the test module's `gateway_config(upstream)`, started for the module (see tests/conftest.py)."""
    app = InProcessGateway(module_config(request, upstream), connector=upstream.connector)
    try:
        yield app
    finally:
        app.close()
