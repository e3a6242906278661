"""Batch store in this process's memory: the default, for one replica; a restart loses every job.

Each method runs without awaiting, so on one event loop it is as atomic as the Redis scripts.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.batches.protocol import Record
from gateway.batches.store import UnknownCursor
from gateway.store.locks import MemoryLocks
from gateway.tenancy import DEFAULT


@dataclass
class _Lines:
    """Per-line state of one batch: next never-claimed line, leases (line -> (owner, expiry)), results."""

    next: int = 0
    leases: dict[int, tuple[str, float]] = field(default_factory=dict)
    results: dict[int, tuple[bool, bytes]] = field(default_factory=dict)


class MemoryBatchStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.files: dict[str, tuple[Record, bytes, list[bytes]]] = {}
        """Insertion-ordered, so expired files are dropped from the front (files live `store.retention_days`)."""
        self.batches: dict[str, Record] = {}
        self.lines: dict[str, _Lines] = {}
        self.active: dict[str, None] = {}
        self.locks = MemoryLocks()

    async def put_file(self, rec: Record, content: bytes, lines: Sequence[bytes] = ()) -> None:
        self._expire()
        self.files[rec["id"]] = (copy.deepcopy(rec), content, list(lines))

    def _expire(self) -> None:
        now = self.clock()
        while self.files:
            oldest = next(iter(self.files))
            if self.files[oldest][0].get("expires_at", now + 1) > now:
                break
            del self.files[oldest]

    def _live(self, file_id: str) -> tuple[Record, bytes, list[bytes]] | None:
        self._expire()
        return self.files.get(file_id)

    async def get_file(self, file_id: str) -> Record | None:
        entry = self._live(file_id)
        return copy.deepcopy(entry[0]) if entry else None

    async def file_content(self, file_id: str) -> bytes | None:
        entry = self._live(file_id)
        return entry[1] if entry else None

    async def list_files(self, owner: str) -> list[Record]:
        self._expire()
        return [copy.deepcopy(rec) for rec, _, _ in reversed(self.files.values()) if rec.get("owner", DEFAULT) == owner]

    async def delete_file(self, file_id: str) -> bool:
        return self.files.pop(file_id, None) is not None

    async def create_batch(self, rec: Record) -> None:
        self.batches[rec["id"]] = copy.deepcopy(rec)
        self.lines[rec["id"]] = _Lines()
        self.active[rec["id"]] = None

    async def get_batch(self, batch_id: str) -> Record | None:
        rec = self.batches.get(batch_id)
        return copy.deepcopy(rec) if rec else None

    async def list_batches(self, after: str | None, limit: int, owner: str) -> tuple[list[Record], bool]:
        ids = [i for i in reversed(self.batches) if self.batches[i].get("owner", DEFAULT) == owner]
        start = 0
        if after is not None:
            if after not in ids:
                raise UnknownCursor(after)
            start = ids.index(after) + 1
        page = ids[start:start + limit]
        return [copy.deepcopy(self.batches[i]) for i in page], start + limit < len(ids)

    async def active_batches(self) -> list[str]:
        return list(self.active)

    async def transition(self, batch_id: str, sources: Sequence[str], target: str, **fields: Any) -> bool:
        rec = self.batches.get(batch_id)
        if rec is None or rec["status"] not in sources:
            return False
        rec.update(fields, status=target)
        return True

    async def claim(self, batch_id: str, input_file_id: str, worker: str, n: int,
                    lease_s: float) -> list[tuple[int, bytes]]:
        rec, state = self.batches.get(batch_id), self.lines.get(batch_id)
        if rec is None or state is None or rec["status"] != "in_progress":
            return []
        now = time.time()
        taken = [line for line, (_, expiry) in state.leases.items() if expiry <= now][:n]
        while len(taken) < n and state.next < rec["total"]:
            taken.append(state.next)
            state.next += 1
        for line in taken:
            state.leases[line] = (worker, now + lease_s)
        requests = self.files[input_file_id][2]
        return [(line, requests[line]) for line in taken]

    async def renew(self, batch_id: str, worker: str, lines: Sequence[int], lease_s: float) -> int:
        state = self.lines.get(batch_id)
        if state is None:
            return 0
        lost = 0
        for line in lines:
            owner = state.leases.get(line, ("", 0.0))[0]
            if owner == worker:
                state.leases[line] = (worker, time.time() + lease_s)
            elif owner:
                lost += 1
        return lost

    async def release(self, batch_id: str, worker: str, lines: Sequence[int]) -> None:
        state = self.lines.get(batch_id)
        for line in lines:
            if state is not None and state.leases.get(line, ("", 0.0))[0] == worker:
                state.leases[line] = (worker, 0.0)

    async def complete(self, batch_id: str, line: int, ok: bool, result: bytes) -> bool:
        rec, state = self.batches.get(batch_id), self.lines.get(batch_id)
        if rec is None or state is None or rec["status"] not in ("in_progress", "cancelling") or rec.get("sealed"):
            return False
        if line in state.results:
            return False
        state.results[line] = (ok, result)
        state.leases.pop(line, None)
        rec["completed" if ok else "failed"] += 1
        return True

    async def live_leases(self, batch_id: str) -> int:
        state = self.lines.get(batch_id)
        now = time.time()
        return sum(expiry > now for _, expiry in state.leases.values()) if state else 0

    async def seal(self, batch_id: str) -> None:
        if batch_id in self.batches:
            self.batches[batch_id]["sealed"] = 1

    async def results(self, batch_id: str) -> list[tuple[bool, bytes]]:
        state = self.lines.get(batch_id)
        return [state.results[line] for line in sorted(state.results)] if state else []

    async def try_lock(self, name: str, ttl_s: float) -> bool:
        return await self.locks.try_lock(name, ttl_s)

    async def retire(self, batch_id: str) -> None:
        self.active.pop(batch_id, None)
        self.lines.pop(batch_id, None)

    async def close(self) -> None:
        return None
