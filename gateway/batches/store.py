"""The one small interface the batch routes and worker use to keep files, batches and per-line progress.

Two backends: memory (one process, lost on restart) and Redis (durable, shared by replicas).
The line protocol is the same in both: `claim` leases lines (unleased or with an expired lease,
never completed ones) to a worker, `renew` extends the leases the worker still owns, `complete`
records a line's result once, atomically with the counters, and discards any later result for
the same line. `seal` stops completions before the output files are written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from gateway.batches.protocol import Record


class UnknownCursor(LookupError):
    """`after` names no batch of the list."""


class BatchStore(Protocol):
    async def put_file(self, rec: Record, content: bytes, lines: Sequence[bytes] = ()) -> None: ...

    async def get_file(self, file_id: str) -> Record | None: ...

    async def file_content(self, file_id: str) -> bytes | None: ...

    async def list_files(self, owner: str) -> list[Record]:
        """`owner`'s files, newest first (paging and the purpose filter are the route's)."""
        ...

    async def delete_file(self, file_id: str) -> bool:
        """Forget a file and its content; False if there was none."""
        ...

    async def create_batch(self, rec: Record) -> None: ...

    async def get_batch(self, batch_id: str) -> Record | None: ...

    async def list_batches(self, after: str | None, limit: int, owner: str) -> tuple[list[Record], bool]:
        """`owner`'s batches, newest first; raises UnknownCursor when `after` is not one of them."""
        ...

    async def active_batches(self) -> list[str]: ...

    async def transition(self, batch_id: str, sources: Sequence[str], target: str, **fields: Any) -> bool:
        """Set status `target` (and `fields`) only if the status is one of `sources`; True if it was."""
        ...

    async def claim(self, batch_id: str, input_file_id: str, worker: str, n: int,
                    lease_s: float) -> list[tuple[int, bytes]]:
        """Up to `n` (line index, request line) leased to `worker`, only while the batch is in progress."""
        ...

    async def renew(self, batch_id: str, worker: str, lines: Sequence[int], lease_s: float) -> int:
        """Extend the leases `worker` still owns; returns how many another worker has taken over."""
        ...

    async def release(self, batch_id: str, worker: str, lines: Sequence[int]) -> None:
        """Expire the leases `worker` owns now, so another worker can take the lines at once."""
        ...

    async def complete(self, batch_id: str, line: int, ok: bool, result: bytes) -> bool:
        """Record a line's result; False if it already had one or the batch is sealed (result dropped)."""
        ...

    async def live_leases(self, batch_id: str) -> int: ...

    async def seal(self, batch_id: str) -> None: ...

    async def results(self, batch_id: str) -> list[tuple[bool, bytes]]:
        """(ok, output line) for every completed line, in input order."""
        ...

    async def try_lock(self, name: str, ttl_s: float) -> bool: ...

    async def retire(self, batch_id: str) -> None:
        """Forget a finished batch's per-line state and stop scheduling it."""
        ...

    async def close(self) -> None: ...
