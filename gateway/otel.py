"""OpenTelemetry traces (the `otel` extra), imported only when tracing is on (gateway/tracing.py).

Spans: one per request (FastAPI's own server span for every route, the completion routes included, which then
go through FastAPI instead of gateway/server/hotpath.py; a batch line's span for lines run by the batch worker), and
under it one per member vote, `member <name>`, with the member, outcome (ok, cancelled, invalid_answer, or the
failed call's kind: timeout, connection, http, malformed, circuit_open), tokens, cost and whether the vote came
from the response cache. Each call to a member carries the W3C `traceparent` of its span (the global
propagator, OTEL_PROPAGATORS), so a vLLM server started with `--otlp-traces-endpoint` joins the trace.
The exporter is OTLP over HTTP, configured by the standard variables (OTEL_EXPORTER_OTLP_ENDPOINT, ..._HEADERS,
OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_BSP_*), read by the SDK itself.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, StatusCode

from ensembles.votes import Vote
from gateway.config import Member

if TYPE_CHECKING:
    from gateway.completions.protocol import Annotation

SERVICE = "crowd-gateway"
"""service.name unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) names it."""


class Traces:
    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("crowd_gateway")

    @classmethod
    def from_environment(cls) -> Traces:
        """A tracer provider exporting in batches over OTLP/HTTP, all of it configured by OTEL_* variables."""
        named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
        provider = TracerProvider(resource=Resource.create({} if named else {SERVICE_NAME: SERVICE}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider)

    def telemetry(self) -> dict[str, Any]:
        """FastAPI's own telemetry settings: its server span for every request, with this provider."""
        return {"tracing": True, "tracer_provider": self.provider, "metrics": False, "logs": False,
                "operation_spans": False}

    async def vote(self, member: Member, pending: Awaitable[Vote]) -> Vote:
        """`pending` (one member's vote) inside its span; the member's calls carry the span's traceparent."""
        with self.tracer.start_as_current_span(f"member {member.name}", kind=SpanKind.CLIENT,
                                               attributes={"crowd.member": member.name,
                                                           "gen_ai.request.model": member.model},
                                               record_exception=False, set_status_on_exception=False) as span:
            try:
                vote = await pending
            except asyncio.CancelledError:  # the ensemble's deadline passed, or a hedge won
                span.set_attribute("crowd.outcome", "cancelled")
                raise
            _describe(span, vote)
            return vote

    @staticmethod
    def failed(kind: str) -> None:
        """The current member call failed (UpstreamError.kind): the vote's outcome."""
        trace.get_current_span().set_attribute("crowd.outcome", kind)

    @staticmethod
    def headers(headers: Mapping[str, str]) -> dict[str, str]:
        """`headers` plus the current span's context (`traceparent`, and `tracestate`/`baggage` when set)."""
        out = dict(headers)
        propagate.inject(out)
        return out

    @staticmethod
    def annotated(ensemble: str, annotation: Annotation, cost_usd: float) -> None:
        """What the request's span says about the answer (the current span: the request's)."""
        votes = annotation.votes
        trace.get_current_span().set_attributes({
            "crowd.ensemble": ensemble, "crowd.item_id": annotation.item_id, "crowd.label": annotation.label,
            "crowd.confidence": annotation.confidence, "crowd.cost_usd": cost_usd,
            "crowd.votes": len(votes), "crowd.votes_cached": sum(bool(v.get("cached")) for v in votes)})

    @contextmanager
    def batch_line(self, custom_id: str) -> Iterator[Span]:
        """The span of one batch line, the request of a line the batch worker runs."""
        with self.tracer.start_as_current_span("batch line", attributes={"crowd.batch.custom_id": custom_id}) as span:
            yield span

    async def close(self) -> None:
        """Export what is left and stop (the exporter's network call runs off the event loop)."""
        await asyncio.to_thread(self.provider.shutdown)


def _describe(span: Span, vote: Vote) -> None:
    outcome = "ok" if vote.valid else getattr(span, "attributes", {}).get("crowd.outcome") or "invalid_answer"
    span.set_attributes({"crowd.outcome": outcome, "crowd.cached": vote.cached, "crowd.cost_usd": vote.cost_usd,
                         "gen_ai.usage.input_tokens": vote.prompt_tokens,
                         "gen_ai.usage.output_tokens": vote.completion_tokens})
    if vote.valid:
        span.set_attribute("crowd.label", vote.label or "")
    else:
        span.set_status(StatusCode.ERROR, vote.error)
        span.set_attribute("error.type", outcome)
