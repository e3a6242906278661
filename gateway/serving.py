"""The one service behind the completion routes and the batch worker: answer one completion body.

An ensemble's body becomes an annotation task, the annotator runs it, the votes are stored and
the answer is built; a member's body is proxied. Whatever goes wrong is an `APIError` response.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.exceptions import RedisError
from starlette.responses import Response

from gateway import metrics
from gateway.annotate import Outcome
from gateway.errors import APIError
from gateway.http import json_response
from gateway.passthrough import proxy, proxy_stream
from gateway.protocol import annotation_block, completion_body, usage_block, validate_body
from gateway.state import GatewayState
from gateway.store.votes import ItemRecord
from gateway.task import AnnotationTask, Kind, build_task

log = logging.getLogger("crowd_gateway")

OUTCOMES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 413: "bad_request", 503: "unavailable"}
"""HTTP status -> the `outcome` label of crowd_gateway_requests_total."""


async def execute(state: GatewayState, body: dict[str, Any], raw: bytes | None, kind: Kind, path: str) -> Response:
    """Answer one completion body (from HTTP or a batch line): ensemble, passthrough or an error response."""
    started = time.perf_counter()
    model = body.get("model")
    name = model if isinstance(model, str) and (model in state.annotators or model in state.members) else "-"
    try:
        validate_body(body, kind)
        if model in state.annotators:
            response, waited = await _annotate(state, model, body, kind)
            route = "ensemble"
        elif model in state.members:
            member = state.members[model]
            if body.get("stream"):
                response = await proxy_stream(state.upstreams, member, path, body)
                metrics.child(metrics.REQUESTS, name, "ok" if response.status_code < 400 else "error").inc()
                return response
            response = await proxy(state.upstreams, member, path, body, raw)
            waited, route = response.upstream_wait_s, "passthrough"  # type: ignore[attr-defined]
        else:
            raise APIError(404, f"the model {model!r} does not exist: it names no ensemble or member of this "
                                f"gateway (GET /v1/models lists them)", param="model", code="model_not_found")
    except APIError as exc:
        metrics.child(metrics.REQUESTS, name, OUTCOMES.get(exc.status, "error")).inc()
        return exc.response()
    elapsed = time.perf_counter() - started
    metrics.child(metrics.REQUESTS, name, "ok" if response.status_code < 400 else "error").inc()
    metrics.child(metrics.REQUEST_DURATION, name).observe(elapsed)
    metrics.child(metrics.OVERHEAD, route).observe(max(elapsed - waited, 0.0))
    return response


async def _annotate(state: GatewayState, model: str, body: dict[str, Any], kind: Kind) -> tuple[Response, float]:
    if body.get("stream"):
        raise APIError(400, "stream: true is supported when `model` names a member (passthrough), not for an "
                            "ensemble, whose answer exists only once the votes are in", param="stream",
                       code="unsupported_value")
    annotator = state.annotators[model]
    task = build_task(body, kind, state.config)
    aggregator = annotator.aggregator.name
    outcome = await annotator.run(task, state.reliability.get(task.schema, aggregator))
    annotation = annotation_block(outcome, task, aggregator, state.reliability.version_of(task.schema, aggregator))
    usage = usage_block(outcome)
    await remember(state, model, task, outcome, annotation)
    metrics.child(metrics.CONFIDENCE, model).observe(annotation["confidence"])
    metrics.child(metrics.AGREEMENT, model).observe(outcome.agreement)
    headers = {"x-crowd-confidence": f"{annotation['confidence']:.6f}", "x-crowd-cost-usd": f"{usage['cost_usd']:.10f}",
               "x-crowd-stop-reason": outcome.stop_reason}
    return json_response(completion_body(model, task, annotation, usage), headers=headers), outcome.upstream_wait_s


async def remember(state: GatewayState, ensemble: str, task: AnnotationTask, outcome: Outcome,
                   annotation: dict[str, Any]) -> None:
    """Keep the votes (for refits) and queue the item for review when flagged.

    A store outage costs the record, not the answer: the label is still returned and the failure logged.
    """
    item = ItemRecord(item_id=task.item_id, schema=task.schema, labels=list(task.labels), text=task.text,
                      ensemble=ensemble)
    try:
        await state.store.record(item, [v.wire() for v in outcome.votes])
        if outcome.needs_review:
            await state.store.enqueue_review({**item.wire(), "label": outcome.label,
                                              "confidence": annotation["confidence"],
                                              "distribution": annotation["distribution"], "queued_at": time.time()})
    except (OSError, RedisError):
        log.exception("vote store unavailable: votes of item %s not recorded", task.item_id)
