"""The response cache in Redis: shared by every replica, each vote a key `cg:cache:{tenant/hash}` that expires
(SET with PX: the TTL in milliseconds).

Lookups and writes made in the same turn of the event loop go to Redis together, as one MGET and one pipeline of
SETs. Why: every vote looks itself up and is kept, and under a batch job one round trip per vote (ten Redis calls
per item of a 5-member ensemble) more than doubled the gateway's CPU per item (bench/batch.py --cache).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any

import redis.asyncio as aioredis

from gateway.store.cache import CacheStore


class RedisCacheStore(CacheStore):
    def __init__(self, client: aioredis.Redis, prefix: str = "cg:cache:") -> None:
        self.r = client
        self.prefix = prefix
        self._gets: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._puts: dict[str, tuple[bytes, int, list[asyncio.Future[None]]]] = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> bytes | None:
        waiter: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._gets.setdefault(key, []).append(waiter)
        self._flush_soon()
        return await waiter

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._puts[key][2] if key in self._puts else []
        self._puts[key] = (value, max(round(ttl_s * 1000), 1), [*waiters, waiter])
        self._flush_soon()
        await waiter

    def _flush_soon(self) -> None:
        if len(self._gets) + len(self._puts) == 1:  # the first of this turn: send them all at its end
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        gets, puts = self._gets, self._puts
        self._gets, self._puts = {}, {}
        if gets:
            self._send(self._send_gets(gets), [w for waiters in gets.values() for w in waiters])
        if puts:
            self._send(self._send_puts(puts), [w for _, _, waiters in puts.values() for w in waiters])

    def _send(self, call: Coroutine[Any, Any, None], waiters: Sequence[asyncio.Future[Any]]) -> None:
        """Run `call`; if it fails, so does each of `waiters` (each caller meets the store's error itself)."""
        task = asyncio.ensure_future(call)
        self._sending.add(task)

        def settle(done: asyncio.Task[None]) -> None:
            self._sending.discard(done)
            failure = None if done.cancelled() else done.exception()
            for waiter in waiters:
                if waiter.done():
                    continue
                if done.cancelled():
                    waiter.cancel()
                elif failure is not None:
                    waiter.set_exception(failure)

        task.add_done_callback(settle)

    async def _send_gets(self, gets: dict[str, list[asyncio.Future[bytes | None]]]) -> None:
        keys = list(gets)
        values = await self.r.mget([self.prefix + key for key in keys])
        for key, value in zip(keys, values):
            for waiter in gets[key]:
                if not waiter.done():
                    waiter.set_result(value)

    async def _send_puts(self, puts: dict[str, tuple[bytes, int, list[asyncio.Future[None]]]]) -> None:
        async with self.r.pipeline(transaction=False) as pipe:
            for key, (value, ttl_ms, _) in puts.items():
                pipe.set(self.prefix + key, value, px=ttl_ms)
            await pipe.execute()
        for _, _, waiters in puts.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
