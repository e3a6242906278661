"""The response cache in Redis: shared by every replica, each vote a key `cg:cache:{tenant/hash}` with an EXPIRE."""

from __future__ import annotations

import math

import redis.asyncio as aioredis

from gateway.store.cache import CacheStore


class RedisCacheStore(CacheStore):
    def __init__(self, client: aioredis.Redis, prefix: str = "cg:cache:") -> None:
        self.r = client
        self.prefix = prefix

    async def get(self, key: str) -> bytes | None:
        return await self.r.get(self.prefix + key)

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        await self.r.set(self.prefix + key, value, ex=max(math.ceil(ttl_s), 1))
