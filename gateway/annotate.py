"""The annotation path: let the router plan waves of members, ask them concurrently, aggregate, repeat.

Deadline semantics: answer when the router stops, or when `deadline_s` passes with at least
`quorum` valid votes; otherwise fail with 503 naming the members that failed. A failing member
only degrades the answer: its vote carries the error. After each wave the router sees the
calibrated confidence and what was spent, and either widens or says why it stops; the escalation
policy then runs unless the per-item budget forbids it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ensembles.aggregators import Aggregator, Params, pick
from ensembles.aggregators.base import DEFAULT_SKILL
from ensembles.calibration import calibrate
from ensembles.escalation import escalate_to, needs_review
from ensembles.extract import decisive_vote, label_logprobs, parse_answer, soft_vote
from ensembles.votes import Vote
from gateway import metrics, tracing
from gateway.config import Ensemble, Member
from gateway.upstream.dialects import one_pass, request, scoring_request
from gateway.errors import APIError, named
from gateway.upstream.queue_depth import QueueDepths
from gateway.response_cache import ResponseCache
from gateway.task import AnnotationTask
from gateway.upstream import UpstreamError, Upstreams
from gateway.upstream.reply import Completion
from gateway.upstream.grouping import Grouper
from routers import MemberState, RouteView, Router, StopReason
from routers.hedging import hedge_plan


UNDECIDED = "the first token names no single label"
"""A one-pass answer that does not decide: the member is asked again with constrained decoding."""


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
    stop_reason: StopReason = "exhausted"
    calls: int = 0
    """Member calls made for this item, hedged duplicates included."""

    @property
    def agreement(self) -> float:
        valid = [v for v in self.votes if v.valid]
        return sum(v.label == self.label for v in valid) / len(valid) if valid else 0.0

    @property
    def cost_usd(self) -> float:
        return sum(v.cost_usd for v in self.votes)


@dataclass(slots=True)
class _Item:
    """One item's state while its waves run: the votes so far and what they add up to."""

    task: AnnotationTask
    params: Params | None
    view: RouteView
    votes: list[Vote] = field(default_factory=list)
    people: list[Vote] = field(default_factory=list)
    """People's labels of the item already stored (feedback): they join the posterior, never the quorum."""
    distribution: list[float] = field(default_factory=list)
    confidence: float = 0.0
    calls: int = 0


class Annotator:
    """Runs one ensemble's request path; holds nothing per request."""

    def __init__(self, ensemble: Ensemble, members: dict[str, Member], upstreams: Upstreams,
                 router: Router, aggregator: Aggregator, grouper: Grouper | None = None,
                 cache: ResponseCache | None = None) -> None:
        self.ensemble = ensemble
        self.members = members
        self.upstreams = upstreams
        self.grouper = grouper
        """Groups the one-pass calls of job traffic (None: every call goes alone, as in `tune`'s recording)."""
        self.cache = cache
        """Votes on exactly the same requests, reused (None: every vote is asked, as in `tune`'s recording)."""
        self.router = router
        self.aggregator = aggregator
        self.depths = QueueDepths(upstreams, getattr(ensemble.routing, "load_cache_s", 1.0))
        self._accuracy: tuple[Params | None, Sequence[str], dict[str, float]] = (None, (), {})

    async def run(self, task: AnnotationTask, params: Params | None = None, people: Sequence[Vote] = ()) -> Outcome:
        """Ask in waves, aggregate under `params` (the latest fitted ones) with the people's stored labels of the
        item, escalate if unsure, flag for review."""
        ens = self.ensemble
        started = time.perf_counter()
        if self.router.reads_queue_depth:
            await self.depths.refresh(ens.members)
        view = self.view(params, task.labels)
        skipped = [Vote(member=n, label=None, error="circuit open after repeated failures")
                   for n, state in view.members.items() if not state.usable]
        for vote in skipped:
            metrics.child(metrics.UPSTREAM_REQUESTS, vote.member, "circuit_open").inc()
        item = _Item(task, params, view, people=list(people), distribution=[1.0 / len(task.labels)] * len(task.labels))
        reason = await self._waves(item, started + ens.deadline_s)
        escalated = False
        if reason != "budget":
            reason, escalated = await self._escalate(item, reason)
        metrics.child(metrics.STOPS, ens.name, reason).inc()
        metrics.child(metrics.CALLS_PER_ITEM, ens.name).observe(item.calls)
        metrics.child(metrics.ITEM_COST, ens.name).observe(sum(v.cost_usd for v in item.votes))
        self._check_quorum(item.votes + skipped, reason, task.labels)
        return Outcome(label=task.label_set.best(item.distribution), distribution=item.distribution,
                       confidence=item.confidence, votes=item.votes + skipped + item.people,
                       upstream_wait_s=time.perf_counter() - started, escalated=escalated,
                       needs_review=needs_review(ens.review, item.confidence), stop_reason=reason, calls=item.calls)

    async def _waves(self, item: _Item, deadline: float) -> StopReason:
        """Ask what the router plans, aggregate, show it the new view; until it stops or the deadline passes."""
        view = item.view
        calls = self.router.first(view)
        while True:
            if calls:
                if time.perf_counter() >= deadline:
                    return "deadline"
                view.asked += calls
                wave, hedges = await self._ask(calls, item.task, deadline, view)
                item.calls += len(calls) + hedges
                item.votes += wave
                self._aggregate(item)
                view.valid_votes = sum(v.valid for v in item.votes)
                view.spent_usd = sum(v.cost_usd for v in item.votes)
                view.answered_groups = {self.members[v.member].replica_group for v in item.votes if v.valid}
            step = self.router.more(view)
            calls = [name for name in step.call if name not in view.asked]
            if not calls:
                return step.stop or "exhausted"

    def _aggregate(self, item: _Item) -> None:
        votes = item.votes + item.people if item.people else item.votes
        item.distribution = self.aggregator.posterior(votes, item.task.labels, item.params)
        top = max(item.distribution)
        item.confidence = calibrate((item.params or {}).get("calibration"), top, sum(v.valid for v in item.votes))
        item.view.confidence = min(top, item.confidence)

    async def _escalate(self, item: _Item, reason: StopReason) -> tuple[StopReason, bool]:
        """Ask the escalation target once when the item stayed unsure and the budget allows it."""
        view = item.view
        strong = escalate_to(self.ensemble.escalation, view.confidence, view.asked)
        if strong is None or not self.upstreams.usable(strong):
            return reason, False
        if self.upstreams.state(strong, DEFAULT_SKILL).cost_usd > view.remaining_budget():
            return "budget", False
        view.asked.append(strong)
        votes, _ = await self._ask([strong], item.task, time.perf_counter() + self.members[strong].timeout_s, view,
                                   hedge=False)
        item.calls += 1
        item.votes += votes
        metrics.child(metrics.ESCALATIONS, self.ensemble.name, strong).inc()
        self._aggregate(item)
        return "escalated", votes[0].valid

    def _check_quorum(self, votes: Sequence[Vote], reason: StopReason, labels: Sequence[str]) -> None:
        ens = self.ensemble
        valid = sum(v.valid for v in votes)
        if valid >= ens.quorum:
            return
        failed = {v.member: v.error for v in votes if not v.valid}
        detail = "; ".join(f"{m}: {e}" for m, e in failed.items()) or "none were asked"
        if any(v.raw is not None for v in votes if not v.valid):  # answers outside the set: name it once
            detail += f"; the labels: {named(labels)}"
        if reason == "budget":
            detail += f"; asking more would pass the per-item cap of ${ens.routing.max_cost_usd:g}"
        raise APIError(503, f"ensemble {ens.name!r} got {valid} valid votes, quorum is {ens.quorum}. "
                            f"Failed members: {detail}", code="quorum_not_met")

    def view(self, params: Params | None, labels: Sequence[str]) -> RouteView:
        """The members' live states for the router: circuit, load, latency, expected cost, learned reliability."""
        accuracy = self._accuracies(params, labels)
        states = {name: self._state(name, accuracy) for name in self.ensemble.members}
        return RouteView(knobs=self.ensemble.routing, quorum=self.ensemble.quorum, members=states,
                         n_labels=len(labels))

    def _state(self, name: str, accuracy: dict[str, float]) -> MemberState:
        return self.upstreams.state(name, accuracy.get(name, DEFAULT_SKILL), self.depths.get(name))

    def _accuracies(self, params: Params | None, labels: Sequence[str]) -> dict[str, float]:
        """Learned accuracies, recomputed only when a new parameter set (or label set) comes along."""
        cached_params, cached_labels, values = self._accuracy
        if params is cached_params and cached_labels == labels:
            return values
        values = self.aggregator.accuracies(params, labels) if params else {}
        self._accuracy = (params, tuple(labels), values)
        return values

    async def _ask(self, names: Sequence[str], task: AnnotationTask, deadline: float, view: RouteView,
                   hedge: bool = True) -> tuple[list[Vote], int]:
        """Votes of `names` (abstentions for those past the deadline) and how many hedged duplicates were sent."""
        if not names:
            return [], 0
        hedged: list[str] = []
        hedging = hedge and self.ensemble.routing.hedge
        shaped = await self._shape_wave([self.members[name] for name in names], task, deadline)
        calls = {name: asyncio.ensure_future(self._hedged_vote(name, task, view, hedged, deadline, asked) if hedging
                                             else self.vote(self.members[name], task, deadline, asked))
                 for name, asked in zip(names, shaped)}
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
        return votes, len(hedged)

    async def _shape_wave(self, members: Sequence[Member], task: AnnotationTask,
                          deadline: float | None) -> list[_Asked]:
        """Each member's request, and its cached vote: the whole wave looked up in one store call (a slow store
        keeps no wave past its deadline: its members are then asked, and abstain at once as they would have)."""
        started = time.perf_counter()
        asked = [_shape(member, task) for member in members]
        cache = self.cache if task.cache_tenant is not None else None
        if cache is not None:
            keys = [cache.key(task.cache_tenant, member, one.path, one.body, one.first_token, task)
                    for member, one in zip(members, asked)]
            try:
                async with asyncio.timeout(None if deadline is None else max(deadline - started, 0.0)):
                    hits = await cache.lookup_many(keys, [member.name for member in members])
            except TimeoutError:
                hits = [None] * len(keys)
            for one, key, hit in zip(asked, keys, hits):
                one.key = key
                if hit is not None:
                    hit.latency_ms = _ms(started)
                    one.hit = hit
        return asked

    async def _hedged_vote(self, name: str, task: AnnotationTask, view: RouteView, hedged: list[str],
                           deadline: float, asked: _Asked | None = None) -> Vote:
        """The member's vote; past its recent p95, also a replica's, and the first valid answer wins."""
        member = self.members[name]
        replicas = [self._state(m.name, {}) for m in self.members.values()
                    if m.replica_group == member.replica_group and m.name != name]
        plan = hedge_plan(self._state(name, {}), replicas, self.ensemble.routing.hedge_min_samples, view.asked)
        primary = asyncio.ensure_future(self.vote(member, task, deadline, asked))
        if plan is None:
            return await primary
        delay_s, replica = plan
        backup: asyncio.Future[Vote] | None = None
        try:
            done, _ = await asyncio.wait({primary}, timeout=delay_s)
            if done:
                return primary.result()
            view.asked.append(replica)
            hedged.append(replica)
            backup = asyncio.ensure_future(self.vote(self.members[replica], task, deadline))
            pending: set[asyncio.Future[Vote]] = {primary, backup}
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    if fut.result().valid:
                        metrics.child(metrics.HEDGES, replica, "won" if fut is backup else "lost").inc()
                        return fut.result()
            return primary.result()
        finally:
            for fut in (primary, backup):
                if fut is not None and not fut.done():
                    fut.cancel()

    async def vote(self, member: Member, task: AnnotationTask, deadline: float | None = None,
                   asked: _Asked | None = None) -> Vote:
        """One member's vote; every failure becomes an abstaining vote with its reason.

        A one-pass member answers with its first token's distribution; when that token does not name one
        label, the member is asked again with constrained decoding (the vote's latency covers both). A vote
        on exactly the same request, when the task allows the cache, is answered from it without a call.
        `asked`: the request already shaped and looked up (a wave's, by _shape_wave).
        """
        if tracing.traces is not None:
            return await tracing.traces.vote(member, self._vote(member, task, deadline, asked))
        return await self._vote(member, task, deadline, asked)

    async def _vote(self, member: Member, task: AnnotationTask, deadline: float | None, asked: _Asked | None) -> Vote:
        started = time.perf_counter()
        if asked is None:
            asked = (await self._shape_wave([member], task, deadline))[0]
        if asked.hit is not None:
            return asked.hit
        first_token = asked.first_token
        vote = await self._ask_member(member, task, deadline, first_token, started, asked.path, asked.body)
        if first_token and vote.error == UNDECIDED:
            vote = await self._ask_member(member, task, deadline, False, started, *request(member, task, False),
                                          spent=vote)
        if self.cache is not None and asked.key is not None:  # a key is made only when the task allows the cache
            self.cache.keep_soon(asked.key, vote)
        return vote

    async def _ask_member(self, member: Member, task: AnnotationTask, deadline: float | None, first_token: bool,
                          started: float, path: str, body: dict[str, Any], spent: Vote | None = None) -> Vote:
        try:
            if first_token and task.job and self.grouper is not None and self.grouper.groups(member, path, body):
                answer = await self.grouper.complete(member.name, path, body, deadline)
            else:
                answer = await self.upstreams.complete(member.name, path, orjson.dumps(body), deadline)
        except UpstreamError as exc:
            if tracing.traces is not None:
                tracing.traces.failed(exc.kind)
            return Vote(member=member.name, label=None, latency_ms=_ms(started), error=exc.message)
        latency_ms = _ms(started)
        cost = self.upstreams.account(member.name, answer.prompt_tokens, answer.completion_tokens)
        prompt_tokens = answer.prompt_tokens + (spent.prompt_tokens if spent else 0)
        completion_tokens = answer.completion_tokens + (spent.completion_tokens if spent else 0)
        cost += spent.cost_usd if spent else 0.0
        if first_token:
            found = decisive_vote(answer.choice, task.labels)
            probs, label, error = None, None, UNDECIDED
            if found is not None:
                scored, extra = await self._score_missing(member, task, body, found.worth_scoring, deadline)
                probs = found.vote(scored)
                label, error = task.labels[pick(probs)], None
                if extra is not None:
                    prompt_tokens += extra.prompt_tokens
                    completion_tokens += extra.completion_tokens
                    cost += self.upstreams.account(member.name, extra.prompt_tokens, extra.completion_tokens)
        else:
            label, error = parse_answer(answer.text, task.labels)
            probs = soft_vote(answer.choice, task.labels) if label is not None else None
            if probs is not None and probs[task.labels.index(label)] < max(probs):
                probs = None  # the label's first token was shared by several labels: the leftovers would mislead
        if label is None and error != UNDECIDED:
            metrics.child(metrics.UPSTREAM_REQUESTS, member.name, "invalid_answer").inc()
        return Vote(member=member.name, label=label, raw=answer.text, probs=probs, latency_ms=latency_ms,
                    prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost, error=error)


    async def _score_missing(self, member: Member, task: AnnotationTask, asked: dict[str, object],
                             missing: Sequence[int], deadline: float | None) -> tuple[dict[int, float], Completion | None]:
        """The probabilities of the labels the first token's top log-probabilities missed, scored by one more call
        where the member's dialect has one (dialects.scoring_request), with that call; ({}, None) where it has not or
        the call fails (the vote then gives those labels the truncation bound: never a 0.0)."""
        spelled = [task.label_set.spelled(task.labels[i]) for i in missing]
        shaped = scoring_request(member, asked, spelled) if missing else None
        if shaped is None:
            return {}, None
        path, body = shaped
        try:
            reply = await self.upstreams.complete(member.name, path, orjson.dumps(body), deadline)
        except UpstreamError:
            return {}, None
        logprobs = label_logprobs(reply.choices)
        if logprobs is None:
            return {}, reply
        return {i: math.exp(lp) for i, lp in zip(missing, logprobs)}, reply


@dataclass(slots=True)
class _Asked:
    """One member's request, shaped once for its call and its cache key, and the cached vote answering it."""
    first_token: bool
    path: str
    body: dict[str, Any]
    key: str | None = None
    hit: Vote | None = None


def _shape(member: Member, task: AnnotationTask) -> _Asked:
    first_token = one_pass(member, task)
    return _Asked(first_token, *request(member, task, first_token))


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
