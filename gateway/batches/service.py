"""What one gateway process holds for the Batch API: the store and the worker, started with the app."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.batches.store import BatchStore, open_store
from gateway.batches.worker import BatchWorker
from gateway.state import GatewayState


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

    async def stop(self) -> None:
        await self.worker.stop()
        await self.store.close()
