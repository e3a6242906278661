"""Leases that keep one replica doing a job at a time (a refit, a batch finalisation).

One implementation per backend, shared by the vote store and the batch store, on one clock each:
memory leases on an injectable monotonic clock (tests advance it instead of sleeping), Redis
leases as `SET NX PX`, which expire on the server's clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as aioredis


class MemoryLocks:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._until: dict[str, float] = {}

    async def try_lock(self, name: str, ttl_s: float) -> bool:
        now = self.clock()
        if self._until.get(name, 0.0) > now:
            return False
        self._until[name] = now + ttl_s
        return True

    async def unlock(self, name: str) -> None:
        self._until.pop(name, None)


class RedisLocks:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    async def try_lock(self, name: str, ttl_s: float) -> bool:
        return bool(await self.client.set(self.prefix + name, b"1", nx=True, px=max(int(ttl_s * 1000), 1)))

    async def unlock(self, name: str) -> None:
        await self.client.delete(self.prefix + name)
