"""Job traffic's one-pass prompts to a vLLM member, grouped: one `/v1/completions` call with `prompt: [...]`.

Why: a one-pass vote is one prompt with `max_tokens: 1`; sent alone, each vote costs the gateway a whole
HTTP exchange with the member, which is most of its CPU per item on a batch job. vLLM takes a list of
prompts and answers one choice per prompt, `index` = the prompt's position, so the prompts of up to
`max_prompts` items that reach a member within `max_wait_ms` of the first share one call. Only job
traffic waits here (batch lines, `service_tier: "flex"` requests); an interactive request never does.

What one grouped call counts for: the breaker, `crowd_gateway_upstream_requests_total`, the latency
statistics and the member's `max_concurrency` see one call (the breaker guards a server, and a server
that fails one call of 32 prompts failed once); tokens and cost are shared out to the items, so
`cost_usd` per vote and per member add up as without grouping. A 400, 413 or 422 to a grouped call is
what vLLM answers when one prompt is too long for the model: the group's prompts are then sent one by
one, so only that item's vote fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import orjson

from gateway import metrics
from gateway.config import Member
from gateway.upstream.client import Upstreams
from gateway.upstream.reply import Completion, UpstreamError, parse_grouped

log = logging.getLogger("crowd_gateway.upstream")
SPLIT_STATUSES = frozenset({400, 413, 422})
"""A grouped call refused with one of these is retried prompt by prompt: one bad prompt fails alone."""
GroupKey = tuple[str, str, bytes]
"""(member, path, the request's other fields): only prompts whose requests differ in nothing else share a call."""


class _Group:
    """The prompts waiting for one call, and their callers' futures, position by position."""

    __slots__ = ("member", "path", "params", "prompts", "waiters", "deadline", "timer", "task")

    def __init__(self, member: str, path: str, params: dict[str, Any]) -> None:
        self.member = member
        self.path = path
        self.params = params
        self.prompts: list[str] = []
        self.waiters: list[asyncio.Future[Completion]] = []
        self.deadline: float | None = -1.0
        """The latest deadline of the group's items (None: one has none): retries stay useful to someone."""
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    def add(self, prompt: str, waiter: asyncio.Future[Completion], deadline: float | None) -> None:
        self.prompts.append(prompt)
        self.waiters.append(waiter)
        if deadline is None or self.deadline is None:
            self.deadline = None
        else:
            self.deadline = max(self.deadline, deadline)


class Grouper:
    """Per member and request shape, one group filling at a time; each full or expired group becomes one call."""

    def __init__(self, upstreams: Upstreams, max_prompts: int, max_wait_s: float) -> None:
        self.upstreams = upstreams
        self.max_prompts = max_prompts
        self.max_wait_s = max_wait_s
        self.filling: dict[GroupKey, _Group] = {}
        self.sending: set[asyncio.Task[None]] = set()

    def groups(self, member: Member, path: str, body: Mapping[str, Any]) -> bool:
        """Whether this request may join a group: vLLM text completions of one string prompt, grouping on."""
        return (self.max_prompts > 1 and member.dialect == "vllm" and path == "/completions"
                and isinstance(body.get("prompt"), str))

    async def complete(self, member: str, path: str, body: Mapping[str, Any], deadline: float | None) -> Completion:
        """This prompt's answer from the member's next grouped call; UpstreamError when it brings none.

        Cancelling the caller takes its prompt out of a group still filling; once every caller of a sent
        group is gone, the call itself is cancelled.
        """
        params = dict(body)
        prompt = params.pop("prompt")
        key = (member, path, orjson.dumps(params))  # one worker's requests list their fields in one order
        loop = asyncio.get_running_loop()
        group = self.filling.get(key)
        if group is None:
            group = self.filling[key] = _Group(member, path, params)
            group.timer = loop.call_later(self.max_wait_s, self._send, key, group)
        waiter: asyncio.Future[Completion] = loop.create_future()
        waiter.add_done_callback(lambda fut: self._dropped(key, group, fut))
        group.add(prompt, waiter, deadline)
        if len(group.prompts) >= self.max_prompts:
            self._send(key, group)
        return await waiter

    async def close(self) -> None:
        """Stop every call in flight and fail what still waits (the gateway is shutting down)."""
        for group in list(self.filling.values()):
            if group.timer is not None:
                group.timer.cancel()
            for waiter in group.waiters:
                waiter.cancel()
        self.filling.clear()
        for task in list(self.sending):
            task.cancel()
        await asyncio.gather(*self.sending, return_exceptions=True)

    def _dropped(self, key: GroupKey, group: _Group, waiter: asyncio.Future[Completion]) -> None:
        if not waiter.cancelled():
            return
        if group.task is None:  # still filling: the prompt is never sent
            i = group.waiters.index(waiter)
            del group.waiters[i], group.prompts[i]
            if not group.waiters:
                if group.timer is not None:
                    group.timer.cancel()
                if self.filling.get(key) is group:
                    del self.filling[key]
        elif all(w.cancelled() for w in group.waiters):
            group.task.cancel()

    def _send(self, key: GroupKey, group: _Group) -> None:
        if self.filling.get(key) is group:
            del self.filling[key]
        if group.timer is not None:
            group.timer.cancel()
        if group.task is not None or not group.waiters:
            return
        group.task = asyncio.create_task(self._call(group))
        self.sending.add(group.task)
        group.task.add_done_callback(self.sending.discard)

    async def _call(self, group: _Group) -> None:
        metrics.child(metrics.GROUPED_PROMPTS, group.member).observe(len(group.prompts))
        try:
            if len(group.prompts) == 1:
                await self._alone(group, 0)
                return
            body = orjson.dumps({**group.params, "prompt": group.prompts})
            reply = await self.upstreams.post(group.member, group.path, body, group.deadline, settle=True)
            if (refused := self.upstreams.refusal(group.member, group.path, reply)) is not None:
                if reply.status in SPLIT_STATUSES:
                    await asyncio.gather(*(self._alone(group, i) for i in range(len(group.prompts))))
                else:
                    self._fail(group, refused)
                return
            try:
                answers = parse_grouped(reply.body, group.prompts)
            except ValueError as exc:
                self.upstreams.settled(group.member, False)
                self._fail(group, UpstreamError(group.member, "malformed", f"malformed reply: {exc}"))
                return
            self.upstreams.settled(group.member, not any(isinstance(a, str) for a in answers))
            for waiter, answer in zip(group.waiters, answers, strict=True):
                if waiter.done():
                    continue
                if isinstance(answer, str):
                    waiter.set_exception(UpstreamError(group.member, "malformed", f"malformed reply: {answer}"))
                else:
                    waiter.set_result(answer)
        except UpstreamError as exc:
            self._fail(group, exc)
        except Exception as exc:  # a bug must fail these items' votes, never leave their callers waiting
            log.exception("grouped call to %s failed unexpectedly", group.member)
            for waiter in group.waiters:
                if not waiter.done():
                    waiter.set_exception(exc)

    async def _alone(self, group: _Group, i: int) -> None:
        """The i-th prompt in a call of its own (a group of one, or a refused group taken apart)."""
        waiter = group.waiters[i]
        if waiter.done():
            return
        body = orjson.dumps({**group.params, "prompt": group.prompts[i]})
        try:
            answer = await self.upstreams.complete(group.member, group.path, body, group.deadline)
        except UpstreamError as exc:
            if not waiter.done():
                waiter.set_exception(_copy(exc))
            return
        if not waiter.done():
            waiter.set_result(answer)

    @staticmethod
    def _fail(group: _Group, error: UpstreamError) -> None:
        for waiter in group.waiters:
            if not waiter.done():
                waiter.set_exception(_copy(error))


def _copy(error: UpstreamError) -> UpstreamError:
    """A fresh exception per waiter: one instance raised in many tasks would chain their tracebacks together."""
    return UpstreamError(error.member, error.kind, error.message, error.status, error.retry_after)
