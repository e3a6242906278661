"""The grouper of job traffic's one-pass prompts, in-process: the real `Upstreams` (breaker, retries, metrics)
over a scripted transport that answers a list of prompts as vLLM does, one choice per prompt with its `index`.

What is checked: a group never exceeds `max_prompts` and never waits past `max_wait_ms`; each caller gets
the choice of its own prompt whatever the order of the choices; a missing or odd choice fails only its
prompt (the breaker counts the call once); a 400 splits the group; a cancelled caller's prompt is not sent,
and a sent call whose callers are all gone is cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from gateway import metrics
from gateway.config import Breaker, Member
from gateway.upstream.client import Upstreams
from gateway.upstream.grouping import Grouper
from gateway.upstream.reply import Reply, UpstreamError, apportion, parse_grouped

PARAMS = {"model": "m", "max_tokens": 1, "temperature": 0, "logprobs": 20}


def vllm_reply(prompts: list[str], choices: Callable[[list[str]], list[Any]] | None = None,
               usage: tuple[int, int] | None = None) -> bytes:
    """A completion body for `prompts`: choice i answers prompt i with its own text (upper-cased)."""
    made = choices(prompts) if choices else [{"index": i, "text": p.upper(), "logprobs": None}
                                             for i, p in enumerate(prompts)]
    prompt_tokens, completion_tokens = usage or (10 * len(prompts), len(prompts))
    return orjson.dumps({"id": "x", "object": "text_completion", "choices": made,
                         "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}})


class Scripted:
    """A member's transport: records each call's prompts and when it came; answers with `answer(prompts)`."""

    def __init__(self, answer: Callable[[list[str]], Reply] | None = None, hold: asyncio.Event | None = None) -> None:
        self.answer = answer or (lambda prompts: Reply(200, vllm_reply(prompts), "application/json", 0.0))
        self.hold = hold
        self.calls: list[tuple[float, list[str]]] = []
        self.cancelled = 0

    async def send(self, path: str, body: bytes) -> Reply:
        prompt = orjson.loads(body)["prompt"]
        prompts = prompt if isinstance(prompt, list) else [prompt]
        self.calls.append((time.perf_counter(), prompts))
        try:
            if self.hold is not None:
                await self.hold.wait()
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return self.answer(prompts)


def setup(transport: Scripted, max_prompts: int = 4, max_wait_ms: float = 50.0,
          name: str = "g") -> tuple[Upstreams, Grouper]:
    member = Member(name=name, base_url="http://127.0.0.1:9/v1", model="m", retries=0)
    upstreams = Upstreams([member], Breaker(failure_threshold=3))
    upstreams.clients[name].transport = transport
    return upstreams, Grouper(upstreams, max_prompts, max_wait_ms / 1000)


async def ask(grouper: Grouper, prompts: list[str], name: str = "g", **params: Any) -> list[Any]:
    """Every prompt through the grouper at once; each result is a Completion or the UpstreamError raised."""
    body = {**PARAMS, **params}
    return await asyncio.gather(*(grouper.complete(name, "/completions", {**body, "prompt": p}, None)
                                  for p in prompts), return_exceptions=True)


def test_a_group_is_sent_when_full_and_never_exceeds_max_prompts() -> None:
    async def run() -> tuple[Scripted, list[Any], float]:
        transport = Scripted()
        _, grouper = setup(transport, max_prompts=4, max_wait_ms=2000)
        started = time.perf_counter()
        answers = await ask(grouper, [f"p{i}" for i in range(8)])
        return transport, answers, time.perf_counter() - started

    transport, answers, elapsed = asyncio.run(run())
    assert [len(prompts) for _, prompts in transport.calls] == [4, 4]
    assert elapsed < 1.0, "full groups go out at once, without waiting for max_wait_ms"
    assert [a.text for a in answers] == [f"P{i}" for i in range(8)]


def test_a_group_that_does_not_fill_goes_out_after_max_wait() -> None:
    async def run() -> tuple[Scripted, float]:
        transport = Scripted()
        _, grouper = setup(transport, max_prompts=32, max_wait_ms=80)
        started = time.perf_counter()
        await ask(grouper, ["a", "b", "c"])
        return transport, transport.calls[0][0] - started

    transport, waited = asyncio.run(run())
    assert [prompts for _, prompts in transport.calls] == [["a", "b", "c"]]
    assert 0.07 <= waited < 1.0


def test_each_caller_gets_the_choice_of_its_own_prompt_by_index() -> None:
    def reversed_choices(prompts: list[str]) -> Reply:
        made = [{"index": i, "text": p.upper(), "logprobs": {"top_logprobs": [{p: -0.1}]}}
                for i, p in reversed(list(enumerate(prompts)))]
        return Reply(200, vllm_reply(prompts, lambda _: made, usage=(10, 3)), "application/json", 0.0)

    async def run() -> list[Any]:
        _, grouper = setup(Scripted(reversed_choices), max_prompts=3)
        return await ask(grouper, ["one", "two", "three!"])

    answers = asyncio.run(run())
    assert [a.text for a in answers] == ["ONE", "TWO", "THREE!"]
    assert [a.choice["logprobs"]["top_logprobs"][0] for a in answers] == [{"one": -0.1}, {"two": -0.1},
                                                                          {"three!": -0.1}]
    assert sum(a.prompt_tokens for a in answers) == 10 and sum(a.completion_tokens for a in answers) == 3
    assert answers[2].prompt_tokens >= answers[0].prompt_tokens, "the longest prompt gets the largest share"


def test_a_missing_or_odd_choice_fails_only_its_prompt_and_the_breaker_counts_the_call_once() -> None:
    def odd(prompts: list[str]) -> Reply:
        made = [{"index": 0, "text": "fine"}, {"index": 2, "text": 7}, {"index": 3, "text": "x"},
                {"index": 3, "text": "y"}, {"index": True, "text": "bool index"}, {"index": 9, "text": "no prompt"}]
        return Reply(200, vllm_reply(prompts, lambda _: made), "application/json", 0.0)

    malformed = metrics.child(metrics.UPSTREAM_REQUESTS, "odd", "malformed")
    before = malformed._value.get()

    async def run() -> tuple[Upstreams, list[Any]]:
        upstreams, grouper = setup(Scripted(odd), max_prompts=4, name="odd")
        return upstreams, await ask(grouper, ["a", "b", "c", "d"], name="odd")

    upstreams, answers = asyncio.run(run())
    assert answers[0].text == "fine"
    for i, why in ((1, "no choice"), (2, "not a string"), (3, "several choices")):
        assert isinstance(answers[i], UpstreamError) and answers[i].kind == "malformed", answers[i]
        assert why in answers[i].message
    assert upstreams.clients["odd"].breaker.failures == 1
    assert malformed._value.get() == before + 1


def test_a_failed_grouped_call_fails_every_prompt_once_for_the_breaker() -> None:
    async def run() -> tuple[Upstreams, list[Any]]:
        upstreams, grouper = setup(Scripted(lambda p: Reply(503, b'{"error": {"message": "busy"}}', "", 0.0)))
        return upstreams, await ask(grouper, ["a", "b", "c", "d"])

    upstreams, answers = asyncio.run(run())
    assert all(isinstance(a, UpstreamError) and a.message == "HTTP 503: busy" for a in answers)
    assert len({id(a) for a in answers}) == 4, "one exception per caller"
    assert upstreams.clients["g"].breaker.failures == 1


def test_an_unreadable_grouped_body_fails_every_prompt() -> None:
    async def run() -> list[Any]:
        _, grouper = setup(Scripted(lambda p: Reply(200, b"not json", "", 0.0)), max_prompts=2)
        return await ask(grouper, ["a", "b"])

    answers = asyncio.run(run())
    assert all(isinstance(a, UpstreamError) and "malformed reply" in a.message for a in answers)


def test_a_refused_group_is_split_so_one_bad_prompt_fails_alone() -> None:
    too_long = b'{"error": {"message": "maximum context length exceeded"}}'

    def context_limit(prompts: list[str]) -> Reply:
        if len(prompts) > 1 or prompts[0] == "huge":
            return Reply(400, too_long, "application/json", 0.0)
        return Reply(200, vllm_reply(prompts), "application/json", 0.0)

    async def run() -> tuple[Scripted, list[Any]]:
        transport = Scripted(context_limit)
        _, grouper = setup(transport, max_prompts=3)
        return transport, await ask(grouper, ["a", "huge", "c"])

    transport, answers = asyncio.run(run())
    assert [len(p) for _, p in transport.calls] == [3, 1, 1, 1]
    assert answers[0].text == "A" and answers[2].text == "C"
    assert isinstance(answers[1], UpstreamError) and "maximum context length" in answers[1].message


def test_requests_that_differ_beyond_the_prompt_are_not_grouped() -> None:
    async def run() -> Scripted:
        transport = Scripted()
        _, grouper = setup(transport, max_prompts=2)
        body = {**PARAMS}
        await asyncio.gather(grouper.complete("g", "/completions", {**body, "prompt": "a"}, None),
                             grouper.complete("g", "/completions", {**body, "seed": 7, "prompt": "b"}, None),
                             grouper.complete("g", "/completions", {**body, "prompt": "c"}, None),
                             grouper.complete("g", "/completions", {**body, "seed": 7, "prompt": "d"}, None))
        return transport

    assert sorted(p for _, p in asyncio.run(run()).calls) == [["a", "c"], ["b", "d"]]


def test_a_cancelled_caller_is_taken_out_of_a_filling_group() -> None:
    async def run() -> tuple[Scripted, list[Any]]:
        transport = Scripted()
        _, grouper = setup(transport, max_prompts=8, max_wait_ms=50)
        calls = [asyncio.ensure_future(grouper.complete("g", "/completions", {**PARAMS, "prompt": p}, None))
                 for p in ("keep", "drop", "also")]
        await asyncio.sleep(0.01)
        calls[1].cancel()
        return transport, await asyncio.gather(*calls, return_exceptions=True)

    transport, answers = asyncio.run(run())
    assert [p for _, p in transport.calls] == [["keep", "also"]]
    assert answers[0].text == "KEEP" and isinstance(answers[1], asyncio.CancelledError) and answers[2].text == "ALSO"


def test_a_sent_call_is_cancelled_once_every_caller_is_gone() -> None:
    async def run() -> tuple[Scripted, Upstreams, Grouper]:
        hold = asyncio.Event()
        transport = Scripted(hold=hold)
        upstreams, grouper = setup(transport, max_prompts=2)
        calls = [asyncio.ensure_future(grouper.complete("g", "/completions", {**PARAMS, "prompt": p}, None))
                 for p in ("a", "b")]
        await asyncio.sleep(0.02)
        assert len(transport.calls) == 1
        calls[0].cancel()
        await asyncio.sleep(0.01)
        assert transport.cancelled == 0, "one caller still waits for the call"
        calls[1].cancel()
        await asyncio.sleep(0.01)
        return transport, upstreams, grouper

    transport, upstreams, grouper = asyncio.run(run())
    assert transport.cancelled == 1 and not grouper.sending
    assert upstreams.clients["g"].breaker.failures == 0, "a cancelled call is no member failure"


def test_only_vllm_text_completions_of_one_prompt_are_grouped() -> None:
    _, grouper = setup(Scripted())
    vllm = Member(name="v", base_url="http://127.0.0.1:9/v1", model="m")
    llamacpp = Member(name="l", base_url="http://127.0.0.1:9/v1", model="m", dialect="llamacpp")
    assert grouper.groups(vllm, "/completions", {"prompt": "x"})
    assert not grouper.groups(vllm, "/chat/completions", {"messages": []})
    assert not grouper.groups(vllm, "/completions", {"prompt": ["x", "y"]})
    assert not grouper.groups(llamacpp, "/completions", {"prompt": "x"})
    assert not Grouper(grouper.upstreams, 1, 0.005).groups(vllm, "/completions", {"prompt": "x"})


@pytest.mark.parametrize(("total", "weights"), [(10, [1, 1, 1]), (7, [5, 0, 2]), (0, [3, 4]), (5, [0, 0]),
                                                (2**40 + 3, [1, 2, 3, 4])])
def test_apportioned_shares_add_up_to_the_total(total: int, weights: list[int]) -> None:
    shares = apportion(total, weights)
    assert sum(shares) == total and all(s >= 0 for s in shares)
    if sum(weights):
        assert all(abs(s - total * w / sum(weights)) < 1 + 1e-9 * total for s, w in zip(shares, weights))


def test_a_grouped_body_without_a_choices_list_is_unreadable() -> None:
    with pytest.raises(ValueError, match="no choices list"):
        parse_grouped(b'{"choices": {}}', ["a"])
    with pytest.raises(ValueError, match="not a token count"):
        parse_grouped(b'{"choices": [], "usage": {"prompt_tokens": -1}}', ["a"])
