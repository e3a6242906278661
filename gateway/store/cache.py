"""Where the response cache keeps member votes: an interface, and the in-memory backend (bounded, with TTL).

The Redis backend (cache_redis.py) shares the vote store's connection pool; keys expire by Redis' own EXPIRE.
Keys are already tenant-scoped and hashed by gateway/response_cache.py. Values are opaque to the store: bytes,
or (in a store that keeps `objects`) the caller's record itself, which saves encoding and decoding every vote.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

Failed = Callable[[Exception], None]
"""Told of a write nobody waits for that failed (put_soon)."""


class CacheStore(ABC):
    """Async like the vote store, so the Redis backend never blocks the event loop."""

    objects = False
    """True: any value is kept as it is (this process's memory); False: values are bytes."""

    @abstractmethod
    async def get_many(self, keys: Sequence[str]) -> list[Any]:
        """The value stored under each of `keys` (None where absent or expired), in one store call."""

    async def get(self, key: str) -> Any:
        """The value stored under `key`, None when absent or expired."""
        return (await self.get_many([key]))[0]

    @abstractmethod
    async def put(self, key: str, value: Any, ttl_s: float) -> None:
        """Store `value` under `key` for `ttl_s` seconds (replacing what was there)."""

    @abstractmethod
    def put_soon(self, key: str, value: Any, ttl_s: float, failed: Failed) -> None:
        """`put` without waiting for it: the write is made after this turn of the event loop, and if it fails
        `failed` is told (it never raises to the caller)."""


class MemoryCacheStore(CacheStore):
    """One process's cache: at most `max_entries`, the least recently used dropped first."""

    objects = True

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self.entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        """Key -> (expiry on `clock`, value), least recently used first."""

    async def get_many(self, keys: Sequence[str]) -> list[Any]:
        return [self._get(key) for key in keys]

    def _get(self, key: str) -> Any:
        found = self.entries.get(key)
        if found is None:
            return None
        if found[0] <= self.clock():
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return found[1]

    async def put(self, key: str, value: Any, ttl_s: float) -> None:
        self._put(key, value, ttl_s)

    def put_soon(self, key: str, value: Any, ttl_s: float, failed: Failed) -> None:
        self._put(key, value, ttl_s)  # a dict write: nothing to wait for, nothing that fails

    def _put(self, key: str, value: Any, ttl_s: float) -> None:
        entries = self.entries
        entries[key] = (self.clock() + ttl_s, value)
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
