"""What the annotation routes do, without HTTP: store gold and human labels, read stored items back with their
current answer, rank the review queue, list and run refits. Every call is a tenant's: it sees only its items.

Human labels are stored as votes of `human:<annotator>` and join every answer on their item after the LLM
crowd's posterior (ensembles/humans.py), with a reliability the next refit learns; gold labels anchor the fits
and their calibration. A human label on a queued item resolves it.
"""

from __future__ import annotations

from typing import Any

from ensembles.aggregators import get_aggregator, pick
from gateway.asking.extract import fold
from ensembles.labels import LabelSet
from ensembles.votes import Vote
from gateway.annotations.protocol import Aggregate, Feedback, FeedbackAnswer, Refit, StoredAnnotation
from gateway.errors import APIError, bad_request, named
from gateway.quality import check_gold, current_answer
from gateway.state import GatewayState
from gateway.store.votes import ItemRecord
from gateway.task import checked_labels, schema_for_labels
from gateway.tenancy import DEFAULT, owns, scoped, unscoped

Found = tuple[ItemRecord, list[dict[str, Any]]]
"""A stored item and its votes on the wire."""


async def add_feedback(state: GatewayState, feedback: list[Feedback], tenant: str) -> list[FeedbackAnswer]:
    """Store each label; every one is checked (its item found, its label in the item's set) before any is stored,
    so a bad line stores nothing."""
    checked = [await _checked(state, fb, tenant) for fb in feedback]
    return [await _store(state, fb, found, label, tenant) for fb, (found, label) in zip(feedback, checked)]


async def _record_for(state: GatewayState, fb: Feedback, tenant: str) -> Found:
    """The tenant's stored item and its votes, or a new record without votes when the item has not been annotated
    yet (needs `task` or `labels`)."""
    item_id = scoped(tenant, fb.item_id)
    found = await state.store.item(item_id)
    if found is not None:
        return found
    if fb.task is not None:
        task = state.config.task(fb.task)
        if task is None:
            raise APIError(400, f"unknown task {fb.task!r}", param="task", code="task_not_found")
        return ItemRecord(item_id, scoped(tenant, task.name), list(task.labels), "", ""), []
    if fb.labels is not None:
        labels = LabelSet.adhoc(checked_labels(fb.labels, "labels", state.config.gateway.max_labels,
                                               state.config.gateway.max_label_chars)).canonical
        return ItemRecord(item_id, scoped(tenant, schema_for_labels(labels)), list(labels), "", ""), []
    raise APIError(404, f"item {fb.item_id!r} has no stored votes: send `task` or `labels` with its label",
                   param="item_id", code="item_not_found")


async def _checked(state: GatewayState, fb: Feedback, tenant: str) -> tuple[Found, str]:
    """The item a label is for (with its votes) and the label as its schema stores it (canonical); a 400/404
    names the bad one."""
    found = await _record_for(state, fb, tenant)
    item = found[0]
    canonical = {fold(label): label for label in item.labels}.get(fold(fb.label))
    if canonical is None:
        raise bad_request(f"label {fb.label[:200]!r} is not in the label set of item {fb.item_id!r}: {named(item.labels)}",
                          "label")
    return found, canonical


async def _store(state: GatewayState, fb: Feedback, found: Found, label: str, tenant: str) -> FeedbackAnswer:
    item, raw_votes = found
    if await state.store.add_label(item, label, fb.source, fb.annotator) and raw_votes:
        check_gold(state, item, [Vote.from_wire(v, len(item.labels)) for v in raw_votes], label)
    resolved = await state.store.resolve_review(item.item_id) if fb.source == "human" else False
    return FeedbackAnswer(item_id=fb.item_id, schema=unscoped(tenant, item.schema), label=label, source=fb.source,
                          resolved_review=resolved)


def published_params(state: GatewayState, tenant: str) -> list[dict[str, Any]]:
    """What the last refit published per schema and aggregator (see `GET /v1/annotations/params`)."""
    min_gold = state.config.refit.min_gold_for_calibration
    data = []
    for (schema, aggregator), published in sorted(state.reliability.params.items()):
        if not owns(tenant, schema):
            continue
        params = published.params
        gold = params.get("gold", (params.get("fitted_on") or {}).get("gold"))
        entry = {"schema": unscoped(tenant, schema), "aggregator": aggregator, "version": published.version,
                 "chosen": params.get("winner", aggregator), "metric": params.get("metric", state.config.refit.metric),
                 "candidates": params.get("cv") or {}, "baseline": params.get("baseline"),
                 "held_out": params.get("held_out"), "gold": gold, "fitted_on": params.get("fitted_on"),
                 "calibrated": "crowd_temperature" in params, "people": _people(params.get("humans"))}
        if aggregator == "auto" and not params.get("cv"):
            entry["note"] = (f"{gold} gold items: auto scores its candidates from {min_gold} "
                             f"(refit.min_gold_for_calibration); `weighted` serves until then")
        data.append(entry)
    return data


def _people(humans: dict[str, Any] | None) -> dict[str, Any] | None:
    """The people's reliability model in brief: method, how many people and items, the pooled matrix."""
    if not humans:
        return None
    return {"method": humans["method"], "people": len(humans.get("people") or humans.get("weights") or {}),
            "items": humans.get("items"), "pooled": humans.get("pooled")}


def skipped_refits(state: GatewayState, tenant: str) -> list[dict[str, Any]]:
    """The tenant's schemas whose last refit was skipped, each with its reason and the deciding setting."""
    return [{"schema": unscoped(tenant, schema), **why} for schema, why in sorted(state.reliability.skipped.items())
            if owns(tenant, schema)]


async def stored_annotation(state: GatewayState, tenant: str, item_id: str) -> StoredAnnotation:
    """The item's votes and its aggregate under the latest published parameters; 404 when it is not stored."""
    found = await state.store.item(scoped(tenant, item_id))
    if found is None:
        raise APIError(404, f"no stored annotation for item {item_id!r}", param="item_id", code="item_not_found")
    item, raw_votes = found
    answer = current_answer(state, item, [Vote.from_wire(v, len(item.labels)) for v in raw_votes])
    gold = (await state.store.gold(item.schema)).get(item.item_id)
    aggregate = None if answer is None else Aggregate(
        answer.label, round(answer.confidence, 6),
        {label: round(p, 6) for label, p in zip(item.labels, answer.distribution)}, answer.aggregator,
        answer.params_version)
    return StoredAnnotation(item_id=item_id, schema=unscoped(tenant, item.schema), labels=item.labels, text=item.text,
                            ensemble=item.ensemble, gold=gold, votes=raw_votes, aggregate=aggregate)


async def review_queue(state: GatewayState, tenant: str, count: int) -> tuple[list[dict[str, Any]], int]:
    """The first `count` items flagged for review, oldest first, and how many are queued."""
    entries = [{**e, "item_id": unscoped(tenant, e["item_id"]), "schema": unscoped(tenant, e["schema"])}
               for e in await state.store.reviews(count, tenant)]
    total = await state.store.review_count() if tenant == DEFAULT else len(await state.store.reviews(10**6, tenant))
    return entries, total


async def most_uncertain(state: GatewayState, tenant: str, limit: int) -> list[dict[str, Any]]:
    """The stored items without gold where one human or gold label would help most: smallest margin between the two
    most probable labels under the latest parameters, most disagreeing votes first (CoAnnotating-style)."""
    ranked: list[tuple[float, float, dict[str, Any]]] = []
    ranking = get_aggregator("weighted")  # soft votes under the latest fitted skills: no gold needed to rank
    for schema, labels in (await state.store.schemas()).items():
        if not owns(tenant, schema):
            continue
        gold = await state.store.gold(schema)
        for item, raw in (await state.store.item_votes(schema)).items():
            votes = [Vote.from_wire(v, len(labels)) for v in raw if v.get("label") is not None]
            if item in gold or not votes:
                continue
            dist = ranking.posterior(votes, labels, state.reliability.get(schema, ranking.name))
            top, second = sorted(dist, reverse=True)[:2]
            agreement = max(sum(v.label == label for v in votes) for label in labels) / len(votes)
            ranked.append((top - second, agreement, {
                "item_id": unscoped(tenant, item), "schema": unscoped(tenant, schema), "margin": round(top - second, 6),
                "agreement": round(agreement, 6), "label": labels[pick(dist)], "votes": len(votes)}))
    ranked.sort(key=lambda r: (r[0], r[1]))
    return [entry for *_, entry in ranked[:limit]]


async def refit(state: GatewayState, tenant: str) -> Refit:
    """Refit every schema now; the tenant's refitted schemas with their new versions."""
    schemas = [s for s in await state.reliability.refit_due(force=True) if owns(tenant, s)]
    versions = {f"{unscoped(tenant, s)}/{a}": state.reliability.version_of(s, a)
                for s in schemas for a in state.reliability.aggregators}
    return Refit(refitted=[unscoped(tenant, s) for s in schemas], versions=versions,
                 skipped=skipped_refits(state, tenant))
