"""Unit-tier fixtures: the module's gateway is the app in this process (httpx.ASGITransport, lifespan run),
not a `crowd-gateway serve` process; its calls to members still reach the fake upstream on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Upstream
from tests.inprocess import InProcessGateway


@pytest.fixture(scope="module")
def gateway(request: pytest.FixtureRequest, upstream: Upstream) -> Iterator[InProcessGateway]:
    """The app for the test module's `gateway_config(upstream)`, started for the module."""
    app = InProcessGateway(request.module.gateway_config(upstream))
    try:
        yield app
    finally:
        app.close()
