"""The app's own routes: models, the tenant's usage, health, readiness, metrics (the features' routes are in
their folders: gateway/completions/, gateway/annotations/, gateway/batches/)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway import metrics
from gateway.budgets import usage
from gateway.errors import APIError
from gateway.http import authorize, json_response
from gateway.state import GatewayState
from gateway.store.health import STORE_ERRORS

router = APIRouter()


def _models(state: GatewayState) -> list[dict[str, Any]]:
    created = state.started
    data = [{"id": e.name, "object": "model", "created": created, "owned_by": "crowd-gateway", "kind": "ensemble",
             "members": e.members, "aggregator": e.aggregator} for e in state.config.ensembles]
    data += [{"id": m.name, "object": "model", "created": created, "owned_by": "crowd-gateway", "kind": "member",
              "dialect": m.dialect} for m in state.config.members]
    return data


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    authorize(state, request)
    return json_response({"object": "list", "data": _models(state)})


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    authorize(state, request)
    for model in _models(state):
        if model["id"] == model_id:
            return json_response(model)
    raise APIError(404, f"the model {model_id!r} does not exist: it names no ensemble or member of this gateway",
                   param="model", code="model_not_found")


@router.get("/v1/usage")
async def tenant_usage(request: Request) -> Response:
    """The caller's own tenant: requests, tokens and spend this day and month, and its limits (gateway/budgets.py)."""
    state: GatewayState = request.app.state.gateway
    return json_response(await usage(state, authorize(state, request)))


@router.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Ready (200) when this process and its store are usable; 503 when the store is not.

    Pool health (members passing their health check, each ensemble against its quorum) is in the body and in
    the gauges crowd_gateway_ensemble_ready and crowd_gateway_member_healthy, but never fails the probe: an
    ensemble short of members must not take every pod out of the Service, and with it passthrough, batches
    and feedback; a request to that ensemble answers 503 quorum_not_met by itself.
    """
    state: GatewayState = request.app.state.gateway
    names = sorted(state.members)  # passthrough-only members too: clients call them by name
    store_error, results = await asyncio.gather(_store_error(state), asyncio.gather(
        *(state.upstreams.healthy(n) for n in names)))
    healthy = {n for n, ok in zip(names, results) if ok}
    for n in names:
        metrics.child(metrics.MEMBER_HEALTHY, n).set(int(n in healthy))
    ensembles = {e.name: {"healthy": sorted(healthy & set(e.members)), "quorum": e.quorum,
                          "ready": len(healthy & set(e.members)) >= e.quorum} for e in state.config.ensembles}
    for name, ensemble in ensembles.items():
        metrics.child(metrics.ENSEMBLE_READY, name).set(int(ensemble["ready"]))
    problems = {n: problem for n in names if (problem := state.upstreams.problem(n)) is not None}
    body = {"ready": store_error is None, "store": store_error or "ok", "ensembles": ensembles,
            "members": {n: n in healthy for n in names}, "problems": problems}
    return json_response(body, status=200 if store_error is None else 503)


async def _store_error(state: GatewayState, timeout_s: float = 2.0) -> str | None:
    """None when the store answers a ping in time, else what went wrong: during a known outage at once."""
    if not state.health.up:
        return state.health.error
    try:
        await asyncio.wait_for(state.store.ping(), timeout_s)
    except (TimeoutError, *STORE_ERRORS) as exc:
        state.health.failed("readiness", exc)
        return f"{type(exc).__name__}: {exc}"
    return None


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    payload, content_type = metrics.exposition()
    return Response(payload, media_type=content_type)
