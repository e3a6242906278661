"""The gateway's own request path, replayed offline on recorded votes (what `crowd-gateway tune` searches with).

Why replay instead of a model of the cascade: when an item stops, widens or escalates is decided
by the router, the aggregator, calibration and the escalation policy together. Recording every
member's answer to every dev item once, then running the real `Annotator.run` with asking a
member turned into reading its recorded vote, scores any threshold setting in milliseconds with
no model call, and cannot drift from what the gateway does. Hedging is not replayed (no latency).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence

from ensembles.aggregators import get_aggregator
from ensembles.votes import Vote
from gateway.annotate import Annotator
from gateway.asking.asker import Asker
from gateway.config import Config, Ensemble
from gateway.task import AnnotationTask
from gateway.upstream import Upstreams
from routers import RouteView, get_router

Recording = dict[str, dict[str, Vote]]
"""Item id -> member -> that member's vote on the item."""


def asked_members(ensemble: Ensemble) -> list[str]:
    """Everyone a replay may ask: the ensemble's members, then its escalation target."""
    return list(dict.fromkeys(ensemble.members + ([ensemble.escalation.to] if ensemble.escalation else [])))


async def record(config: Config, ensemble: Ensemble, tasks: Sequence[AnnotationTask], concurrency: int) -> Recording:
    """Every member (and the escalation target) answers every task once, over the config's real upstreams."""
    from tqdm import tqdm

    members = {m.name: m for m in config.members}
    names = asked_members(ensemble)
    upstreams = Upstreams(config.members, config.gateway.breaker)
    asker = Asker(upstreams)
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(tasks) * len(names), desc="recording votes", unit="call", disable=None)

    async def one(task: AnnotationTask, name: str) -> tuple[str, Vote]:
        async with gate:
            vote = await asker.vote(members[name], task)  # the request path's own call and parsing
        bar.update(1)
        return task.item_id, vote

    await upstreams.start()
    try:
        answers = await asyncio.gather(*(one(task, name) for task in tasks for name in names))
    finally:
        bar.close()
        await upstreams.close()
    recording: Recording = defaultdict(dict)
    for item_id, vote in answers:
        recording[item_id][vote.member] = vote
    return dict(recording)


def mean_costs(recording: Recording) -> dict[str, float]:
    """Each member's average cost of an answered call in the recording."""
    paid: dict[str, list[float]] = defaultdict(list)
    for votes in recording.values():
        for vote in votes.values():
            if vote.raw is not None:
                paid[vote.member].append(vote.cost_usd)
    return {name: sum(costs) / len(costs) for name, costs in paid.items()}


class ReplayAnnotator(Annotator):
    """The real annotator, except that asking a member reads its recorded vote.

    Each member's expected cost starts at its recorded average, as a gateway that has been
    serving has it, and is updated per replayed answer as `_vote` updates it.
    """

    def __init__(self, config: Config, ensemble: Ensemble, recording: Recording) -> None:
        upstreams = Upstreams(config.members, config.gateway.breaker)
        super().__init__(ensemble, {m.name: m for m in config.members}, upstreams, get_router(ensemble.router),
                         get_aggregator(ensemble.aggregator))
        self.recording = recording
        for name, cost in mean_costs(recording).items():
            upstreams.paid(name, cost)

    async def _ask(self, names: Sequence[str], task: AnnotationTask, deadline: float, view: RouteView,
                   hedge: bool = True) -> tuple[list[Vote], int]:
        votes = [self.recording[task.item_id][name] for name in names]
        for vote in votes:
            if vote.raw is not None:
                self.upstreams.paid(vote.member, vote.cost_usd)
        return votes, 0
