"""What the completion service answers, as plain data: the routes render it as HTTP, the batch worker as a line.

Why data and not a Starlette response: the batch worker needs only a status and a body, and reading them back
out of an HTTP response tied the worker to the web framework; what the service measured (the time spent
waiting on members, the tokens and cost it spent) rode on the response as added attributes. gateway/http.py
`render` is the one place an answer becomes an HTTP response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson

from gateway.errors import APIError

JSON = "application/json"
SSE = "text/event-stream"


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes = b""
    """The whole body; empty for a stream."""
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str | None = JSON
    stream: AsyncIterator[bytes] | None = None
    """A stream's SSE events, sent as they come."""
    upstream_wait_s: float = 0.0
    """Time spent waiting on members: the gateway's own overhead is the rest."""
    spent: tuple[int, float] | None = None
    """(tokens, USD) the answer used, when known before it is sent; None for an error (nothing the gateway can
    count) and for a passthrough stream (known at its end: `execute`'s `stream_spent`)."""

    @classmethod
    def error(cls, exc: APIError) -> Answer:
        """The error's OpenAI body, with its status and headers."""
        return cls(exc.status, orjson.dumps(exc.body()), dict(exc.headers or {}))
