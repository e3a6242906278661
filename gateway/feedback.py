"""Gold and human labels in, stored annotations and the review queue out.

Human labels join the crowd as members `human:<annotator>` in the next refit, so LLM and human
labels combine; gold labels anchor Dawid-Skene and fit the calibration map. A human label on a
queued item resolves it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from ensembles.aggregators import get_aggregator, pick
from ensembles.calibration import calibrate
from ensembles.extract import fold
from ensembles.votes import Vote
from gateway.errors import APIError, bad_request
from gateway.http import authorize, json_response, read_json
from gateway.protocol import Feedback, invalid
from gateway.state import GatewayState
from gateway.store.votes import ItemRecord
from gateway.task import checked_labels, schema_for_labels
from gateway.tenancy import DEFAULT, owns, scoped, unscoped

router = APIRouter()


async def _record_for(state: GatewayState, fb: Feedback, tenant: str) -> ItemRecord:
    """The tenant's stored item, or a new record when the item has not been annotated yet (needs `task` or `labels`)."""
    item_id = scoped(tenant, fb.item_id)
    found = await state.store.item(item_id)
    if found is not None:
        return found[0]
    if fb.task is not None:
        task = state.config.task(fb.task)
        if task is None:
            raise APIError(400, f"unknown task {fb.task!r}", param="task", code="task_not_found")
        return ItemRecord(item_id, scoped(tenant, task.name), list(task.labels), "", "")
    if fb.labels is not None:
        labels = checked_labels(fb.labels, "labels", state.config.gateway.max_labels,
                                state.config.gateway.max_label_chars)
        return ItemRecord(item_id, scoped(tenant, schema_for_labels(labels)), list(labels), "", "")
    raise APIError(404, f"item {fb.item_id!r} has no stored votes: send `task` or `labels` with its label",
                   param="item_id", code="item_not_found")


@router.post("/v1/annotations/feedback")
async def post_feedback(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    tenant = authorize(state, request)
    body, _ = await read_json(state, request)
    try:
        fb = Feedback.model_validate(body)
    except ValidationError as exc:
        raise invalid(exc) from None
    item = await _record_for(state, fb, tenant)
    canonical = {fold(label): label for label in item.labels}.get(fold(fb.label))
    if canonical is None:
        raise bad_request(f"label {fb.label!r} is not in the item's label set {item.labels}", "label")
    await state.store.add_label(item, canonical, fb.source, fb.annotator)
    resolved = await state.store.resolve_review(item.item_id) if fb.source == "human" else False
    return json_response({"object": "annotation.feedback", "item_id": fb.item_id, "schema": unscoped(tenant, item.schema),
                  "label": canonical, "source": fb.source, "resolved_review": resolved})


@router.get("/v1/annotations/params")
async def get_params(request: Request) -> Response:
    """What the last refit published per schema and aggregator: for `auto`, the chosen aggregator and the
    cross-validated accuracy of every candidate on gold; for all, what the fit saw."""
    state: GatewayState = request.app.state.gateway
    tenant = authorize(state, request)
    data = []
    for (schema, aggregator), published in sorted(state.reliability.params.items()):
        if not owns(tenant, schema):
            continue
        params = published.params
        data.append({"schema": unscoped(tenant, schema), "aggregator": aggregator, "version": published.version,
                     "chosen": params.get("winner", aggregator), "cv_accuracy": params.get("cv_accuracy"),
                     "gold": params.get("gold", (params.get("fitted_on") or {}).get("gold")),
                     "fitted_on": params.get("fitted_on"), "calibrated": "calibration" in params})
    return json_response({"object": "list", "data": data})


@router.get("/v1/annotations/{item_id}")
async def get_annotation(request: Request, item_id: str) -> Response:
    """The item's votes and its aggregate under the latest published parameters."""
    state: GatewayState = request.app.state.gateway
    tenant = authorize(state, request)
    found = await state.store.item(scoped(tenant, item_id))
    if found is None:
        raise APIError(404, f"no stored annotation for item {item_id!r}", param="item_id", code="item_not_found")
    item, raw_votes = found
    ensemble = next((e for e in state.config.ensembles if e.name == item.ensemble), None)
    aggregator = get_aggregator(ensemble.aggregator if ensemble else "majority")
    params = state.reliability.get(item.schema, aggregator.name)
    votes = [Vote.from_wire(v, len(item.labels)) for v in raw_votes]
    gold = (await state.store.gold(item.schema)).get(item.item_id)
    aggregate = None
    if any(v.valid for v in votes):
        dist = aggregator.posterior(votes, item.labels, params)
        best = pick(dist)
        confidence = calibrate((params or {}).get("calibration"), dist[best], sum(v.valid for v in votes))
        aggregate = {"label": item.labels[best], "confidence": round(confidence, 6),
                     "distribution": {label: round(p, 6) for label, p in zip(item.labels, dist)},
                     "aggregator": aggregator.name,
                     "params_version": state.reliability.version_of(item.schema, aggregator.name)}
    shown = {**item.wire(), "item_id": item_id, "schema": unscoped(tenant, item.schema)}
    return json_response({"object": "annotation", **shown, "gold": gold, "votes": raw_votes, "aggregate": aggregate})


@router.get("/v1/review")
async def list_review(request: Request, limit: int = 50) -> Response:
    state: GatewayState = request.app.state.gateway
    tenant = authorize(state, request)
    if not 1 <= limit <= 1000:
        raise bad_request("limit must be between 1 and 1000", "limit")
    entries = [{**e, "item_id": unscoped(tenant, e["item_id"]), "schema": unscoped(tenant, e["schema"])}
               for e in await state.store.reviews(limit, tenant)]
    total = await state.store.review_count() if tenant == DEFAULT else len(await state.store.reviews(10**6, tenant))
    return json_response({"object": "list", "data": entries, "total": total})


@router.post("/v1/annotations/refit")
async def refit_now(request: Request) -> Response:
    """Refit every schema now (instead of waiting for N items or T seconds); returns the new versions."""
    state: GatewayState = request.app.state.gateway
    tenant = authorize(state, request)
    schemas = [s for s in await state.reliability.refit_due(force=True) if owns(tenant, s)]
    versions = {f"{unscoped(tenant, s)}/{a}": state.reliability.version_of(s, a)
                for s in schemas for a in state.reliability.aggregators}
    return json_response({"object": "refit", "refitted": [unscoped(tenant, s) for s in schemas],
                          "versions": versions})
