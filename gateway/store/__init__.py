"""Store backends: in-memory by default, Redis in production (several replicas share it)."""

from __future__ import annotations

import os

import redis.asyncio as aioredis

from gateway.config import ConfigError, StoreSettings


def redis_client(settings: StoreSettings) -> aioredis.Redis:
    """An asyncio Redis client from the URL in the environment variable the config names."""
    url = os.environ.get(settings.redis_url_env)
    if not url:
        raise ConfigError(f"store.backend is redis but ${settings.redis_url_env} is not set to a redis:// URL")
    return aioredis.from_url(url, decode_responses=False)
