"""What one gateway process holds for the Batch API: the store and the worker, started with the app."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.batches.store import BatchStore
from gateway.batches.store_memory import MemoryBatchStore
from gateway.batches.store_redis import RedisBatchStore
from gateway.batches.worker import BatchWorker
from gateway.config import Config
from gateway.state import GatewayState
from gateway.store import redis_client


def open_store(config: Config) -> BatchStore:
    """The backend `store.backend` names; Redis keys expire after `store.retention_days`."""
    if config.store.backend == "redis":
        return RedisBatchStore(redis_client(config.store), config.store.retention_days * 86400)
    return MemoryBatchStore()


@dataclass
class Batches:
    store: BatchStore
    worker: BatchWorker

    @classmethod
    def build(cls, state: GatewayState) -> Batches:
        store = open_store(state.config)
        return cls(store=store, worker=BatchWorker(state, store, state.config.batches))

    async def start(self) -> None:
        await self.worker.start()
