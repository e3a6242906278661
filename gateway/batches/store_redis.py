"""Batch store in Redis: jobs survive a restart and replicas share them without running a line twice.

Every step of the line protocol that reads and then writes is one Lua script, so it is atomic
against other replicas. Lease expiries use the Redis server's clock (TIME), so replicas whose
clocks disagree still agree on when a lease has run out. Keys of one batch share a hash tag.

Keys: `crowd:file:{id}` (hash: meta, content), `crowd:file:{id}:lines` (list of request lines),
`crowd:files:{owner}` (zset of one tenant's file ids by upload time; expired files are dropped when listed),
`crowd:batch:{id}` (hash: the record, counters, `next` cursor, `sealed`), `...:leases` (zset
line -> expiry ms), `...:owners` (hash line -> worker), `...:results` (hash line -> flag+line),
`crowd:batches` and `crowd:batches:active` (zsets by creation time), `crowd:lock:*`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis

from gateway.batches.protocol import Record
from gateway.batches.store import UnknownCursor
from gateway.store.locks import RedisLocks
from gateway.tenancy import DEFAULT

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: batch, leases, owners, results. ARGV: worker, n, lease_ms.
_CLAIM = _NOW_MS + """
if redis.call('HGET', KEYS[1], 'status') ~= 'in_progress' then return {} end
local n = tonumber(ARGV[2])
local expiry = now + tonumber(ARGV[3])
local out = {}
for _, line in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, n)) do
  if redis.call('HEXISTS', KEYS[4], line) == 1 then
    redis.call('ZREM', KEYS[2], line)
    redis.call('HDEL', KEYS[3], line)
  else
    redis.call('ZADD', KEYS[2], expiry, line)
    redis.call('HSET', KEYS[3], line, ARGV[1])
    out[#out + 1] = tonumber(line)
  end
end
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
local nxt = tonumber(redis.call('HGET', KEYS[1], 'next') or '0')
while #out < n and nxt < total do
  redis.call('ZADD', KEYS[2], expiry, nxt)
  redis.call('HSET', KEYS[3], nxt, ARGV[1])
  out[#out + 1] = nxt
  nxt = nxt + 1
end
redis.call('HSET', KEYS[1], 'next', nxt)
return out
"""

# KEYS: leases, owners. ARGV: worker, lease_ms (0: release), lines... Returns leases now owned by others.
_RENEW = _NOW_MS + """
local expiry = 0
if tonumber(ARGV[2]) > 0 then expiry = now + tonumber(ARGV[2]) end
local lost = 0
for i = 3, #ARGV do
  local owner = redis.call('HGET', KEYS[2], ARGV[i])
  if owner == ARGV[1] then
    redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
  elseif owner then
    lost = lost + 1
  end
end
return lost
"""

# KEYS: batch, results, leases, owners. ARGV: line, flag+result, counter field.
_COMPLETE = """
local status = redis.call('HGET', KEYS[1], 'status')
if (status ~= 'in_progress' and status ~= 'cancelling') or redis.call('HGET', KEYS[1], 'sealed') == '1' then
  return 0
end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
"""

# KEYS: batch. ARGV: target, number of sources, sources..., field, value, ...
_TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
local n = tonumber(ARGV[2])
local allowed = false
for i = 3, 2 + n do
  if ARGV[i] == status then allowed = true end
end
if not allowed then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
for i = 3 + n, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

_LIVE = _NOW_MS + "return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')"

_JSON_FIELDS = frozenset({"metadata", "usage"})
_INT_FIELDS = frozenset({"created_at", "expires_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at",
                         "expired_at", "cancelling_at", "cancelled_at", "total", "completed", "failed", "next",
                         "sealed"})


def _owned(owner: str) -> str:
    """The index of one tenant's batches, newest last (tenant names are from the config or hashes of keys)."""
    return f"crowd:batches:{{{owner}}}"

_ACTIVE = "crowd:batches:active"


def _owned_files(owner: str) -> str:
    return f"crowd:files:{{{owner}}}"


def _file_key(file_id: str) -> str:
    return f"crowd:file:{{{file_id}}}"


def _batch_key(batch_id: str, part: str = "") -> str:
    return f"crowd:batch:{{{batch_id}}}" + (f":{part}" if part else "")


def _encode(fields: dict[str, Any]) -> dict[str, bytes | str | int]:
    out: dict[str, bytes | str | int] = {}
    for name, value in fields.items():
        if value is None:
            continue
        out[name] = orjson.dumps(value) if name in _JSON_FIELDS else value
    return out


def _decode(raw: dict[bytes, bytes]) -> Record:
    rec: Record = {}
    for key, value in raw.items():
        name = key.decode()
        if name in _INT_FIELDS:
            rec[name] = int(value)
        elif name in _JSON_FIELDS:
            rec[name] = orjson.loads(value)
        else:
            rec[name] = value.decode()
    return rec


class RedisBatchStore:
    def __init__(self, client: aioredis.Redis, retention_s: float) -> None:
        self.redis = client
        self.locks = RedisLocks(client, "crowd:lock:")
        self.retention_s = int(retention_s)
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._complete = client.register_script(_COMPLETE)
        self._transition = client.register_script(_TRANSITION)
        self._live = client.register_script(_LIVE)

    async def put_file(self, rec: Record, content: bytes, lines: Sequence[bytes] = ()) -> None:
        key = _file_key(rec["id"])
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key, key + ":lines")
            pipe.hset(key, mapping={"meta": orjson.dumps(rec), "content": content})
            pipe.expire(key, self.retention_s)
            if lines:
                pipe.rpush(key + ":lines", *lines)
                pipe.expire(key + ":lines", self.retention_s)
            pipe.zadd(_owned_files(rec.get("owner", DEFAULT)), {rec["id"]: time.time()})
            await pipe.execute()

    async def get_file(self, file_id: str) -> Record | None:
        meta = await self.redis.hget(_file_key(file_id), "meta")
        return orjson.loads(meta) if meta else None

    async def file_content(self, file_id: str) -> bytes | None:
        return await self.redis.hget(_file_key(file_id), "content")

    async def list_files(self, owner: str) -> list[Record]:
        index = _owned_files(owner)
        ids = [i.decode() for i in await self.redis.zrevrange(index, 0, -1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for file_id in ids:
                pipe.hget(_file_key(file_id), "meta")
            metas = await pipe.execute()
        expired = [file_id for file_id, meta in zip(ids, metas) if meta is None]
        if expired:
            await self.redis.zrem(index, *expired)
        return [orjson.loads(meta) for meta in metas if meta is not None]

    async def delete_file(self, file_id: str) -> bool:
        rec = await self.get_file(file_id)
        if rec is None:
            return False
        key = _file_key(file_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key, key + ":lines")
            pipe.zrem(_owned_files(rec.get("owner", DEFAULT)), file_id)
            await pipe.execute()
        return True

    async def create_batch(self, rec: Record) -> None:
        key = _batch_key(rec["id"])
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=_encode({**rec, "next": 0}))
            pipe.expire(key, self.retention_s)
            score = time.time()
            pipe.zadd(_owned(rec.get("owner", DEFAULT)), {rec["id"]: score})
            pipe.zadd(_ACTIVE, {rec["id"]: score})
            await pipe.execute()

    async def get_batch(self, batch_id: str) -> Record | None:
        raw = await self.redis.hgetall(_batch_key(batch_id))
        return _decode(raw) if raw else None

    async def list_batches(self, after: str | None, limit: int, owner: str) -> tuple[list[Record], bool]:
        index = _owned(owner)
        start = 0
        if after is not None:
            rank = await self.redis.zrevrank(index, after)
            if rank is None:
                raise UnknownCursor(after)
            start = rank + 1
        ids = await self.redis.zrevrange(index, start, start + limit)
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in ids[:limit]:
                pipe.hgetall(_batch_key(batch_id.decode()))
            raws = await pipe.execute()
        return [_decode(raw) for raw in raws if raw], len(ids) > limit

    async def active_batches(self) -> list[str]:
        return [member.decode() for member in await self.redis.zrange(_ACTIVE, 0, -1)]

    async def transition(self, batch_id: str, sources: Sequence[str], target: str, **fields: Any) -> bool:
        pairs = [item for name, value in _encode(fields).items() for item in (name, value)]
        return bool(await self._transition(keys=[_batch_key(batch_id)],
                                           args=[target, len(sources), *sources, *pairs]))

    async def claim(self, batch_id: str, input_file_id: str, worker: str, n: int,
                    lease_s: float) -> list[tuple[int, bytes]]:
        keys = [_batch_key(batch_id), _batch_key(batch_id, "leases"), _batch_key(batch_id, "owners"),
                _batch_key(batch_id, "results")]
        lines = [int(line) for line in await self._claim(keys=keys, args=[worker, n, int(lease_s * 1000)])]
        if not lines:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for line in lines:
                pipe.lindex(_file_key(input_file_id) + ":lines", line)
            requests = await pipe.execute()
        return list(zip(lines, requests))

    async def renew(self, batch_id: str, worker: str, lines: Sequence[int], lease_s: float) -> int:
        if not lines:
            return 0
        keys = [_batch_key(batch_id, "leases"), _batch_key(batch_id, "owners")]
        return int(await self._renew(keys=keys, args=[worker, max(int(lease_s * 1000), 1), *lines]))

    async def release(self, batch_id: str, worker: str, lines: Sequence[int]) -> None:
        if lines:
            await self._renew(keys=[_batch_key(batch_id, "leases"), _batch_key(batch_id, "owners")],
                              args=[worker, 0, *lines])

    async def complete(self, batch_id: str, line: int, ok: bool, result: bytes) -> bool:
        keys = [_batch_key(batch_id), _batch_key(batch_id, "results"), _batch_key(batch_id, "leases"),
                _batch_key(batch_id, "owners")]
        flagged = (b"1" if ok else b"0") + result
        return bool(await self._complete(keys=keys, args=[line, flagged, "completed" if ok else "failed"]))

    async def live_leases(self, batch_id: str) -> int:
        return int(await self._live(keys=[_batch_key(batch_id, "leases")]))

    async def seal(self, batch_id: str) -> None:
        await self.redis.hset(_batch_key(batch_id), "sealed", 1)

    async def results(self, batch_id: str) -> list[tuple[bool, bytes]]:
        raw = await self.redis.hgetall(_batch_key(batch_id, "results"))
        return [(raw[k][:1] == b"1", raw[k][1:]) for k in sorted(raw, key=int)]

    async def try_lock(self, name: str, ttl_s: float) -> bool:
        return await self.locks.try_lock(name, ttl_s)

    async def retire(self, batch_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(_ACTIVE, batch_id)
            pipe.delete(*(_batch_key(batch_id, part) for part in ("leases", "owners", "results")))
            await pipe.execute()

    async def close(self) -> None:
        await self.redis.aclose()
