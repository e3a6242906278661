"""Traces cost nothing unless they are on: the SDK is not imported, the completion routes keep their hot dispatch;
on only by `tracing.enabled` or the standard OTLP endpoint variable; a missing extra is a clear startup error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway import tracing
from gateway.config import ConfigError, TracingSettings

ROOT = Path(__file__).resolve().parents[2]


def test_off_by_default_nothing_of_the_sdk_is_loaded_and_the_hot_routes_stay() -> None:
    """Neither the tracing SDK nor the exporter (redis 8 loads the SDK's metrics part by itself when it is there)."""
    code = ("import sys\n"
            "from gateway.app import create_app\n"
            "from gateway.config import parse_config\n"
            "from gateway.completions.routes import HOT\n"
            "app = create_app(parse_config({'members': [{'name': 'm', 'base_url': 'http://127.0.0.1:9/v1', "
            "'model': 'x'}]}))\n"
            "from gateway import tracing\n"
            "print(app.hot is HOT, tracing.traces, sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk.trace') "
            "or m.startswith('opentelemetry.exporter') or m == 'gateway.otel'))\n")
    env = {"PATH": "/usr/bin:/bin"}  # no OTEL_* variable from the test's own environment
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    assert out.stdout.strip() == "True None []"


@pytest.mark.parametrize(("enabled", "env", "on"), [
    (None, {}, False),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
    (False, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    (True, {}, True),
])
def test_on_by_config_or_by_the_otlp_endpoint_variable(enabled: bool | None, env: dict[str, str], on: bool) -> None:
    assert tracing.wanted(TracingSettings(enabled=enabled), env) is on


def test_wanted_without_the_extra_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gateway.otel", None)  # as if the otel extra were not installed
    with pytest.raises(ConfigError, match=r"the `otel` extra is not installed .*pip install 'crowd-gateway\[otel\]'"):
        tracing.configure(TracingSettings(enabled=True))
    assert tracing.traces is None
    assert tracing.configure(TracingSettings(enabled=False)) is None
