"""Store backends: in-memory by default, Redis in production (several replicas share it)."""

from __future__ import annotations

import os

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.config import ConfigError, StoreSettings


def redis_client(settings: StoreSettings) -> aioredis.Redis:
    """An asyncio Redis client from the URL in the environment variable the config names."""
    url = os.environ.get(settings.redis_url_env)
    if not url:
        raise ConfigError(f"store.backend is redis but ${settings.redis_url_env} is not set to a redis:// URL")
    # A blocking pool: a burst beyond `max_connections` waits up to `timeout` for a free connection instead of
    # failing at once (MaxConnectionsError lost a quarter of a burst's votes with the default pool).
    # Every call is bounded (a stalled Redis fails it in socket_timeout_s instead of hanging it: issue 20); a
    # connection the server closed (a Redis restart) is reconnected once at once, a timeout is never retried.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=settings.max_connections, timeout=settings.pool_timeout_s, decode_responses=False,
        socket_connect_timeout=settings.connect_timeout_s, socket_timeout=settings.socket_timeout_s,
        socket_keepalive=True, retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
    return aioredis.Redis(connection_pool=pool)
