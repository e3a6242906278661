"""The annotation routes: gold and human labels in, stored annotations, the review queue and refits out.

Thin handlers: the caller's tenant, the body or query parameters checked, then gateway/annotations/service.py.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from gateway.annotations import service
from gateway.annotations.protocol import MAX_BULK, Feedback
from gateway.errors import bad_request, invalid
from gateway.http import authorize, int_param, json_response, read_json
from gateway.state import GatewayState

router = APIRouter()


@router.post("/v1/annotations/feedback")
async def post_feedback(request: Request) -> Response:
    """One label (`{item_id, label, source, ...}`), or many at once (`{"data": [...]}`, up to MAX_BULK):
    a human team's labels of a day go in one request; every line is checked before any is stored."""
    state: GatewayState = request.app.state.gateway
    tenant = authorize(state, request)
    body, _ = await read_json(state, request)
    lines = body.get("data") if set(body) == {"data"} else None
    if lines is not None and (not isinstance(lines, list) or not 1 <= len(lines) <= MAX_BULK):
        raise bad_request(f"data must be a list of 1 to {MAX_BULK} feedback objects", "data")
    try:
        feedback = [Feedback.model_validate(line) for line in (lines if lines is not None else [body])]
    except ValidationError as exc:
        raise invalid(exc) from None
    answers = await service.add_feedback(state, feedback, tenant)
    return json_response({"object": "list", "data": answers} if lines is not None else answers[0])


@router.get("/v1/annotations/params")
async def get_params(request: Request) -> Response:
    """What the last refit published per schema and aggregator: the aggregator `auto` chose, every candidate's
    cross-validated score on every metric (`candidates`), the most-frequent-label `baseline`, the served answer's
    held-out scores, the people's reliability model; and each schema whose refit was skipped, with the reason and
    the setting that decides it."""
    state: GatewayState = request.app.state.gateway
    tenant = authorize(state, request)
    return json_response({"object": "list", "data": service.published_params(state, tenant),
                          "skipped": service.skipped_refits(state, tenant)})


@router.get("/v1/annotations/{item_id}")
async def get_annotation(request: Request, item_id: str) -> Response:
    """The item's votes and its aggregate under the latest published parameters."""
    state: GatewayState = request.app.state.gateway
    return json_response(await service.stored_annotation(state, authorize(state, request), item_id))


@router.get("/v1/review")
async def list_review(request: Request, limit: str = "50", strategy: str = "queue") -> Response:
    """`strategy=queue`: the items flagged for review, oldest first. `strategy=uncertain`: the stored items
    without gold where one human or gold label would help most (service.most_uncertain)."""
    state: GatewayState = request.app.state.gateway
    tenant = authorize(state, request)
    count = int_param(limit, "limit", 1, 1000)
    if strategy == "uncertain":
        entries = await service.most_uncertain(state, tenant, count)
        return json_response({"object": "list", "data": entries, "total": len(entries)})
    if strategy != "queue":
        raise bad_request("strategy must be 'queue' or 'uncertain'", "strategy")
    entries, total = await service.review_queue(state, tenant, count)
    return json_response({"object": "list", "data": entries, "total": total})


@router.post("/v1/annotations/refit")
async def refit_now(request: Request) -> Response:
    """Refit every schema now (instead of waiting for N items or T seconds); returns the new versions."""
    state: GatewayState = request.app.state.gateway
    return json_response(await service.refit(state, authorize(state, request)))
