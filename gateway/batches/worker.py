"""The batch worker inside each gateway process: runs leased lines through `execute`, at most
`batches.concurrency` at once, and moves batches through OpenAI's statuses.

Why a bound on lines and not on calls: member calls are already bounded by each member's
`max_concurrency` in the upstream layer; the line bound keeps a 50,000-line batch from queueing
50,000 requests there, so interactive requests still get through, and it is what a replica
leases: a replica never holds more lines than it is running. Leases are renewed every third of
`lease_s`; the lines of a replica that dies are taken over once its leases run out.

While the store is down (gateway/store/health.py) the worker claims nothing and renews nothing; a
line that finishes meanwhile keeps its result until the store takes it, so the member calls it made
are not thrown away. It resumes by itself when the store answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from typing import Any

import orjson

from gateway import metrics, tracing
from gateway.answer import Answer
from gateway.batches.jsonl import ENDPOINTS
from gateway.batches.protocol import Record, batch_usage, file_record, now, output_line, result_file_id
from gateway.batches.store import BatchStore
from gateway.budgets import metered
from gateway.completions.service import execute
from gateway.config import BatchSettings, Limits
from gateway.errors import APIError
from gateway.store.health import STORE_ERRORS
from gateway.tenancy import DEFAULT
from gateway.state import GatewayState

log = logging.getLogger("crowd_gateway.batches")


async def run_line(state: GatewayState, raw: bytes, tenant: str = DEFAULT) -> tuple[bool, bytes]:
    """One request line -> (ok, output line). Never raises: a failure is an error line, not a stopped batch."""
    request = orjson.loads(raw)
    body: dict[str, Any] = request["body"]
    kind, path = ENDPOINTS[request["url"]]
    if body.get("stream"):
        answer = Answer.error(APIError(400, "stream: true is not supported in a batch", param="stream",
                                       code="unsupported_value"))
    else:
        try:
            limits = state.metered.get(tenant)
            if tracing.traces is None:
                answer = await _run(state, body, kind, path, tenant, limits)
            else:
                with tracing.traces.batch_line(str(request["custom_id"])):
                    answer = await _run(state, body, kind, path, tenant, limits)
        except Exception:  # a bug must cost one line, not the batch
            log.exception("batch line %s failed unexpectedly", request["custom_id"])
            answer = Answer.error(APIError(500, "internal error in the gateway; the server log has the details",
                                           type="server_error", code="internal_error"))
    return answer.status < 400, output_line(request["custom_id"], answer.status, answer.body)


async def _run(state: GatewayState, body: dict[str, Any], kind: str, path: str, tenant: str,
               limits: Limits | None) -> Answer:
    """A line as a request of its tenant: counted toward its budgets (waiting for its rates) when it is metered."""
    if limits is not None:
        return await metered(state, body, None, kind, path, tenant, limits, job=True)
    return await execute(state, body, None, kind, path, tenant, job=True)


class BatchWorker:
    def __init__(self, state: GatewayState, store: BatchStore, settings: BatchSettings) -> None:
        self.state = state
        self.health = state.health
        self.store = store
        self.settings = settings
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.running: dict[str, dict[int, asyncio.Task[None]]] = {}
        self.wake = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        return sum(len(lines) for lines in self.running.values())

    def nudge(self) -> None:
        """Look at the store now (a batch was created or cancelled here) instead of at the next poll."""
        self.wake.set()

    async def start(self) -> None:
        self._scheduler = asyncio.create_task(self._schedule(), name="batch-scheduler")
        self._renewer = asyncio.create_task(self._renew(), name="batch-leases")

    async def stop_claiming(self) -> None:
        """Claim no more lines (the gateway is stopping); the lines in flight run on until `stop`."""
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)

    async def stop(self) -> None:
        """Stop taking lines and cancel the unfinished ones; hand their leases back so a restart or a peer takes
        them at once, or, while the store is down, leave the leases to expire."""
        await self.stop_claiming()
        tasks = [t for t in (self._renewer,) if t] + [t for lines in self.running.values() for t in lines.values()]
        held = {batch_id: list(lines) for batch_id, lines in self.running.items()}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for batch_id, lines in held.items():
            if not self.health.up:
                return
            try:
                await self.store.release(batch_id, self.id, lines)
            except STORE_ERRORS as exc:
                self.health.failed("batches", exc)

    async def _schedule(self) -> None:
        chunk = max(1, self.settings.concurrency // 8)  # claim lines in chunks: fewer store round trips per line
        while True:
            self.wake.clear()
            await self.health.wait_up()
            try:
                if self.in_flight <= self.settings.concurrency - chunk:
                    await self._tick()
            except STORE_ERRORS as exc:  # retried once the store answers again
                self.health.failed("batches", exc)
            except Exception:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise  # an error raised while being cancelled must not keep the loop alive
                log.exception("batch scheduler step failed")
            if not self.wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.settings.poll_s)

    async def _tick(self) -> None:
        for batch_id in await self.store.active_batches():
            rec = await self.store.get_batch(batch_id)
            if rec is None:
                await self.store.retire(batch_id)
            else:
                await self._advance(rec)

    async def _advance(self, rec: Record) -> None:
        batch_id, status = rec["id"], rec["status"]
        if status == "validating":
            if await self.store.transition(batch_id, ("validating",), "in_progress", in_progress_at=now()):
                self.wake.set()
        elif status == "in_progress":
            claimed = []
            if (free := self.settings.concurrency - self.in_flight) > 0:
                claimed = await self.store.claim(batch_id, rec["input_file_id"], self.id, free, self.settings.lease_s)
            for line, raw in claimed:
                if line not in self.running.get(batch_id, {}):  # ours already: its lease ran out in an outage
                    self._spawn(batch_id, line, raw, rec.get("owner", DEFAULT))
            if not claimed and rec["completed"] + rec["failed"] >= rec["total"]:
                if await self.store.transition(batch_id, ("in_progress",), "finalizing", finalizing_at=now()):
                    self.wake.set()
        elif status == "finalizing":
            await self._finalize(rec, "completed", "completed_at")
        elif status == "cancelling" and await self.store.live_leases(batch_id) == 0:
            await self._finalize(rec, "cancelled", "cancelled_at")

    def _spawn(self, batch_id: str, line: int, raw: bytes, tenant: str) -> None:
        task = asyncio.create_task(self._run(batch_id, line, raw, tenant))
        self.running.setdefault(batch_id, {})[line] = task
        metrics.BATCH_IN_FLIGHT.inc()

        def done(_: asyncio.Task[None]) -> None:
            lines = self.running.get(batch_id, {})
            lines.pop(line, None)
            if not lines:
                self.running.pop(batch_id, None)
            metrics.BATCH_IN_FLIGHT.dec()
            self.wake.set()
            if not task.cancelled() and (exc := task.exception()) is not None:
                log.error("batch line %d of %s failed unexpectedly", line, batch_id, exc_info=exc)

        task.add_done_callback(done)

    async def _run(self, batch_id: str, line: int, raw: bytes, tenant: str) -> None:
        ok, result = await run_line(self.state, raw, tenant)
        recorded = await self._record(batch_id, line, ok, result)
        metrics.child(metrics.BATCH_LINES, ("ok" if ok else "error") if recorded else "discarded").inc()

    async def _record(self, batch_id: str, line: int, ok: bool, result: bytes) -> bool:
        """Record a line's result, waiting out a store outage: the member calls it took are not thrown away. If
        its lease ran out meanwhile and another worker ran the line too, the first result recorded is kept."""
        while True:
            await self.health.wait_up()
            try:
                return await self.store.complete(batch_id, line, ok, result)
            except STORE_ERRORS as exc:
                self.health.failed("batches", exc)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            await self.health.wait_up()
            for batch_id, lines in list(self.running.items()):
                try:
                    lost = await self.store.renew(batch_id, self.id, list(lines), self.settings.lease_s)
                except STORE_ERRORS as exc:
                    self.health.failed("batches", exc)
                    break
                if lost:
                    log.warning("%d leases of %s were lost (taken over after a stall); their results "
                                "are recorded only if no other worker records them first", lost, batch_id)

    async def _finalize(self, rec: Record, final: str, stamp: str) -> None:
        """Write the output and error files in input order, then enter the final status: safe to redo."""
        batch_id = rec["id"]
        if not await self.store.try_lock(f"finalize:{batch_id}", self.settings.lease_s):
            return
        await self.store.seal(batch_id)
        results = await self.store.results(batch_id)
        files: dict[str, str | None] = {}
        for which, wanted in (("output", True), ("error", False)):
            content = b"".join(line for ok, line in results if ok is wanted)
            files[f"{which}_file_id"] = None
            if content:
                file_id = result_file_id(batch_id, which)
                meta = file_record(file_id, f"{batch_id}_{which}.jsonl", "batch_output", len(content),
                                   self.state.config.store.retention_days * 86400, owner=rec.get("owner", DEFAULT))
                await self.store.put_file(meta, content)
                files[f"{which}_file_id"] = file_id
        usage = batch_usage([line for ok, line in results if ok])
        if await self.store.transition(batch_id, ("finalizing", "cancelling"), final, **files, usage=usage,
                                       **{stamp: now()}):
            await self.store.retire(batch_id)
