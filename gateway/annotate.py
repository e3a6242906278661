"""The annotation path: let the router plan waves of members, ask them concurrently, aggregate, repeat.

Asking one member (its prompt, its dialect's request, reading its reply as a vote) is gateway/asking/'s: this
module decides whom to ask and when (waves, hedges, escalation, the deadline) and what the votes add up to.

Deadline semantics: answer when the router stops, or when `deadline_s` passes with at least
`quorum` valid votes; otherwise fail with 503 naming the members that failed. A failing member
only degrades the answer: its vote carries the error. After each wave the router sees the
calibrated confidence and what was spent, and either widens or says why it stops; the escalation
policy then runs unless the per-item budget forbids it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ensembles.aggregators import Aggregator, Params
from ensembles.aggregators.base import DEFAULT_SKILL
from ensembles.calibration import calibrate
from ensembles.escalation import escalate_to, needs_review
from ensembles.votes import Vote
from gateway import metrics
from gateway.asking.asker import Asked, Asker
from gateway.config import Ensemble, Member
from gateway.errors import APIError, named
from gateway.response_cache import ResponseCache
from gateway.task import AnnotationTask
from gateway.upstream import Upstreams
from gateway.upstream.grouping import Grouper
from gateway.upstream.queue_depth import QueueDepths
from routers import MemberState, RouteView, Router, StopReason
from routers.hedging import hedge_plan


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
        self.asker = Asker(upstreams, grouper, cache)
        """Asks one member for its vote (gateway/asking/): the annotator plans whom, and what the votes add up to."""
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
            step = self.router.more(view)
            calls = [name for name in step.call if name not in view.asked]
            if not calls:
                return step.stop or "exhausted"

    def _aggregate(self, item: _Item) -> None:
        """The posterior of the votes so far (the people's labels join it), its calibrated confidence, and what the
        router sees of them: confidence, valid votes, spend, the replica groups that answered."""
        votes = item.votes + item.people if item.people else item.votes
        item.distribution = self.aggregator.posterior(votes, item.task.labels, item.params)
        top = max(item.distribution)
        valid = [v for v in item.votes if v.valid]
        item.confidence = calibrate((item.params or {}).get("calibration"), top, len(valid))
        view = item.view
        view.confidence = min(top, item.confidence)
        view.valid_votes = len(valid)
        view.spent_usd = sum(v.cost_usd for v in item.votes)
        view.answered_groups = {self.members[v.member].replica_group for v in valid}

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
        shaped = await self.asker.wave([self.members[name] for name in names], task, deadline)
        calls = {name: asyncio.ensure_future(self._hedged_vote(name, task, view, hedged, deadline, asked) if hedging
                                             else self.asker.vote(self.members[name], task, deadline, asked))
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

    async def _hedged_vote(self, name: str, task: AnnotationTask, view: RouteView, hedged: list[str],
                           deadline: float, asked: Asked | None = None) -> Vote:
        """The member's vote; past its recent p95, also a replica's, and the first valid answer wins."""
        member = self.members[name]
        replicas = [self._state(m.name, {}) for m in self.members.values()
                    if m.replica_group == member.replica_group and m.name != name]
        plan = hedge_plan(self._state(name, {}), replicas, self.ensemble.routing.hedge_min_samples, view.asked)
        primary = asyncio.ensure_future(self.asker.vote(member, task, deadline, asked))
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
            backup = asyncio.ensure_future(self.asker.vote(self.members[replica], task, deadline))
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
