"""One member asked for one item's vote: its request shaped, sent, and its reply read as a Vote.

Why one place: the prompt's style decides the request's shape (a one-pass completion or a constrained label), the
shape decides how the reply is read (the first token's log-probabilities or a decoded label), and a one-pass answer
that does not decide is asked again constrained. The annotator plans waves and aggregates; it calls `wave` once per
wave (each member's request shaped once, the wave's cached votes looked up in one store call) and `vote` per member.
Every failure becomes an abstaining vote with its reason, never an exception.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ensembles.labels import pick
from ensembles.votes import Vote
from gateway import metrics, tracing
from gateway.asking.dialects import one_pass, request, scoring_request
from gateway.asking.extract import decisive_vote, label_logprobs, parse_answer, soft_vote
from gateway.config import Member
from gateway.response_cache import ResponseCache
from gateway.task import AnnotationTask
from gateway.upstream import UpstreamError, Upstreams
from gateway.upstream.grouping import Grouper
from gateway.upstream.reply import Completion

UNDECIDED = "the first token names no single label"
"""A one-pass answer that does not decide: the member is asked again with constrained decoding."""


@dataclass(slots=True)
class Asked:
    """One member's request, shaped once for its call and its cache key, and the cached vote answering it."""

    first_token: bool
    path: str
    body: dict[str, Any]
    key: str | None = None
    hit: Vote | None = None


class Asker:
    """Asks the pool's members for votes; holds nothing per request."""

    def __init__(self, upstreams: Upstreams, grouper: Grouper | None = None,
                 cache: ResponseCache | None = None) -> None:
        self.upstreams = upstreams
        self.grouper = grouper
        """Groups the one-pass calls of job traffic (None: every call goes alone, as in `tune`'s recording)."""
        self.cache = cache
        """Votes on exactly the same requests, reused (None: every vote is asked, as in `tune`'s recording)."""

    async def wave(self, members: Sequence[Member], task: AnnotationTask, deadline: float | None) -> list[Asked]:
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

    async def vote(self, member: Member, task: AnnotationTask, deadline: float | None = None,
                   asked: Asked | None = None) -> Vote:
        """One member's vote; every failure becomes an abstaining vote with its reason.

        A one-pass member answers with its first token's distribution; when that token does not name one
        label, the member is asked again with constrained decoding (the vote's latency covers both). A vote
        on exactly the same request, when the task allows the cache, is answered from it without a call.
        `asked`: the request already shaped and looked up (a wave's, by `wave`).
        """
        if tracing.traces is not None:
            return await tracing.traces.vote(member, self._vote(member, task, deadline, asked))
        return await self._vote(member, task, deadline, asked)

    async def _vote(self, member: Member, task: AnnotationTask, deadline: float | None, asked: Asked | None) -> Vote:
        started = time.perf_counter()
        if asked is None:
            asked = (await self.wave([member], task, deadline))[0]
        if asked.hit is not None:
            return asked.hit
        first_token = asked.first_token
        vote = await self._ask(member, task, deadline, first_token, started, asked.path, asked.body)
        if first_token and vote.error == UNDECIDED:
            vote = await self._ask(member, task, deadline, False, started, *request(member, task, False), spent=vote)
        if self.cache is not None and asked.key is not None:  # a key is made only when the task allows the cache
            self.cache.keep_soon(asked.key, vote)
        return vote

    async def _ask(self, member: Member, task: AnnotationTask, deadline: float | None, first_token: bool,
                   started: float, path: str, body: dict[str, Any], spent: Vote | None = None) -> Vote:
        """One call and its reply read as a vote; `spent`: the undecided one-pass vote this call follows (its
        tokens and cost are this vote's too)."""
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
        labels = task.labels
        if first_token:
            found = decisive_vote(answer.choice, labels)
            probs, label, error = None, None, UNDECIDED
            if found is not None:
                scored, extra = await self._score_missing(member, task, body, found.worth_scoring, deadline)
                probs = found.vote(scored)
                label, error = labels[pick(probs)], None
                if extra is not None:
                    prompt_tokens += extra.prompt_tokens
                    completion_tokens += extra.completion_tokens
                    cost += self.upstreams.account(member.name, extra.prompt_tokens, extra.completion_tokens)
        else:
            label, error = parse_answer(answer.text, labels)
            probs = soft_vote(answer.choice, labels) if label is not None else None
            if probs is not None and probs[labels.index(label)] < max(probs):
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


def _shape(member: Member, task: AnnotationTask) -> Asked:
    first_token = one_pass(member, task)
    return Asked(first_token, *request(member, task, first_token))


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
