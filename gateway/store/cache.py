"""Where the response cache keeps member votes: an interface, and the in-memory backend (bounded, with TTL).

The Redis backend (cache_redis.py) shares the vote store's connection pool; keys expire by Redis' own EXPIRE.
Keys are already tenant-scoped and hashed by gateway/response_cache.py; values are opaque bytes.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable


class CacheStore(ABC):
    """Async like the vote store, so the Redis backend never blocks the event loop."""

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The value stored under `key`, None when absent or expired."""

    @abstractmethod
    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store `value` under `key` for `ttl_s` seconds (replacing what was there)."""


class MemoryCacheStore(CacheStore):
    """One process's cache: at most `max_entries`, the least recently used dropped first."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self.entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        """Key -> (expiry on `clock`, value), least recently used first."""

    async def get(self, key: str) -> bytes | None:
        found = self.entries.get(key)
        if found is None:
            return None
        if found[0] <= self.clock():
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return found[1]

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self.entries[key] = (self.clock() + ttl_s, value)
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
