"""The one service behind the completion routes and the batch worker: answer one completion body.

An ensemble's body becomes an annotation task, the annotator runs it, the votes are stored and
the answer is built; a member's body is proxied. The answer is data (gateway/answer.py), which the routes
render as HTTP and the batch worker as an output line; whatever goes wrong is an `APIError`'s answer.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from ensembles.votes import HUMAN_PREFIX, Vote
from gateway import metrics, tracing
from gateway.annotate import Outcome
from gateway.answer import Answer
from gateway.completions.passthrough import proxy, proxy_stream
from gateway.completions.protocol import ensemble_answer, ensemble_reply, refuse_unhonoured, validate_body
from gateway.errors import APIError
from gateway.quality import count_votes
from gateway.state import GatewayState
from gateway.store.health import STORE_ERRORS
from gateway.store.votes import ItemRecord
from gateway.task import AnnotationTask, Kind, build_task
from gateway.tenancy import DEFAULT, scoped


log = logging.getLogger("crowd_gateway")

OUTCOMES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 413: "bad_request", 429: "overloaded",
            503: "unavailable"}
"""HTTP status -> the `outcome` label of crowd_gateway_requests_total."""


async def execute(state: GatewayState, body: dict[str, Any], raw: bytes | None, kind: Kind, path: str,
                  tenant: str = DEFAULT, job: bool = False,
                  stream_spent: Callable[[int, float], None] | None = None) -> Answer:
    """Answer one completion body (from HTTP or a batch line): ensemble, passthrough or an error.

    `tenant` owns what the answer stores (votes, review entries): see gateway/tenancy.py. `job`: a batch
    line, whose member calls may be grouped with other items' (gateway/upstream/grouping.py). `stream_spent`
    hears a passthrough stream's tokens and cost when it ends (gateway/budgets.py); any other answer carries
    what it spent (`Answer.spent`).
    """
    started = time.perf_counter()
    model = body.get("model")
    name = model if isinstance(model, str) and (model in state.annotators or model in state.members) else "-"
    try:
        validate_body(body, kind)
        if model in state.annotators:
            with state.admission.admit(state.annotators[model].ensemble, tenant, by_capacity=not job):
                answer = await _annotate(state, model, body, kind, tenant, job)
            route = "ensemble"
        elif model in state.members:
            member = state.members[model]
            if body.get("stream"):
                def ended(ok: bool, tokens: int, cost: float) -> None:  # when the stream ends: a cut one is an error
                    metrics.child(metrics.REQUESTS, name, "ok" if ok else "error").inc()
                    metrics.child(metrics.REQUEST_DURATION, name).observe(time.perf_counter() - started)
                    if stream_spent is not None:
                        stream_spent(tokens, cost)

                return await proxy_stream(state.upstreams, member, path, body, ended)
            answer = await proxy(state.upstreams, member, path, body, raw)
            route = "passthrough"
        else:
            raise APIError(404, f"the model {model!r} does not exist: it names no ensemble or member of this "
                                f"gateway (GET /v1/models lists them)", param="model", code="model_not_found")
    except APIError as exc:
        metrics.child(metrics.REQUESTS, name, OUTCOMES.get(exc.status, "error")).inc()
        if exc.code == "quorum_not_met":
            exc.headers = {**(exc.headers or {}), **_retry_hint(state, model)}
        return Answer.error(exc)
    elapsed = time.perf_counter() - started
    metrics.child(metrics.REQUESTS, name, "ok" if answer.status < 400 else "error").inc()
    metrics.child(metrics.REQUEST_DURATION, name).observe(elapsed)
    metrics.child(metrics.OVERHEAD, route).observe(max(elapsed - answer.upstream_wait_s, 0.0))
    return answer


def _retry_hint(state: GatewayState, ensemble: str) -> dict[str, str]:
    """How the SDKs should treat a missed quorum: wait for an open breaker to half-open (Retry-After), else
    do not retry (`x-should-retry: false`, which the official SDKs honour): the gateway already retried each
    member within the deadline, and a client retry repeats the whole fan-out to get the same votes."""
    members = state.annotators[ensemble].ensemble.members
    if any(not state.upstreams.usable(name) for name in members):
        return {"Retry-After": str(math.ceil(state.config.gateway.breaker.reset_after_s))}
    return {"x-should-retry": "false"}


async def _annotate(state: GatewayState, model: str, body: dict[str, Any], kind: Kind, tenant: str,
                    job: bool) -> Answer:
    """Annotate; with `stream: true` the finished answer goes out as SSE chunks (errors stay JSON: nothing
    is sent before the votes are in)."""
    refuse_unhonoured(body)
    annotator = state.annotators[model]
    task = build_task(body, kind, state.config, job, tenant)
    aggregator = annotator.aggregator.name
    schema = scoped(tenant, task.schema)
    params = state.reliability.get(schema, aggregator)
    people = await stored_people(state, task, tenant) if params and "humans" in params else []
    outcome = await annotator.run(task, params, people)
    votes = [vote.wire() for vote in outcome.votes]
    stored = await remember(state, model, task, outcome, votes, tenant)
    reply = ensemble_reply(model, task, outcome, aggregator, state.reliability.version_of(schema, aggregator), votes,
                           stored)
    if tracing.traces is not None:
        tracing.traces.annotated(model, reply.annotation, reply.usage.cost_usd)
    metrics.child(metrics.CONFIDENCE, model).observe(reply.annotation.confidence)
    metrics.child(metrics.AGREEMENT, model).observe(reply.annotation.agreement)
    count_votes(model, outcome.label, outcome.votes, outcome.needs_review)
    answer = ensemble_answer(reply, body)
    answer.upstream_wait_s = outcome.upstream_wait_s
    return answer


async def stored_people(state: GatewayState, task: AnnotationTask, tenant: str) -> list[Vote]:
    """The people's labels already stored for the item (asked only where the schema has people: its published
    parameters say so); a store that cannot answer costs them, not the answer."""
    try:
        found = await state.store.item(scoped(tenant, task.item_id))
    except STORE_ERRORS as exc:
        log.warning("people's labels of item %s not read (%s: %s); answering without them", task.item_id,
                    type(exc).__name__, exc)
        return []
    if found is None:
        return []
    return [Vote(member=v["member"], label=v["label"], raw=v.get("raw")) for v in found[1]
            if v.get("label") in task.labels and v["member"].startswith(HUMAN_PREFIX)]


async def remember(state: GatewayState, ensemble: str, task: AnnotationTask, outcome: Outcome,
                   votes: list[dict[str, Any]], tenant: str) -> bool:
    """Keep the votes (on the wire, canonical: the task's `labels`) for refits and queue the item for review
    when flagged; False when they could not be.

    A store outage costs the record, not the answer: the label is still returned, and the answer says
    `stored: false` (also a header and a metric; the outage's log lines count the items), so no vote is lost
    silently. While the store is known to be down, the answer does not wait for it.
    """
    item = ItemRecord(item_id=scoped(tenant, task.item_id), schema=scoped(tenant, task.schema),
                      labels=list(task.labels), text=task.text, ensemble=ensemble)
    if not state.health.up:
        state.health.skipped("votes")
    else:
        try:
            await state.store.record(item, votes)
            if outcome.needs_review:
                distribution = {label: round(p, 6) for label, p in zip(task.labels, outcome.distribution)}
                await state.store.enqueue_review({**item.wire(), "label": outcome.label,
                                                  "confidence": round(outcome.confidence, 6),
                                                  "distribution": distribution, "queued_at": time.time()})
            return True
        except STORE_ERRORS as exc:
            state.health.failed("votes", exc)
    metrics.child(metrics.VOTES_NOT_STORED, ensemble).inc(len(outcome.votes))
    return False
