"""Route handlers of the wire contract: completions (ensemble or passthrough), models, health, metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from redis.exceptions import RedisError
from starlette.responses import Response
from starlette.routing import Route

from gateway import metrics
from gateway.annotate import Outcome
from gateway.errors import APIError
from gateway.passthrough import proxy, proxy_stream
from gateway.responses import annotation_block, completion_body, usage_block
from gateway.schemas import validate_body
from gateway.state import GatewayState
from gateway.store.votes import ItemRecord
from gateway.task import AnnotationTask, Kind, build_task

router = APIRouter()
log = logging.getLogger("crowd_gateway")

_OUTCOMES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 413: "bad_request", 503: "unavailable"}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def authorize(state: GatewayState, request: Request) -> None:
    if not state.api_keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or key.strip() not in state.api_keys:
        raise APIError(401, "missing or invalid API key: send Authorization: Bearer <key>", code="invalid_api_key")


async def read_json(state: GatewayState, request: Request) -> tuple[dict[str, Any], bytes]:
    """The body as (dict, raw bytes), refusing oversized or malformed ones before any work."""
    limit = state.config.gateway.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                       code="request_too_large")
    if declared and declared.isdigit():
        raw = await request.body()  # the declared size was checked above: read it in one go
    else:  # chunked: count as it arrives
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise APIError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_body")
    return body, raw


async def _complete(request: Request, kind: Kind, path: str) -> Response:
    state: GatewayState = request.app.state.gateway
    try:
        authorize(state, request)
        body, raw = await read_json(state, request)
    except APIError as exc:
        metrics.child(metrics.REQUESTS, "-", _OUTCOMES.get(exc.status, "error")).inc()
        return exc.response()
    return await execute(state, body, raw, kind, path)


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
        metrics.child(metrics.REQUESTS, name, _OUTCOMES.get(exc.status, "error")).inc()
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


async def chat_completions(request: Request) -> Response:
    return await _complete(request, "chat", "/chat/completions")


async def completions(request: Request) -> Response:
    return await _complete(request, "completion", "/completions")


HOT_ROUTES = [Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"])]
"""Plain Starlette routes: the request path skips FastAPI's dependency solving (~50 us a request)."""


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    authorize(state, request)
    created = state.started
    data = [{"id": e.name, "object": "model", "created": created, "owned_by": "crowd-gateway", "kind": "ensemble",
             "members": e.members, "aggregator": e.aggregator} for e in state.config.ensembles]
    data += [{"id": m.name, "object": "model", "created": created, "owned_by": "crowd-gateway", "kind": "member",
              "dialect": m.dialect} for m in state.config.members]
    return json_response({"object": "list", "data": data})


@router.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Ready when every ensemble has at least `quorum` members passing their health check."""
    state: GatewayState = request.app.state.gateway
    names = sorted({n for e in state.config.ensembles for n in e.members} or state.members)
    results = await asyncio.gather(*(state.upstreams.healthy(n) for n in names))
    healthy = {n for n, ok in zip(names, results) if ok}
    ensembles = {e.name: {"healthy": sorted(healthy & set(e.members)), "quorum": e.quorum,
                          "ready": len(healthy & set(e.members)) >= e.quorum} for e in state.config.ensembles}
    ready = all(e["ready"] for e in ensembles.values()) if ensembles else bool(healthy)
    return json_response({"ready": ready, "ensembles": ensembles, "members": {n: n in healthy for n in names}},
                 status=200 if ready else 503)


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    payload, content_type = metrics.exposition()
    return Response(payload, media_type=content_type)
