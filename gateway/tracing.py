"""Whether this process traces: the one switch the request path reads, and how it is turned on.

Why a module of its own: traces are optional (the `otel` extra) and off unless configured, and then the request
path must not pay for them: nothing of OpenTelemetry's SDK is imported, and each traced place costs one
`traces is None` check. When on, gateway/otel.py holds what runs: spans, the exporter, the `traceparent` sent
to members. On when `tracing.enabled` is true, or left unset while the standard OTLP endpoint variable is set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.config import ConfigError, TracingSettings

if TYPE_CHECKING:
    from gateway.otel import Traces

traces: Traces | None = None
"""This process's tracing; None while it is off."""

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def wanted(settings: TracingSettings, env: Mapping[str, str] = os.environ) -> bool:
    """`tracing.enabled` when set; else on when an OTLP endpoint is in the environment and the SDK not disabled."""
    if settings.enabled is not None:
        return settings.enabled
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(env.get(name) for name in ENDPOINT_VARIABLES)


def configure(settings: TracingSettings) -> Traces | None:
    """Turn tracing on or off for this process; a ConfigError when it is wanted but the extra is missing."""
    global traces
    if not wanted(settings):
        traces = None
        return None
    try:
        from gateway.otel import Traces
    except ImportError as exc:
        raise ConfigError(f"tracing is on (tracing.enabled, or ${ENDPOINT_VARIABLES[0]} is set) but the `otel` "
                          f"extra is not installed ({exc.name} is missing): pip install 'crowd-gateway[otel]', or "
                          f"set tracing.enabled: false") from None
    traces = Traces.from_environment()
    return traces
