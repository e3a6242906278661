"""What a member call produced: an HTTP reply of any status, or an `UpstreamError` with its kind.

Why its own module: the transports, the client and the passthrough all speak these two types,
and none of them should import another just to name them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str
    latency_s: float
    retry_after_s: float | None = None
    """The member's Retry-After hint on a 429/503, parsed and capped; None when absent."""


class UpstreamError(Exception):
    """A call that produced no usable HTTP answer. `kind`: connection, timeout, circuit_open, http."""

    def __init__(self, member: str, kind: str, message: str, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{member}: {message}")
        self.member = member
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
