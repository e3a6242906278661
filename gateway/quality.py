"""Label quality as Prometheus series: agreement with gold, calibration on gold, agreement with the crowd.

Why counters and not gauges of accuracy: a counter of right and of all checks per (ensemble, member) lets
PromQL compute any rolling window (`increase(...[1h])`), across replicas and restarts, and lets alerts compare
an hour with the hour before. The calibration error is exact, not read off histogram buckets: per confidence
bin the gateway counts right answers and sums the confidence it stated, so the expected calibration error over
a window is sum over bins |right - stated| / checked.

When a gold label arrives for an item with stored votes, each member's vote and the crowd's current answer
(under the latest published parameters: a gold label that arrives is out of sample for them) are checked
against it, once per item. Every answered item counts each valid vote as agreeing with the answer or not.
Labels are ensemble, member, bin and outcome only; members are the configured ones (people are never a label).
Every series starts at 0 when the app is built, so `increase` counts the first check too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import Counter

from ensembles.aggregators import get_aggregator, pick
from ensembles.calibration import calibrate
from ensembles.votes import HUMAN_PREFIX, Vote
from gateway import metrics
from gateway.config import Config
from gateway.state import GatewayState
from gateway.store.votes import ItemRecord

BINS = tuple(f"{b / 10:.1f}" for b in range(10))
"""Confidence bins by lower edge: [0.0, 0.1) ... [0.9, 1.0]."""
OUTCOMES = ("right", "wrong")


@dataclass(frozen=True)
class CurrentAnswer:
    """The crowd's answer to a stored item under the latest published parameters."""

    label: str
    confidence: float
    distribution: list[float]
    aggregator: str
    params_version: int


def bin_of(confidence: float) -> str:
    return BINS[min(int(confidence * 10), 9)]


def current_answer(state: GatewayState, item: ItemRecord, votes: Sequence[Vote]) -> CurrentAnswer | None:
    """What the gateway answers for the item now (GET /v1/annotations/{id} shows it); None without a valid vote."""
    if not any(v.valid for v in votes):
        return None
    annotator = state.annotators.get(item.ensemble)
    aggregator = annotator.aggregator if annotator else get_aggregator("majority")
    params = state.reliability.get(item.schema, aggregator.name)
    dist = aggregator.posterior(votes, item.labels, params)
    best = pick(dist)
    members = sum(v.valid and not v.member.startswith(HUMAN_PREFIX) for v in votes)  # as the answer counts them
    confidence = calibrate((params or {}).get("calibration"), dist[best], members)
    return CurrentAnswer(item.labels[best], confidence, dist, aggregator.name,
                         state.reliability.version_of(item.schema, aggregator.name))


def members_of(config: Config) -> dict[str, list[str]]:
    """Each ensemble's members whose votes are checked: its members and its escalation target."""
    return {e.name: [*e.members, *([e.escalation.to] if e.escalation and e.escalation.to not in e.members else [])]
            for e in config.ensembles}


def declare(config: Config) -> None:
    """Create every quality series at 0 for the configured ensembles and members."""
    for ensemble, members in members_of(config).items():
        metrics.child(metrics.REVIEWS, ensemble)
        for b in BINS:
            metrics.child(metrics.GOLD_CONFIDENCE, ensemble, b)
            for outcome in OUTCOMES:
                metrics.child(metrics.GOLD_ANSWERS, ensemble, b, outcome)
        for member in members:
            for outcome in ("agree", "disagree"):
                metrics.child(metrics.VOTES, ensemble, member, outcome)
            for b in BINS:
                metrics.child(metrics.GOLD_VOTE_CONFIDENCE, ensemble, member, b)
                for outcome in OUTCOMES:
                    metrics.child(metrics.GOLD_VOTES, ensemble, member, b, outcome)


def count_votes(ensemble: str, label: str, votes: Sequence[Vote], needs_review: bool) -> None:
    """On the request path: each valid vote agrees with the answer or not (a few counter increments)."""
    for vote in votes:
        if vote.label is not None:
            metrics.child(metrics.VOTES, ensemble, vote.member, "agree" if vote.label == label else "disagree").inc()
    if needs_review:
        metrics.child(metrics.REVIEWS, ensemble).inc()


def check_gold(state: GatewayState, item: ItemRecord, votes: Sequence[Vote], gold: str) -> None:
    """A new gold label for a stored item: check the crowd's current answer and each configured member's vote."""
    members = members_of(state.config).get(item.ensemble)
    answer = current_answer(state, item, votes)
    if members is None or answer is None:
        return
    _observe(metrics.GOLD_ANSWERS, metrics.GOLD_CONFIDENCE, (item.ensemble,), answer.confidence, answer.label == gold)
    index = {label: k for k, label in enumerate(item.labels)}
    for vote in votes:
        if vote.label is not None and vote.member in members:
            stated = vote.probs[index[vote.label]] if vote.probs and vote.label in index else 1.0  # hard: certain
            _observe(metrics.GOLD_VOTES, metrics.GOLD_VOTE_CONFIDENCE, (item.ensemble, vote.member), stated,
                     vote.label == gold)


def _observe(checks: Counter, stated: Counter, labels: tuple[str, ...], confidence: float,
             right: bool) -> None:
    b = bin_of(confidence)
    metrics.child(checks, *labels, b, "right" if right else "wrong").inc()
    metrics.child(stated, *labels, b).inc(confidence)
