"""What one gateway process holds between requests: config, upstream client, one annotator per ensemble."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ensembles.aggregators import get_aggregator
from gateway.admission import Admission
from gateway.annotate import Annotator
from gateway.config import Config, ConfigError, Limits, Member
from gateway.reliability import Reliability
from gateway.response_cache import ResponseCache
from gateway.store import redis_client
from gateway.store.cache import CacheStore, MemoryCacheStore
from gateway.store.cache_redis import RedisCacheStore
from gateway.store.health import StoreHealth
from gateway.store.limiter import Limiter, MemoryLimiter
from gateway.store.limiter_redis import RedisLimiter
from gateway.store.votes import MemoryVoteStore, VoteStore
from gateway.store.votes_redis import RedisVoteStore
from gateway.upstream.client import Connector, Upstreams, tcp_connector
from gateway.upstream.grouping import Grouper
from routers import get_router


@dataclass
class GatewayState:
    config: Config
    upstreams: Upstreams
    grouper: Grouper
    annotators: dict[str, Annotator]
    members: dict[str, Member]
    api_keys: dict[str, str]
    """Accepted key -> tenant; empty when authentication is off."""
    store: VoteStore
    health: StoreHealth
    """Whether the store answers, shared by everything that uses it (the vote store and the batch store)."""
    reliability: Reliability
    admission: Admission
    metered: dict[str, Limits]
    """Metered tenant -> its limits (gateway/budgets.py): the completion routes' one check for every request."""
    limiter: Limiter | None
    """Where every replica's limit checks and spend meet; None when no tenant is metered."""
    started: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def build(cls, config: Config, connector: Connector = tcp_connector) -> GatewayState:
        """Wire the config's names to objects; unknown aggregator or router names are config errors. `connector`:
        how member calls travel (Upstreams)."""
        members = {m.name: m for m in config.members}
        upstreams = Upstreams(config.members, config.gateway.breaker, connector=connector)
        grouping = config.batches.grouping
        grouper = Grouper(upstreams, grouping.max_prompts, grouping.max_wait_ms / 1000)
        retention_s = config.store.retention_days * 86400
        store: VoteStore
        cached: CacheStore
        client = redis_client(config.store) if config.store.backend == "redis" else None
        if client is not None:
            store, cached = RedisVoteStore(client, retention_s), RedisCacheStore(client)
        else:
            store, cached = MemoryVoteStore(retention_s), MemoryCacheStore(config.cache.max_entries)
        health = StoreHealth(lambda: store.ping())
        cache = ResponseCache(cached, config.cache, health) if config.cache.enabled else None
        annotators = {}
        for ens in config.ensembles:
            try:
                annotators[ens.name] = Annotator(ens, members, upstreams, get_router(ens.router),
                                                 get_aggregator(ens.aggregator), grouper, cache)
            except KeyError as exc:
                raise ConfigError(f"invalid config: ensembles.{ens.name}: {exc.args[0]}") from None
        api_keys = config.gateway.api_keys()
        metered = config.gateway.tenant_limits(api_keys)
        limiter = (RedisLimiter(client) if client else MemoryLimiter()) if metered else None
        return cls(config=config, upstreams=upstreams, grouper=grouper, annotators=annotators, members=members,
                   api_keys=api_keys, store=store, health=health,
                   reliability=Reliability(store, config, health), admission=Admission(config.gateway, upstreams),
                   metered=metered, limiter=limiter)
