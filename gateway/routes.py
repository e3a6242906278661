"""Route handlers of the wire contract: thin wrappers over `serving` (completions), models, health, metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import metrics
from gateway.errors import APIError
from gateway.http import authorize, json_response, read_json
from gateway.serving import OUTCOMES, execute
from gateway.state import GatewayState
from gateway.task import Kind

router = APIRouter()


async def _complete(request: Request, kind: Kind, path: str) -> Response:
    state: GatewayState = request.app.state.gateway
    try:
        tenant = authorize(state, request)
        body, raw = await read_json(state, request)
    except APIError as exc:
        metrics.child(metrics.REQUESTS, "-", OUTCOMES.get(exc.status, "error")).inc()
        return exc.response()
    return await execute(state, body, raw, kind, path, tenant)


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
