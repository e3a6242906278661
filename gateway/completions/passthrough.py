"""Plain proxying to one member: the body goes out unchanged (but for the upstream model id) and
the answer comes back unchanged, streamed as it arrives when `stream: true`.

A stream the upstream cuts before `data: [DONE]` ends with an SSE error event, so the client's
SDK raises instead of returning a silently truncated answer. A streamed call is priced from the
member's final usage chunk (sent when the client asks `stream_options.include_usage`, or always by
vLLM with `--enable-force-include-usage`); without one it is counted at cost 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson

from gateway.answer import SSE, Answer
from gateway.config import Member
from gateway.errors import APIError
from gateway.upstream import UpstreamError, Upstreams
from gateway.upstream.client import StreamEnd
from gateway.upstream.reply import usage_tokens

_STATUS = {"connection": 502, "timeout": 504, "circuit_open": 503}
_DONE = b"data: [DONE]"
_TAIL = 8192
"""Bytes of a stream's end kept to find `[DONE]` and the usage chunk just before it."""


def upstream_failure(exc: UpstreamError) -> APIError:
    return APIError(_STATUS.get(exc.kind, 502), f"member {exc.member!r}: {exc.message}", code=f"upstream_{exc.kind}")


async def _open(upstreams: Upstreams, member: Member, path: str, body: dict[str, Any], raw: bytes | None,
                stream: bool) -> Any:
    """Send the body with the member's upstream model id; upstream failures become OpenAI errors."""
    if raw is None or body.get("model") != member.model:
        raw = orjson.dumps({**body, "model": member.model})
    try:
        return await (upstreams.stream if stream else upstreams.post)(member.name, path, raw)
    except UpstreamError as exc:
        raise upstream_failure(exc) from None


async def proxy(upstreams: Upstreams, member: Member, path: str, body: dict[str, Any], raw: bytes | None) -> Answer:
    """Forward a non-streaming request; relay the member's status and body, with what it cost."""
    started = time.perf_counter()
    reply = await _open(upstreams, member, path, body, raw, stream=False)
    waited = time.perf_counter() - started
    if reply.status != 200:  # an error used nothing the gateway can count
        return Answer(reply.status, reply.body, {}, reply.content_type, upstream_wait_s=waited, spent=(0, 0.0))
    tokens, cost = _reply_cost(upstreams, member, reply.body)
    return Answer(reply.status, reply.body, {"x-crowd-cost-usd": f"{cost:.10f}"}, reply.content_type,
                  upstream_wait_s=waited, spent=(tokens, cost))


def _reply_cost(upstreams: Upstreams, member: Member, body: bytes) -> tuple[int, float]:
    """The call's tokens and cost, from the body's usage; a body without readable usage is relayed at 0 and cost 0."""
    try:
        data = orjson.loads(body)
        prompt, completion = usage_tokens(data.get("usage") if isinstance(data, dict) else None)
    except (orjson.JSONDecodeError, ValueError):
        return 0, 0.0
    return prompt + completion, upstreams.account(member.name, prompt, completion)


async def proxy_stream(upstreams: Upstreams, member: Member, path: str, body: dict[str, Any],
                       ended: Callable[[bool, int, float], None]) -> Answer:
    """Relay an SSE stream chunk by chunk; the upstream's final usage chunk passes through and is priced.

    `ended(ok, tokens, cost)` is called once the answer is over: at once for an error status, else when the
    stream ends (ok only if it reached `[DONE]`; tokens and cost from its usage chunk, else 0).
    """
    started = time.perf_counter()
    resp = await _open(upstreams, member, path, body, None, stream=True)
    if resp.status != 200:
        data = await resp.read()
        resp.release()
        upstreams.record_stream_end(member.name, "ok" if resp.status < 500 else "error", time.perf_counter() - started)
        ended(False, 0, 0.0)
        return Answer(resp.status, data, {}, resp.headers.get("Content-Type"))
    return Answer(200, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}, media_type=SSE,
                  stream=_relay(upstreams, member.name, resp, started, ended))


async def _relay(upstreams: Upstreams, name: str, resp: aiohttp.ClientResponse, started: float,
                 ended: Callable[[bool, int, float], None]) -> AsyncIterator[bytes]:
    """The member's bytes as they come. A client that leaves cancels this generator (the route's response listens
    for the disconnect): the member's connection is closed, so it stops generating for nobody."""
    tail = b""
    outcome: StreamEnd = "error"
    tokens, cost = 0, 0.0
    try:
        async for chunk in resp.content.iter_any():
            tail = (tail + chunk)[-_TAIL:]
            yield chunk
        if _DONE in tail:
            outcome = "ok"
        else:
            yield _error_event(name, "the member closed the stream before it finished")
    except aiohttp.ClientError as exc:  # a read past `timeout_s` included
        yield _error_event(name, f"the member's stream was cut: {exc.__class__.__name__}")
    except TimeoutError:
        outcome = "timeout"
        limit = upstreams.member(name).max_stream_s
        yield _error_event(name, f"the stream passed the member's max_stream_s of {limit:g}s")
    except (asyncio.CancelledError, GeneratorExit):  # the client left: while we waited on the member, or at a yield
        outcome = "cancelled"
        raise
    finally:
        if outcome == "ok":
            resp.release()
            tokens, cost = _stream_cost(upstreams, name, tail)
        else:
            resp.close()
        upstreams.record_stream_end(name, outcome, time.perf_counter() - started)
        ended(outcome == "ok", tokens, cost)


def _stream_cost(upstreams: Upstreams, name: str, tail: bytes) -> tuple[int, float]:
    """Count a finished stream's tokens and cost from its last event carrying `usage` (none: 0 and cost 0)."""
    for line in reversed(tail.split(b"\n")):
        if not line.startswith(b"data: {") or b'"usage"' not in line:
            continue
        try:
            data = orjson.loads(line[6:])
            prompt, completion = usage_tokens(data.get("usage"))
        except (orjson.JSONDecodeError, ValueError):
            return 0, 0.0
        if prompt or completion:
            return prompt + completion, upstreams.account(name, prompt, completion)
    return 0, 0.0


def _error_event(name: str, message: str) -> bytes:
    body = APIError(502, f"member {name!r}: {message}", code="upstream_stream_cut").body()
    return b"\n\ndata: " + orjson.dumps(body) + b"\n\n"
