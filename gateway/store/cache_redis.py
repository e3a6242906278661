"""The response cache in Redis: shared by every replica, each vote a key `cg:cache:{tenant/hash}` that expires
(SET with PX: the TTL in milliseconds).

Lookups and writes made in the same turn of the event loop go to Redis together: one script around MGET that
answers only the keys found, and one script that SETs them all (one command to pack and one reply to parse, where a
pipeline of SETs had one of each per vote). Why: every vote looks itself up and is kept, and under a batch job one
round trip per vote (ten Redis calls per item of a 5-member ensemble) more than doubled the gateway's CPU per item
(bench/batch.py --cache). A wave's lookups wait on one future, not one per key, and writes nobody waits for
(put_soon) have no future at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any

import redis.asyncio as aioredis

from gateway.store.cache import CacheStore, Failed

_SET_ALL = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[2 * i - 1], 'PX', ARGV[2 * i])
end
return #KEYS
"""
"""SET each of KEYS to its value (ARGV: value, TTL in milliseconds; per key)."""

_FOUND = """
local values = redis.call('MGET', unpack(KEYS))
local found = {}
for i = 1, #KEYS do
  if values[i] then
    found[#found + 1] = i
    found[#found + 1] = values[i]
  end
end
return found
"""
"""MGET, answering only what is there: (position from 1, value) pairs. New items miss every key, and a reply of
one nil per key cost more to parse than everything else the cache does."""

_MGET_KEYS = 4096
"""Keys per script call at most: Lua's unpack() has a stack limit (8000)."""


class RedisCacheStore(CacheStore):
    def __init__(self, client: aioredis.Redis, prefix: str = "cg:cache:") -> None:
        self.r = client
        self.prefix = prefix
        self._set_all = client.register_script(_SET_ALL)
        self._found = client.register_script(_FOUND)
        self._gets: list[tuple[Sequence[str], asyncio.Future[list[bytes | None]]]] = []
        self._puts: dict[str, tuple[bytes, int]] = {}
        self._put_waiters: list[asyncio.Future[None]] = []
        self._put_failed: set[Failed] = set()
        self._flushing = False
        self._sending: set[asyncio.Task[None]] = set()

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        waiter: asyncio.Future[list[bytes | None]] = asyncio.get_running_loop().create_future()
        self._gets.append((keys, waiter))
        self._flush_soon()
        return await waiter

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._put_waiters.append(waiter)
        self._queue_put(key, value, ttl_s)
        await waiter

    def put_soon(self, key: str, value: bytes, ttl_s: float, failed: Failed) -> None:
        self._put_failed.add(failed)
        self._queue_put(key, value, ttl_s)

    def _queue_put(self, key: str, value: bytes, ttl_s: float) -> None:
        self._puts[key] = (value, max(round(ttl_s * 1000), 1))
        self._flush_soon()

    def _flush_soon(self) -> None:
        if not self._flushing:  # the first of this turn: send them all at its end
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        gets, self._gets = self._gets, []
        if gets:
            self._send(self._send_gets(gets), [waiter for _, waiter in gets])
        if self._puts:
            puts, waiters, failed = self._puts, self._put_waiters, self._put_failed
            self._puts, self._put_waiters, self._put_failed = {}, [], set()
            self._send(self._send_puts(puts, waiters), waiters, failed)

    def _send(self, call: Coroutine[Any, Any, None], waiters: Sequence[asyncio.Future[Any]],
              failed: set[Failed] | None = None) -> None:
        """Run `call`; if it fails, so does each of `waiters` (each caller meets the store's error itself), and
        each of `failed` is told once."""
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
            if isinstance(failure, Exception):
                for tell in failed or ():
                    tell(failure)

        task.add_done_callback(settle)

    async def _send_gets(self, gets: list[tuple[Sequence[str], asyncio.Future[list[bytes | None]]]]) -> None:
        prefix = self.prefix
        wanted = [prefix + key for keys, _ in gets for key in keys]
        values: list[bytes | None] = [None] * len(wanted)
        for start in range(0, len(wanted), _MGET_KEYS):
            found = await self._found(keys=wanted[start:start + _MGET_KEYS])
            for at in range(0, len(found), 2):
                values[start + found[at] - 1] = found[at + 1]
        start = 0
        for keys, waiter in gets:
            end = start + len(keys)
            if not waiter.done():
                waiter.set_result(values[start:end])
            start = end

    async def _send_puts(self, puts: dict[str, tuple[bytes, int]], waiters: Sequence[asyncio.Future[None]]) -> None:
        prefix = self.prefix
        await self._set_all(keys=[prefix + key for key in puts],
                            args=[part for value, ttl_ms in puts.values() for part in (value, ttl_ms)])
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
