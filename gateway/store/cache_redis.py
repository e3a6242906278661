"""The response cache in Redis: shared by every replica, each vote a key `cg:cache:{tenant/hash}` that expires
(SET with PX: the TTL in milliseconds)."""

from __future__ import annotations

import redis.asyncio as aioredis

from gateway.store.cache import CacheStore


class RedisCacheStore(CacheStore):
    def __init__(self, client: aioredis.Redis, prefix: str = "cg:cache:") -> None:
        self.r = client
        self.prefix = prefix

    async def get(self, key: str) -> bytes | None:
        return await self.r.get(self.prefix + key)

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        await self.r.set(self.prefix + key, value, px=max(round(ttl_s * 1000), 1))
