"""The annotation path: plan members, ask them concurrently, turn answers into votes, aggregate.

Deadline semantics: answer when every asked member replied, or when `deadline_s` passes with at
least `quorum` valid votes; otherwise fail with 503 naming the members that failed. A failing
member only degrades the answer: its vote carries the error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from ensembles.aggregators import Aggregator, Params, pick
from ensembles.calibration import calibrate
from ensembles.escalation import escalate_to, needs_review
from ensembles.extract import parse_answer, soft_vote
from ensembles.votes import Vote
from gateway import metrics
from gateway.config import Ensemble, Member
from gateway.dialects import shape
from gateway.errors import APIError
from gateway.pricing import account
from gateway.task import AnnotationTask
from gateway.upstream import UpstreamError, Upstreams
from routers import Router


@dataclass(slots=True)
class Outcome:
    label: str
    distribution: list[float]
    confidence: float
    """Calibrated probability that `label` is right (the posterior's top probability before a calibration fit)."""
    votes: list[Vote]
    upstream_wait_s: float
    escalated: bool = False
    needs_review: bool = False

    @property
    def agreement(self) -> float:
        valid = [v for v in self.votes if v.valid]
        return sum(v.label == self.label for v in valid) / len(valid) if valid else 0.0


class Annotator:
    """Runs one ensemble's request path; holds nothing per request."""

    def __init__(self, ensemble: Ensemble, members: dict[str, Member], upstreams: Upstreams,
                 router: Router, aggregator: Aggregator) -> None:
        self.ensemble = ensemble
        self.members = members
        self.upstreams = upstreams
        self.router = router
        self.aggregator = aggregator

    async def run(self, task: AnnotationTask, params: Params | None = None) -> Outcome:
        """Ask, aggregate under `params` (the latest fitted ones), escalate if unsure, flag for review."""
        ens = self.ensemble
        usable = [name for name in ens.members if self.upstreams.usable(name)]
        planned = self.router.first(ens, usable)
        skipped = [Vote(member=n, label=None, error="circuit open after repeated failures")
                   for n in ens.members if n not in usable]
        for vote in skipped:
            metrics.child(metrics.UPSTREAM_REQUESTS, vote.member, "circuit_open").inc()
        started = time.perf_counter()
        votes = await self._ask(planned, task, started + ens.deadline_s)
        distribution = self.aggregator.posterior(votes, task.labels, params)
        asked = list(planned)
        while extra := [m for m in self.router.more(ens, usable, asked, distribution) if m not in asked]:
            asked += extra
            votes += await self._ask(extra, task, started + ens.deadline_s)
            distribution = self.aggregator.posterior(votes, task.labels, params)
        calibration = (params or {}).get("calibration")
        confidence = calibrate(calibration, max(distribution))
        escalated = False
        if (strong := escalate_to(ens, confidence, asked)) is not None and self.upstreams.usable(strong):
            asked.append(strong)
            strong_vote = await self._ask([strong], task, time.perf_counter() + self.members[strong].timeout_s)
            votes += strong_vote
            escalated = strong_vote[0].valid
            metrics.child(metrics.ESCALATIONS, ens.name, strong).inc()
            distribution = self.aggregator.posterior(votes, task.labels, params)
            confidence = calibrate(calibration, max(distribution))
        waited = time.perf_counter() - started
        all_votes = votes + skipped
        valid = sum(v.valid for v in votes)
        if valid < ens.quorum:
            failed = {v.member: v.error for v in all_votes if not v.valid}
            detail = "; ".join(f"{m}: {e}" for m, e in failed.items())
            raise APIError(503, f"ensemble {ens.name!r} got {valid} valid votes, quorum is {ens.quorum}. "
                                f"Failed members: {detail}", code="quorum_not_met")
        label = task.labels[pick(distribution)]
        return Outcome(label=label, distribution=distribution, confidence=confidence, votes=all_votes,
                       upstream_wait_s=waited, escalated=escalated, needs_review=needs_review(ens, confidence))

    async def _ask(self, names: Sequence[str], task: AnnotationTask, deadline: float) -> list[Vote]:
        calls = {name: asyncio.ensure_future(self._vote(self.members[name], task)) for name in names}
        if not calls:
            return []
        timeout = max(deadline - time.perf_counter(), 0.0)
        done, pending = await asyncio.wait(calls.values(), timeout=timeout)
        for fut in pending:
            fut.cancel()
        votes = []
        for name, fut in calls.items():
            if fut in done:
                votes.append(fut.result())
            else:
                votes.append(Vote(member=name, label=None, latency_ms=self.ensemble.deadline_s * 1000,
                                  error=f"no answer before the ensemble deadline of {self.ensemble.deadline_s:g}s"))
        return votes

    async def _vote(self, member: Member, task: AnnotationTask) -> Vote:
        """One member's vote; every failure becomes an abstaining vote with its reason."""
        path, body = shape(member, task)
        started = time.perf_counter()
        try:
            reply = await self.upstreams.post(member.name, path, body)
        except UpstreamError as exc:
            return Vote(member=member.name, label=None, latency_ms=_ms(started), error=exc.message)
        latency_ms = _ms(started)
        if reply.status != 200:
            return Vote(member=member.name, label=None, latency_ms=latency_ms,
                        error=f"HTTP {reply.status}: {_error_message(reply.body)}")
        try:
            data = orjson.loads(reply.body)
            choice = data["choices"][0]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            return Vote(member=member.name, label=None, latency_ms=latency_ms,
                        error="malformed completion body from the member")
        prompt_tokens, completion_tokens, cost = account(member, data.get("usage"))
        raw = choice.get("text") if "text" in choice else (choice.get("message") or {}).get("content")
        label, error = parse_answer(raw, task.labels)
        probs = soft_vote(choice, task.labels) if label is not None else None
        if label is None:
            metrics.child(metrics.UPSTREAM_REQUESTS, member.name, "invalid_answer").inc()
        return Vote(member=member.name, label=label, raw=raw, probs=probs, latency_ms=latency_ms,
                    prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost, error=error)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _error_message(body: bytes) -> str:
    """The upstream's OpenAI error message when it sent one, else a short excerpt."""
    try:
        message = orjson.loads(body)["error"]["message"]
        return str(message)[:200]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body[:200].decode(errors="replace")
