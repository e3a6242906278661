"""Budgets and rate limits per tenant, on the completion routes and batch lines, in OpenAI's conventions.

A metered tenant (one with `limits`, see gateway/config.py) has each request checked in one store round trip
before any member is called (gateway/store/limiter.py), and its answer's tokens and cost added after it:

* refused by a rate: 429 `rate_limit_exceeded` with `Retry-After` (and `retry-after-ms`), which the official
  clients wait out by themselves; a batch line waits it out instead of failing;
* refused by a spent budget: 429 `insufficient_quota` with `x-should-retry: false` (the official clients do not
  retry it; it would fail again until the day or month ends); a batch line fails with that error;
* every answer carries `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the limits the tenant has.

Tokens are counted before the answer exists as an estimate: a quarter of the request body's bytes (about 4
characters a token) plus its `max_completion_tokens` or `max_tokens`, times the members an ensemble may ask,
capped at `tokens_per_minute`; the answer's `usage` then replaces the estimate. Spend is the answer's
`usage.cost_usd` (`Answer.spent`: an ensemble's usage, a passthrough's priced usage, a stream's final usage chunk).

A store outage fails open: requests are served unchecked (`crowd_gateway_limits_unchecked_total`, the store's
outage log), without `x-ratelimit-*` headers, and what they spend is counted in Prometheus but not in the store.
The gateway keeps answering, as it does when votes cannot be stored; a budget can then be passed by what the
outage let through.

Tenants without limits never reach this module: the routes check one dict and call `execute` as before.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import orjson

from gateway import metrics
from gateway.answer import Answer
from gateway.completions.service import execute
from gateway.config import Limits
from gateway.errors import APIError
from gateway.state import GatewayState
from gateway.store.health import STORE_ERRORS
from gateway.store.limiter import Decision, Periods, Rate, Tally
from gateway.task import Kind

CHARS_PER_TOKEN = 4
"""The prompt's estimate before the answer's usage replaces it (tiktoken's rule of thumb for English text)."""


_settling: set[asyncio.Task[None]] = set()
"""Stream ends being counted (a reference keeps each task alive until it is done)."""


async def check(state: GatewayState, tenant: str, limits: Limits, tokens: int) -> Decision | None:
    """The limiter's decision; None while the store cannot answer (the request goes on unchecked)."""
    assert state.limiter is not None
    if state.health.up:
        try:
            return await state.limiter.acquire(tenant, limits, tokens, time.time())
        except STORE_ERRORS as exc:
            state.health.failed("limits", exc)
    else:
        state.health.skipped("limits")
    metrics.LIMITS_UNCHECKED.inc()
    return None


async def settle(state: GatewayState, tenant: str, limits: Limits, estimate: int | None, tokens: int,
                 usd: float) -> None:
    """Count what an answer used: in Prometheus always, in the store when it answers and counted the request's
    `estimate` (None: the request went unchecked, and the store has nothing to correct)."""
    metrics.child(metrics.TENANT_TOKENS, tenant).inc(tokens)
    metrics.child(metrics.TENANT_SPEND, tenant).inc(usd)
    assert state.limiter is not None
    if estimate is None:
        return
    if not state.health.up:
        state.health.skipped("limits")
        return
    try:
        await state.limiter.settle(tenant, limits, tokens - estimate, usd, time.time())
    except STORE_ERRORS as exc:
        state.health.failed("limits", exc)


async def usage(state: GatewayState, tenant: str) -> dict[str, Any]:
    """`GET /v1/usage`: the tenant's requests, tokens and spend this day and month (UTC), and its limits."""
    limits = state.metered.get(tenant)
    body: dict[str, Any] = {"object": "tenant.usage", "tenant": tenant, "metered": limits is not None,
                            "limits": limits.model_dump() if limits else None, "data": []}
    if limits is None or state.limiter is None:
        return body
    now = time.time()
    periods = Periods.at(now)
    day, month = await state.limiter.usage(tenant, now)
    body["data"] = [_bucket("day", periods.day_start, periods.day_end, day, limits.usd_per_day),
                    _bucket("month", periods.month_start, periods.month_end, month, limits.usd_per_month)]
    return body


def _bucket(period: str, start: float, end: float, tally: Tally, budget: float | None) -> dict[str, Any]:
    return {"object": "bucket", "period": period, "start_time": int(start), "end_time": int(end),
            "num_model_requests": tally.requests, "tokens": tally.tokens,
            "amount": {"value": round(tally.usd, 10), "currency": "usd"},
            "budget": None if budget is None else {"value": budget, "currency": "usd"}}


async def metered(state: GatewayState, body: dict[str, Any], raw: bytes | None, kind: Kind, path: str,
                  tenant: str, limits: Limits, job: bool = False) -> Answer:
    """`execute` for a metered tenant: checked before, counted after, headers on the answer."""
    estimate = _estimate(state, body, raw, limits)
    decision = await check(state, tenant, limits, estimate)
    while job and decision is not None and decision.refused in ("requests", "tokens"):
        await asyncio.sleep(decision.retry_after_s)  # a batch line waits for its tenant's rate
        decision = await check(state, tenant, limits, estimate)
    if decision is not None and decision.refused is not None:
        metrics.child(metrics.REQUESTS, _name(state, body), "rate_limited").inc()
        metrics.child(metrics.TENANT_REFUSED, tenant, decision.refused).inc()
        return _refusal(tenant, limits, decision)

    counted = estimate if decision is not None else None
    settled = False

    def stream_spent(tokens: int, usd: float) -> None:  # a passthrough stream's end (or its refusal by the member)
        nonlocal settled
        settled = True
        task = asyncio.get_running_loop().create_task(settle(state, tenant, limits, counted, tokens, usd))
        _settling.add(task)
        task.add_done_callback(_settling.discard)

    answer = await execute(state, body, raw, kind, path, tenant, job, stream_spent)
    if not settled and not (answer.stream is not None and answer.spent is None):  # a passthrough stream: at its end
        tokens, usd = answer.spent or (0, 0.0)  # an error used nothing the gateway can count
        await settle(state, tenant, limits, counted, tokens, usd)
    if decision is not None:
        answer.headers.update(_rate_headers(decision))
    return answer


def _name(state: GatewayState, body: dict[str, Any]) -> str:
    model = body.get("model")
    return model if isinstance(model, str) and (model in state.annotators or model in state.members) else "-"


def _estimate(state: GatewayState, body: dict[str, Any], raw: bytes | None, limits: Limits) -> int:
    prompt = math.ceil(len(raw if raw is not None else orjson.dumps(body)) / CHARS_PER_TOKEN)
    out = body.get("max_completion_tokens") or body.get("max_tokens")
    out = out if isinstance(out, int) and not isinstance(out, bool) and out > 0 else 0
    annotator = state.annotators.get(body.get("model")) if isinstance(body.get("model"), str) else None
    calls = len(annotator.ensemble.members) if annotator is not None else 1
    estimate = (prompt + out) * calls
    return min(estimate, limits.tokens_per_minute) if limits.tokens_per_minute else estimate


def _rate_headers(decision: Decision) -> dict[str, str]:
    headers = {}
    for kind, rate in (("requests", decision.requests), ("tokens", decision.tokens)):
        if rate is not None:
            headers[f"x-ratelimit-limit-{kind}"] = str(rate.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(rate.remaining)
            headers[f"x-ratelimit-reset-{kind}"] = reset_text(rate.reset_s)
    return headers


def reset_text(seconds: float) -> str:
    """A duration as OpenAI's reset headers write it: `20ms`, `1s`, `6m0s`, `1h2m3.5s`."""
    seconds = round(max(seconds, 0.0), 3)
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "") + text


def _refusal(tenant: str, limits: Limits, decision: Decision) -> Answer:
    headers = _rate_headers(decision)
    if decision.refused in ("day", "month"):
        budget = limits.usd_per_day if decision.refused == "day" else limits.usd_per_month
        when = "00:00 UTC" if decision.refused == "day" else "the first of next month (UTC)"
        error = APIError(429, f"You exceeded your current quota: tenant {tenant!r} spent its {decision.refused}'s "
                              f"budget of ${budget:g}; it renews at {when} (GET /v1/usage shows the spend)",
                         code="insufficient_quota", type="insufficient_quota",
                         headers={**headers, "x-should-retry": "false"})
        return Answer.error(error)
    rate: Rate | None = decision.requests if decision.refused == "requests" else decision.tokens
    unit = "RPM" if decision.refused == "requests" else "TPM"
    wait = decision.retry_after_s
    message = (f"Rate limit reached for {decision.refused} per minute ({unit}) of tenant {tenant!r}: limit "
               f"{rate.limit if rate else '?'}, remaining {rate.remaining if rate else '?'}. "
               f"Please try again in {reset_text(wait)}.")
    headers.update({"Retry-After": str(max(1, math.ceil(wait))), "retry-after-ms": str(math.ceil(wait * 1000))})
    return Answer.error(APIError(429, message, code="rate_limit_exceeded", type=decision.refused, headers=headers))
