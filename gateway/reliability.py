"""Member reliability, learned online: the request path reads the latest parameters from memory;
a background loop refits them from stored votes and publishes them through the store.

Why this split: a refit (crowd-kit EM) takes seconds, so it runs in a worker process, on a bounded sample of
the stored votes (gateway/store/sampling.py: its cost does not grow with the job), every N new items or T
seconds. Replicas share the decision: the count of new items and the time of the last refit live in the store,
and a store lease lets one replica refit a schema at a time, after checking again that it is still due, so no
refit is repeated by another replica. Every replica polls the store's cheap version counter every `poll_s`, in a
task of its own that a running refit does not hold up, and reloads parameters only when they changed. While the
store is down both loops wait for it (gateway/store/health.py logs the outage); once the gateway stops, no worker
process starts and the one running is ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Any

from ensembles.refit import hard_triples, overlapping_items, refit
from gateway import metrics
from gateway.config import Config
from gateway.server.lifecycle import end_workers, exit_with_parent
from gateway.store.health import STORE_ERRORS, StoreHealth
from gateway.store.votes import Published, VoteStore

log = logging.getLogger("crowd_gateway.reliability")


class Reliability:
    def __init__(self, store: VoteStore, config: Config, health: StoreHealth) -> None:
        self.store = store
        self.health = health
        self.settings = config.refit
        self.aggregators = sorted({e.aggregator for e in config.ensembles})
        self.fit_options = config.fit_options()
        self.skipped: dict[str, dict[str, Any]] = {}
        """Schema -> why its last refit was skipped, and the setting that decides it (GET /v1/annotations/params)."""
        self.params: dict[tuple[str, str], Published] = {}
        self.version = -1
        self.started = time.time()
        """Wall clock, as the store's time of a schema's last refit (every replica's): the age of a schema never
        refitted counts from here."""
        self._pool: ProcessPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._refreshing = asyncio.Lock()
        self._stopped = False

    def get(self, schema: str, aggregator: str) -> dict[str, Any] | None:
        """Latest parameters for the request path (no I/O); None before the first fit."""
        found = self.params.get((schema, aggregator))
        return found.params if found else None

    def version_of(self, schema: str, aggregator: str) -> int:
        found = self.params.get((schema, aggregator))
        return found.version if found else 0

    async def refresh(self) -> None:
        async with self._refreshing:  # the poll and a refit's end: one at a time, so an older read never lands last
            version = await self.store.published_version()
            if version != self.version:
                self.version, self.params = await self.store.published()

    async def start(self) -> None:
        await self.refresh()  # a store that cannot be reached at startup stops it, with the error named
        self._tasks = [asyncio.create_task(self._every_poll(self.refit_due), name="reliability-refit"),
                       asyncio.create_task(self._every_poll(self._poll), name="reliability-poll")]

    async def stop(self) -> None:
        """Stop refitting for good: the loops are cancelled, a refit in progress is abandoned with its worker
        process, and none starts afterwards (a refit request then refits nothing)."""
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pool:
            end_workers(self._pool)
            self._pool = None

    def _worker_pool(self) -> ProcessPoolExecutor | None:
        """The refit worker process, started on first use (it ends with the gateway); None once stopping."""
        if self._pool is None and not self._stopped:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=exit_with_parent)
        return self._pool

    async def _poll(self) -> None:
        await self.refresh()
        metrics.REVIEW_QUEUE.set(await self.store.review_count())

    async def _every_poll(self, step: Callable[[], Awaitable[object]]) -> None:
        """Run `step` every `poll_s` while the store is up, whatever it raises (an outage is the refit's, once)."""
        while True:
            await self.health.wait_up()
            try:
                await step()
            except STORE_ERRORS as exc:
                self.health.failed("refit", exc)
            except Exception:  # a failing refit must never take the gateway down; retried next poll
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise  # an error raised while being cancelled must not keep the loop alive
                log.exception("reliability loop %s failed; retrying", step.__name__)
            await asyncio.sleep(self.settings.poll_s)

    def _due(self, new: int, last: float | None) -> bool:
        """Enough new items, or some and the last refit (any replica's) is `every_s` old."""
        age = time.time() - (last if last is not None else self.started)
        return new >= self.settings.every_items or (new > 0 and age >= self.settings.every_s)

    async def refit_due(self, force: bool = False) -> list[str]:
        """Refit every schema whose new items or age call for it; returns the schemas refitted."""
        done = []
        for schema, labels in (await self.store.schemas()).items():
            if not (force or self._due(*await self.store.pending(schema))):
                continue
            lock = f"refit:{schema}"
            if not await self.store.try_lock(lock, ttl_s=300):
                continue  # another replica is refitting it
            try:  # due again under the lease: another replica may have refitted it since the first look
                if force or self._due(*await self.store.pending(schema)):
                    await self.store.take_new_items(schema, time.time())
                    if await self.refit_schema(schema, labels):
                        done.append(schema)
            finally:  # hand the lease back; when the store cannot take it, it expires
                with contextlib.suppress(*STORE_ERRORS):
                    await self.store.unlock(lock)
        if done:
            await self.refresh()
        return done

    async def refit_schema(self, schema: str, labels: list[str]) -> bool:
        sample = await self.store.fit_votes(schema, self.settings.max_items)
        triples = hard_triples(sample.votes)
        if (overlap := overlapping_items(triples)) < self.settings.min_items:
            # cold start: the posterior stays majority-like until enough items overlap
            self.skipped[schema] = {"reason": f"{overlap} items have two or more votes; a fit needs "
                                              f"{self.settings.min_items}", "setting": "refit.min_items",
                                    "items": sample.stored_items, "items_with_two_votes": overlap}
            return False
        self.skipped.pop(schema, None)
        gold = await self.store.gold(schema)
        loop = asyncio.get_running_loop()
        if (pool := self._worker_pool()) is None:
            return False  # the gateway is stopping
        for name in self.aggregators:
            started = time.perf_counter()
            params = await loop.run_in_executor(pool, partial(refit, name, sample.votes, labels, gold,
                                                              **self.fit_options))
            params["fitted_on"]["stored_items"] = sample.stored_items
            version = await self.store.publish(schema, name, params)
            log.info("refit %s/%s v%d on %d votes of %d items (%d stored) in %.2fs", schema, name, version,
                     len(triples), len(sample.votes), sample.stored_items, time.perf_counter() - started)
        return True
