"""The Redis vote store: shared by several gateway replicas; multi-key writes are atomic Lua scripts.

Keys (prefix `cg:`): `item:{h}` the item record and `item:{h}:votes` its votes, one per member, the
latest replacing an earlier one (both expire after the retention; `h` is a hash of the item id, so
no client-chosen id can name another item's keys), `schema:{s}:items` a sorted set of item ids by time (trimmed to the
retention), `schema:{s}:people` the ids of items people labelled, `schemas` label sets, `new` items since the last
refit and `refitted` when it began, `gold:{s}` gold labels,
`params`/`params:versions`/`params:version` published parameters, `review` and `review:order`
the review queue, `lock:{name}` refit leases.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import redis.asyncio as aioredis

from ensembles.votes import HUMAN_PREFIX
from gateway.store.locks import RedisLocks
from gateway.store.sampling import FitVotes, sample_positions
from gateway.store.votes import ItemRecord, Published, Source, VoteStore
from gateway.tenancy import DEFAULT, owns

_RECORD = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[6])
local added = redis.call('ZADD', KEYS[3], 'NX', ARGV[2], ARGV[3])
if added == 1 then redis.call('HINCRBY', KEYS[5], ARGV[4], 1) end
redis.call('HSET', KEYS[4], ARGV[4], ARGV[5])
for i = 8, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[2], ARGV[6])
if ARGV[7] == '1' then
  redis.call('SADD', KEYS[6], ARGV[3])
  redis.call('EXPIRE', KEYS[6], ARGV[6])
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[6]))
return added
"""

_TAKE = """
local n = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return tonumber(n or '0')
"""

_AT_RANKS = """
local out = {}
for i = 1, #ARGV do out[i] = redis.call('ZRANGE', KEYS[1], ARGV[i], ARGV[i])[1] or false end
return out
"""

_PUBLISH = """
local v = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[3])
return v
"""

_SEP = "\x1f"


class RedisVoteStore(VoteStore):
    def __init__(self, client: aioredis.Redis, retention_s: float = 30 * 86400, prefix: str = "cg:") -> None:
        self.r = client
        self.ttl = int(retention_s)
        self.p = prefix
        self.locks = RedisLocks(client, self._k("lock", ""))
        self._record = client.register_script(_RECORD)
        self._take = client.register_script(_TAKE)
        self._publish = client.register_script(_PUBLISH)
        self._at_ranks = client.register_script(_AT_RANKS)

    def _k(self, *parts: str) -> str:
        return self.p + ":".join(parts)

    def _item(self, item_id: str, *parts: str) -> str:
        return self._k("item", hashlib.blake2b(item_id.encode(), digest_size=16).hexdigest(), *parts)

    async def record(self, item: ItemRecord, votes: list[dict[str, Any]]) -> None:
        people = any(v["member"].startswith(HUMAN_PREFIX) for v in votes)
        await self._record(
            keys=[self._item(item.item_id), self._item(item.item_id, "votes"),
                  self._k("schema", item.schema, "items"), self._k("schemas"), self._k("new"),
                  self._k("schema", item.schema, "people")],
            args=[orjson.dumps(item.wire()), item.created, item.item_id, item.schema, orjson.dumps(item.labels),
                  self.ttl, int(people), *(part for v in votes for part in (v["member"], orjson.dumps(v)))])

    async def item(self, item_id: str) -> tuple[ItemRecord, list[dict[str, Any]]] | None:
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.get(self._item(item_id))
            pipe.hvals(self._item(item_id, "votes"))
            raw, votes = await pipe.execute()
        if raw is None:
            return None
        return ItemRecord(**orjson.loads(raw)), [orjson.loads(v) for v in votes]

    async def item_votes(self, schema: str) -> dict[str, list[dict[str, Any]]]:
        return await self._votes([i.decode() for i in await self.r.zrange(self._k("schema", schema, "items"), 0, -1)])

    async def fit_votes(self, schema: str, max_items: int) -> FitVotes:
        index, people_key = self._k("schema", schema, "items"), self._k("schema", schema, "people")
        total = int(await self.r.zcard(index))
        if not total:
            return FitVotes({}, 0)
        recent, older = sample_positions(schema, total, max_items)
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hkeys(self._k("gold", schema))
            pipe.smembers(people_key)
            pipe.zrange(index, -len(recent), -1)
            gold, people, newest = await pipe.execute()
        sampled = await self._at_ranks(keys=[index], args=older) if older else []
        chosen = dict.fromkeys(i.decode() for i in [*sorted(gold), *sorted(people), *sampled, *newest] if i)
        votes = await self._votes(list(chosen))
        if stale := [i for i in people if not votes.get(i.decode())]:  # their items expired
            await self.r.srem(people_key, *stale)
        return FitVotes({i: v for i, v in votes.items() if v}, total)

    async def _votes(self, items: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Each item's votes, read in pipelines of 500."""
        out: dict[str, list[dict[str, Any]]] = {}
        for start in range(0, len(items), 500):
            chunk = items[start:start + 500]
            async with self.r.pipeline(transaction=False) as pipe:
                for item_id in chunk:
                    pipe.hvals(self._item(item_id, "votes"))
                for item_id, votes in zip(chunk, await pipe.execute()):
                    out[item_id] = [orjson.loads(raw) for raw in votes]
        return out

    async def add_label(self, item: ItemRecord, label: str, source: Source, who: str) -> bool:
        if source == "gold":
            async with self.r.pipeline(transaction=True) as pipe:
                pipe.hset(self._k("gold", item.schema), item.item_id, label)
                pipe.set(self._item(item.item_id), orjson.dumps(item.wire()), ex=self.ttl, nx=True)
                pipe.zadd(self._k("schema", item.schema, "items"), {item.item_id: item.created}, nx=True)
                pipe.hset(self._k("schemas"), item.schema, orjson.dumps(item.labels))
                added, *_ = await pipe.execute()
            return bool(added)
        await self.record(item, [{"member": HUMAN_PREFIX + who, "label": label, "raw": label}])
        return False

    async def gold(self, schema: str) -> dict[str, str]:
        raw = await self.r.hgetall(self._k("gold", schema))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def schemas(self) -> dict[str, list[str]]:
        raw = await self.r.hgetall(self._k("schemas"))
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    async def pending(self, schema: str) -> tuple[int, float | None]:
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hget(self._k("new"), schema)
            pipe.hget(self._k("refitted"), schema)
            new, refitted = await pipe.execute()
        return int(new or 0), None if refitted is None else float(refitted)

    async def take_new_items(self, schema: str, now: float) -> int:
        return int(await self._take(keys=[self._k("new"), self._k("refitted")], args=[schema, now]))

    async def publish(self, schema: str, aggregator: str, params: dict[str, Any]) -> int:
        return int(await self._publish(
            keys=[self._k("params"), self._k("params", "versions"), self._k("params", "version")],
            args=[schema + _SEP + aggregator, orjson.dumps(params)]))

    async def published(self) -> tuple[int, dict[tuple[str, str], Published]]:
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.get(self._k("params", "version"))
            pipe.hgetall(self._k("params"))
            pipe.hgetall(self._k("params", "versions"))
            version, params, versions = await pipe.execute()
        out = {}
        for field, raw in params.items():
            schema, aggregator = field.decode().split(_SEP, 1)
            out[(schema, aggregator)] = Published(int(versions[field]), orjson.loads(raw))
        return int(version or 0), out

    async def published_version(self) -> int:
        return int(await self.r.get(self._k("params", "version")) or 0)

    async def enqueue_review(self, entry: dict[str, Any]) -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(self._k("review"), entry["item_id"], orjson.dumps(entry))
            pipe.zadd(self._k("review", "order"), {entry["item_id"]: entry["queued_at"]})
            await pipe.execute()

    async def reviews(self, limit: int, tenant: str = DEFAULT) -> list[dict[str, Any]]:
        ids = [i for i in await self.r.zrange(self._k("review", "order"), 0, -1) if owns(tenant, i.decode())][:limit]
        if not ids:
            return []
        raw = await self.r.hmget(self._k("review"), ids)
        return [orjson.loads(r) for r in raw if r is not None]

    async def resolve_review(self, item_id: str) -> bool:
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hdel(self._k("review"), item_id)
            pipe.zrem(self._k("review", "order"), item_id)
            removed, _ = await pipe.execute()
        return bool(removed)

    async def review_count(self) -> int:
        return int(await self.r.zcard(self._k("review", "order")))

    async def try_lock(self, name: str, ttl_s: float) -> bool:
        return await self.locks.try_lock(name, ttl_s)

    async def unlock(self, name: str) -> None:
        await self.locks.unlock(name)

    async def ping(self) -> None:
        await self.r.ping()

    async def close(self) -> None:
        await self.r.aclose()
