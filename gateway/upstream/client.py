"""Calls to pool members over pooled HTTP: per-member concurrency, timeout, retry, circuit breaker.

Why aiohttp: on this path every microsecond is overhead the gateway adds to each member call;
aiohttp's client costs a fraction of httpx's per request. Upstream never knows about labels: it
moves bytes and reports what happened.
"""

from __future__ import annotations

import asyncio
import logging
import email.utils
import math
import random
import time
from collections.abc import Callable, Mapping
from typing import Literal, Protocol

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from gateway import metrics, tracing
from gateway.config import Breaker, Member
from gateway.upstream.breaker import CircuitBreaker, State
from gateway.upstream.member_stats import MemberStats
from gateway.upstream.pricing import Pricer, pricer_for
from gateway.upstream.rejections import Rejections
from gateway.upstream.reply import Completion, Reply, UpstreamError, error_message, parse_completion
from routers import MemberState

log = logging.getLogger("crowd_gateway.upstream")
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
FIRST_BACKOFF_S = 0.05
MAX_RETRY_AFTER_S = 10.0
StreamEnd = Literal["ok", "error", "cancelled", "timeout"]


class _RetryableStatus(Exception):
    """Internal: a retryable HTTP status, carrying the reply to return if retries run out."""

    def __init__(self, reply: Reply, retry_after: float | None) -> None:
        self.reply = reply
        self.retry_after = retry_after


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), capped; None for what cannot be parsed."""
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if parsed is None or parsed.tzinfo is None:
            return None
        seconds = parsed.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class _WaitRetryAfter:
    """Exponential backoff with jitter, unless the upstream said how long to wait."""

    def __init__(self) -> None:
        self.backoff = wait_exponential_jitter(multiplier=2 * FIRST_BACKOFF_S, max=2.0, jitter=FIRST_BACKOFF_S)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = getattr(exc, "retry_after", None)
        return hinted if hinted is not None else self.backoff(state)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (_RetryableStatus, aiohttp.ClientConnectionError)) and not isinstance(
        exc, aiohttp.ServerTimeoutError)


class HttpTransport:
    """Calls one member's OpenAI-compatible server over the gateway's pooled aiohttp session."""

    def __init__(self, member: Member, upstreams: Upstreams) -> None:
        self.member = member
        self.upstreams = upstreams
        self.timeout = aiohttp.ClientTimeout(total=member.timeout_s)
        key = member.api_key()
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"

    async def send(self, path: str, body: bytes) -> Reply:
        session = self.upstreams.session
        assert session is not None, "Upstreams.start() was not awaited"
        started = time.perf_counter()
        headers = self.headers if tracing.traces is None else tracing.traces.headers(self.headers)
        async with session.post(self.member.base_url + path, data=body, headers=headers,
                                timeout=self.timeout) as resp:
            data = await _bounded(resp, self.member.max_reply_bytes)
            retry_after = _retry_after(resp.headers) if resp.status in RETRY_STATUSES else None
            return Reply(resp.status, data, resp.headers.get("Content-Type", "application/json"),
                         time.perf_counter() - started, retry_after)


class ReplyTooLarge(aiohttp.ClientPayloadError):
    """A member's reply past `max_reply_bytes`: read no further (four 100 MB replies once took 606 MB)."""


async def _bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    declared = resp.content_length
    if declared is not None:
        if declared > limit:
            raise ReplyTooLarge(f"reply of {declared} bytes exceeds max_reply_bytes {limit}")
        return await resp.read()  # aiohttp reads no more than the declared length
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise ReplyTooLarge(f"reply exceeds max_reply_bytes {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


class Transport(Protocol):
    async def send(self, path: str, body: bytes) -> Reply: ...


class MemberClient:
    """Everything needed to call one member: its transport and pricing (chosen once), limits, breaker."""

    def __init__(self, member: Member, breaker: Breaker, upstreams: Upstreams,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.member = member
        self.breaker = CircuitBreaker(breaker.failure_threshold, breaker.reset_after_s, clock=clock)
        self.slots = asyncio.Semaphore(member.max_concurrency)
        self.http = HttpTransport(member, upstreams)
        self.transport: Transport = self.http
        if member.dialect == "litellm":
            from gateway.upstream.litellm import LiteLLMTransport

            self.transport = LiteLLMTransport(member)
        self.pricer: Pricer = pricer_for(member)
        self.root = member.base_url.removesuffix("/v1")
        self.stats = MemberStats(member)
        self.rejections = Rejections(member.name, breaker.failure_threshold, clock)
        self._gauge = metrics.child(metrics.CIRCUIT, member.name)
        self._gauge.set(0)

    @property
    def headers(self) -> dict[str, str]:
        return self.http.headers

    def publish_state(self) -> State:
        state = self.breaker.state
        self._gauge.set(int(state))
        return state


Connector = Callable[[], aiohttp.BaseConnector]
"""Makes the session's connector, on the gateway's loop: how member calls reach their servers."""


def tcp_connector() -> aiohttp.BaseConnector:
    return aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300)


class Upstreams:
    """The pooled HTTP client for all members; one per gateway process.

    `connector` is the one seam under every member call (completions, streams, probes): TCP by default; the unit
    tests pass one that answers in this process (tests/harness/memory.py), the way httpx's MockTransport does."""

    def __init__(self, members: list[Member], breaker: Breaker, clock: Callable[[], float] = time.monotonic,
                 connector: Connector = tcp_connector) -> None:
        self.clients = {m.name: MemberClient(m, breaker, self, clock) for m in members}
        self.session: aiohttp.ClientSession | None = None
        self.connector = connector

    async def start(self) -> None:
        connector = self.connector()
        self.session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",),
                                             auto_decompress=True)
        if any(c.member.dialect == "litellm" for c in self.clients.values()):
            from gateway.upstream.litellm import preload

            await preload()

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def member(self, name: str) -> Member:
        return self.clients[name].member

    def usable(self, name: str) -> bool:
        return self.clients[name].breaker.would_allow()

    def state(self, name: str, reliability: float, queue_depth: float | None = None) -> MemberState:
        """A read-only snapshot of one member for the routers: circuit, load, latency, expected cost."""
        client = self.clients[name]
        stats = client.stats
        return MemberState(name=name, group=client.member.replica_group, usable=client.breaker.would_allow(),
                           in_flight=stats.in_flight, p50_s=stats.p50_s, p95_s=stats.p95_s, cost_usd=stats.cost_usd,
                           reliability=reliability, queue_depth=queue_depth, samples=stats.samples)

    def paid(self, name: str, cost_usd: float) -> None:
        """Fold one call's cost into the member's expected cost per call (what routers rank by)."""
        self.clients[name].stats.paid(cost_usd)

    def account(self, name: str, prompt: int, completion: int) -> float:
        """The cost of one call to `name` with these token counts, counted in its stats and the metrics."""
        client = self.clients[name]
        cost = client.pricer(prompt, completion)
        client.stats.paid(cost)
        metrics.child(metrics.COST, name).inc(cost)
        metrics.child(metrics.TOKENS, name, "prompt").inc(prompt)
        metrics.child(metrics.TOKENS, name, "completion").inc(completion)
        return cost

    def settled(self, name: str, ok: bool) -> None:
        """The verdict on a 2xx reply posted with `settle`: readable (ok) or malformed (a member failure)."""
        client = self.clients[name]
        if ok:
            client.breaker.success()
        else:
            client.breaker.failure()
            metrics.child(metrics.UPSTREAM_REQUESTS, name, "malformed").inc()
        client.publish_state()

    async def complete(self, name: str, path: str, body: bytes, deadline: float | None = None) -> Completion:
        """One completion call, read and checked; raises UpstreamError when it gives no readable answer (kind
        `http` for a status other than 200, `malformed` for a 200 whose body is not a completion)."""
        reply = await self.post(name, path, body, deadline, settle=True)
        if (refused := self.refusal(name, path, reply)) is not None:
            raise refused
        try:
            answer = parse_completion(reply.body)
        except ValueError as exc:
            self.settled(name, False)
            raise UpstreamError(name, "malformed", f"malformed reply: {exc}") from None
        self.settled(name, True)
        return answer

    def refusal(self, name: str, path: str, reply: Reply) -> UpstreamError | None:
        """The error of a reply posted with `settle` whose status is not 200 (another 2xx is a member failure),
        logged and counted against the member's health; None for a 200."""
        rejections = self.clients[name].rejections
        if reply.status == 200:
            rejections.answered(path)
            return None
        if reply.status < 300:
            self.settled(name, False)
        message = error_message(reply.body)
        rejections.refused(path, reply.status, message)
        return UpstreamError(name, "http", f"HTTP {reply.status}: {message}", status=reply.status)

    def problem(self, name: str) -> str | None:
        """Why a member is unhealthy though its server answers: a kind of call it refuses every time."""
        return self.clients[name].rejections.problem()

    async def get(self, name: str, path: str, timeout_s: float) -> Reply | None:
        """GET a path under the member's server root (health, /metrics); None when it cannot be reached."""
        return await self._get(name, self.clients[name].root + path, timeout_s)

    async def _get(self, name: str, url: str, timeout_s: float) -> Reply | None:
        client = self.clients[name]
        assert self.session is not None, "Upstreams.start() was not awaited"
        started = time.perf_counter()
        try:
            async with self.session.get(url, headers=client.headers,
                                        timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                data = await resp.read()
                return Reply(resp.status, data, resp.headers.get("Content-Type", ""), time.perf_counter() - started)
        except (TimeoutError, aiohttp.ClientError):
            return None

    async def post(self, name: str, path: str, body: bytes, deadline: float | None = None,
                   settle: bool = False) -> Reply:
        """POST with retries; returns the final HTTP reply (any status) or raises UpstreamError.

        `deadline` (a `time.perf_counter()` instant) bounds the retries: no wait, hinted or not, that would
        end past it is started; the last reply is returned instead. With `settle`, a 2xx reply's success is
        left to the caller, who reads the body and calls `settled(name, ok)`: a 200 with an unreadable body
        is a failure of the member, for its breaker.
        """
        client = self.clients[name]
        member = client.member
        if not client.breaker.allow():
            metrics.child(metrics.UPSTREAM_REQUESTS, member.name, "circuit_open").inc()
            client.publish_state()
            raise UpstreamError(member.name, "circuit_open", "circuit open after repeated failures")
        started = time.perf_counter()
        outcome = "error"
        client.stats.in_flight += 1
        try:
            async with client.slots:
                begun = time.perf_counter()  # the member's latency, not the gateway's queue in front of it
                reply = await self._post_with_retries(client, path, body, deadline)
            client.stats.answered(time.perf_counter() - begun)
            outcome = "ok" if reply.status < 400 else "error"
            if reply.status >= 500 or reply.status == 429:  # an overloaded member is a failing one, for a while
                client.breaker.failure()
            elif not (settle and reply.status < 300):
                client.breaker.success()
            return reply
        except asyncio.CancelledError:
            outcome = "cancelled"
            client.breaker.cancelled()
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError):
            outcome = "timeout"
            client.breaker.failure()
            raise UpstreamError(member.name, "timeout", f"no answer within {member.timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            client.breaker.failure()
            # the exception's text names hosts and ports: it goes to the log, not into answers
            log.warning("member %s: %s: %s", member.name, exc.__class__.__name__, exc)
            raise UpstreamError(member.name, "connection", f"connection failed: {exc.__class__.__name__}") from None
        finally:
            client.stats.in_flight -= 1
            metrics.child(metrics.UPSTREAM_REQUESTS, member.name, outcome).inc()
            metrics.child(metrics.UPSTREAM_DURATION, member.name).observe(time.perf_counter() - started)
            client.publish_state()

    async def _post_with_retries(self, client: MemberClient, path: str, body: bytes,
                                 deadline: float | None) -> Reply:
        """The first attempt runs bare (the common case); only a retryable failure pays for tenacity."""
        try:
            return await self._post_once(client, path, body)
        except (_RetryableStatus, aiohttp.ClientConnectionError) as exc:
            hinted = getattr(exc, "retry_after", None)
            wait = hinted if hinted is not None else FIRST_BACKOFF_S * (1 + random.random())
            left = math.inf if deadline is None else deadline - time.perf_counter()
            if not _retryable(exc) or client.member.retries == 0 or wait >= left:
                if isinstance(exc, _RetryableStatus):
                    return exc.reply
                raise
            await asyncio.sleep(wait)
        left = math.inf if deadline is None else deadline - time.perf_counter()
        retrying = AsyncRetrying(stop=stop_after_attempt(client.member.retries) | stop_before_delay(left),
                                 wait=_WaitRetryAfter(), retry=retry_if_exception(_retryable), reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._post_once(client, path, body)
        except _RetryableStatus as exc:
            return exc.reply
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _post_once(self, client: MemberClient, path: str, body: bytes) -> Reply:
        reply = await client.transport.send(path, body)
        if reply.status in RETRY_STATUSES:
            raise _RetryableStatus(reply, reply.retry_after_s)
        return reply

    async def stream(self, name: str, path: str, body: bytes) -> aiohttp.ClientResponse:
        """Open a streaming POST (no retries once bytes may have reached the client)."""
        assert self.session is not None, "Upstreams.start() was not awaited"
        client = self.clients[name]
        if not client.breaker.allow():
            metrics.child(metrics.UPSTREAM_REQUESTS, name, "circuit_open").inc()
            raise UpstreamError(name, "circuit_open", "circuit open after repeated failures")
        timeout = aiohttp.ClientTimeout(total=client.member.max_stream_s, sock_connect=client.member.timeout_s,
                                        sock_read=client.member.timeout_s)
        try:
            headers = client.headers if tracing.traces is None else tracing.traces.headers(client.headers)
            resp = await self.session.post(client.member.base_url + path, data=body, headers=headers,
                                           timeout=timeout)
        except (TimeoutError, aiohttp.ClientError) as exc:
            client.breaker.failure()
            client.publish_state()
            metrics.child(metrics.UPSTREAM_REQUESTS, name, "error").inc()
            raise UpstreamError(name, "connection", f"connection failed: {exc.__class__.__name__}") from None
        return resp

    def record_stream_end(self, name: str, outcome: StreamEnd, seconds: float) -> None:
        """How a passthrough stream ended. Only `error` is the member's failure: a stream the client left, or that
        passed `max_stream_s`, was cut by the gateway (`cancelled`, `timeout`) and says nothing about the member."""
        client = self.clients[name]
        if outcome == "ok":
            client.breaker.success()
        elif outcome == "error":
            client.breaker.failure()
        else:
            client.breaker.cancelled()
        client.publish_state()
        metrics.child(metrics.UPSTREAM_REQUESTS, name, outcome).inc()
        metrics.child(metrics.UPSTREAM_DURATION, name).observe(seconds)

    async def healthy(self, name: str, timeout_s: float = 2.0) -> bool:
        """Probe a member: vLLM's health path, llama.cpp's /v1/models, an `openai` server's `{base_url}/models`
        with the member's key (any 2xx); a member that refuses every call of a kind is not healthy (`problem`). A `litellm` member is healthy unless its circuit is open: its
        providers have no free health call, and a probe must not spend money; a dead provider opens the
        breaker after `failure_threshold` failed calls."""
        client = self.clients[name]
        if client.publish_state() is State.OPEN or client.rejections.problem() is not None:
            return False
        member = client.member
        if member.dialect == "litellm":
            return True
        if member.dialect == "openai":
            reply = await self._get(name, member.base_url + "/models", timeout_s)
            return reply is not None and 200 <= reply.status < 300
        path = member.health_path if member.dialect == "vllm" else "/v1/models"
        reply = await self.get(name, path, timeout_s)
        return reply is not None and reply.status == 200
