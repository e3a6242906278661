"""Unit-tier fixtures: the module's gateway is the app in this process (httpx.ASGITransport, lifespan run),
not a `crowd-gateway serve` process; its calls to members still reach the fake upstream on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Upstream, module_config
from tests.inprocess import InProcessGateway


@pytest.fixture(scope="module")
def gateway(request: pytest.FixtureRequest, upstream: Upstream) -> Iterator[InProcessGateway]:
    """The app for the test module's `gateway_config(upstream)`, started for the module (see tests/conftest.py)."""
    app = InProcessGateway(module_config(request, upstream))
    try:
        yield app
    finally:
        app.close()
