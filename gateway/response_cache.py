"""The exact response cache: a member asked exactly what it was asked before gives its stored vote again.

Why: re-running a job or an evaluation asks every member the same prompts again, and pays again for answers
it already has. As LiteLLM's and Portkey's exact caches do, a request identical in every part reuses the
answer: the same member (name, endpoint, upstream model id), the same request as it is sent to the member
(the rendered prompt or messages, the constraint listing the labels, every sampling parameter: temperature,
top_p, seed, max_tokens, ...; one pass or decoded), and the same label set (canonical and as the client
spelled it). Any exact match is reused, whatever its temperature: a client that wants a fresh sample sends
another `seed`, or `cache: false`. A cached vote comes back with `cached: true`, cost 0 and no tokens, and no
call is made. Kept are the votes a member answered (a label, or an answer outside the set); a failed call
(timeout, HTTP error, malformed reply) is never kept, so the next run asks again.

Keys are hashes, scoped per tenant (gateway/tenancy.py): one tenant's votes never answer another's. The
store is the vote store's (Redis in production, with EXPIRE; this process's memory, bounded, by default).
A store outage is no cache: the member is asked, the answer is unharmed, and gateway/store/health.py logs
the outage once (component `cache`), not per request.

What it costs on new items (every lookup misses, every vote is kept) is paid on every vote, so the request path
looks a wave's members up in one store call (lookup_many), keeps their votes without waiting for the write
(keep_soon), and the memory store keeps the record itself rather than its JSON.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import orjson

from ensembles.votes import Vote
from gateway import metrics
from gateway.config import CacheSettings, Member
from gateway.store.cache import CacheStore
from gateway.store.health import STORE_ERRORS, StoreHealth
from gateway.task import AnnotationTask
from gateway.tenancy import scoped

log = logging.getLogger("crowd_gateway.cache")

FORMAT = 1
"""Part of every key: raise it when what a stored vote means changes, and older entries are never read again."""


STORED = ("label", "raw", "probs", "error", "cost_usd")
"""A kept vote's fields, in this order: a tuple in the memory store (not encoded, and a tuple of atomic values is
one the garbage collector soon stops visiting), a JSON object with these names in Redis."""


class ResponseCache:
    def __init__(self, store: CacheStore, settings: CacheSettings, health: StoreHealth) -> None:
        self.store = store
        self.ttl_s = settings.ttl_s
        self.health = health

    @staticmethod
    def key(tenant: str, member: Member, path: str, body: dict[str, Any], first_token: bool,
            task: AnnotationTask) -> str:
        """The tenant-scoped key of `member`'s vote on exactly this request."""
        parts = [FORMAT, member.name, member.base_url, member.model, path, first_token, task.labels,
                 task.label_set.asked, body]
        digest = hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
        return scoped(tenant, digest)

    async def lookup(self, key: str, member: str) -> Vote | None:
        """The stored vote (`cached`, cost 0, no tokens), or None: absent, expired, or the store unavailable."""
        return (await self.lookup_many([key], [member]))[0]

    async def lookup_many(self, keys: Sequence[str], members: Sequence[str]) -> list[Vote | None]:
        """`lookup` of each (key, member) pair in one store call: a wave's members are looked up together."""
        values = await self._get_many(keys)
        votes: list[Vote | None] = []
        for value, member in zip(values, members):
            found = _stored(value)
            if found is None:
                metrics.child(metrics.CACHE_LOOKUPS, member, "miss").inc()
                votes.append(None)
                continue
            label, raw, probs, error, cost_usd = found
            metrics.child(metrics.CACHE_LOOKUPS, member, "hit").inc()
            metrics.child(metrics.CACHE_SAVED, member).inc(cost_usd or 0.0)
            votes.append(Vote(member=member, label=label, raw=raw, probs=tuple(probs) if probs else None, error=error,
                              cached=True))
        return votes

    async def _get_many(self, keys: Sequence[str]) -> list[Any]:
        if not keys:
            return []
        if not self.health.up:
            self.health.skipped("cache")
            return [None] * len(keys)
        try:
            return await self.store.get_many(keys)
        except STORE_ERRORS as exc:
            self.health.failed("cache", exc)
            return [None] * len(keys)

    async def keep(self, key: str, vote: Vote) -> None:
        """Store a vote the member answered (a failed call is not kept) and wait for the write; a store that
        cannot keep it costs the next run a call, never this answer."""
        value = self._value(vote)
        if value is None:
            return
        try:
            await self.store.put(key, value, self.ttl_s)
        except STORE_ERRORS as exc:
            self.health.failed("cache", exc)

    def keep_soon(self, key: str, vote: Vote) -> None:
        """`keep` off the answer's critical path: the write is made after this turn, a failure is logged."""
        value = self._value(vote)
        if value is not None:
            self.store.put_soon(key, value, self.ttl_s, self._failed)

    def _value(self, vote: Vote) -> Any:
        """What the store keeps for `vote` (None: not kept): the tuple itself where the store keeps objects."""
        if vote.raw is None or vote.cached:
            return None
        if not self.health.up:
            self.health.skipped("cache")
            return None
        stored = (vote.label, vote.raw, vote.probs, vote.error, vote.cost_usd)
        return stored if self.store.objects else orjson.dumps(dict(zip(STORED, stored)))

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, STORE_ERRORS):
            self.health.failed("cache", exc)
        else:
            log.error("response cache write failed: %r", exc)


def _stored(value: Any) -> tuple[Any, ...] | None:
    """A kept vote's fields (STORED): kept as they are (the memory store), or decoded; None when absent or
    unreadable."""
    if value is None or isinstance(value, tuple):
        return value
    try:
        found = orjson.loads(value)
    except orjson.JSONDecodeError:  # not written by this code (another version, a hand edit): asked anew
        return None
    return tuple(found.get(name) for name in STORED) if isinstance(found, dict) else None
