"""What a member call produced: an HTTP reply of any status, or an `UpstreamError` with its kind.

Why its own module: the transports, the client and the passthrough all speak these two types,
and none of them should import another just to name them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str
    latency_s: float
    retry_after_s: float | None = None
    """The member's Retry-After hint on a 429/503, parsed and capped; None when absent."""


class UpstreamError(Exception):
    """A call that produced no usable answer. `kind`: connection, timeout, circuit_open, http, malformed."""

    def __init__(self, member: str, kind: str, message: str, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{member}: {message}")
        self.member = member
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after


MAX_TOKENS_COUNT = 2**53
"""Token counts at or above this are not believable (and would overflow cost and metrics arithmetic)."""


@dataclass(slots=True, frozen=True)
class Completion:
    """The parts of a member's completion body the gateway reads, checked."""

    text: str
    choice: Mapping[str, Any]
    prompt_tokens: int
    completion_tokens: int
    choices: Sequence[Any] = ()
    """Every choice of the body, unchecked beyond choices[0] (a scoring call reads one per prompt)."""


def _object(body: bytes) -> Mapping[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError("the member's body is not JSON") from None
    if not isinstance(data, Mapping):
        raise ValueError("the member's body is not a JSON object")
    return data


def parse_completion(body: bytes) -> Completion:
    """Read a chat or text completion body; raises ValueError naming what is malformed.

    A member's body is untrusted: wrong types anywhere make the reply that member's failed vote,
    never the item's failure.
    """
    data = _object(body)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise ValueError("the member's body has no choices[0] object")
    choice = choices[0]
    if "text" in choice:
        text = choice["text"]
    else:
        message = choice.get("message")
        if not isinstance(message, Mapping):
            raise ValueError("choices[0].message is not an object")
        text = message.get("content")
    if not isinstance(text, str):
        raise ValueError(f"the answer is {type(text).__name__}, not a string")
    prompt, completion = usage_tokens(data.get("usage"))
    return Completion(text, choice, prompt, completion, tuple(choices))


def parse_grouped(body: bytes, prompts: Sequence[str]) -> list[Completion | str]:
    """Read a completion body answering `prompts` (one call, `prompt: [...]`): per prompt, its Completion, or
    a string naming what is wrong with its choice. Raises ValueError when the body as a whole is unreadable.

    vLLM answers one choice per prompt, `index` = the prompt's position (with n=1). Its `usage` sums every
    prompt: each prompt is given a share, prompt tokens by prompt length and completion tokens evenly, so the
    shares add up to the call's usage exactly.
    """
    data = _object(body)
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise ValueError("the member's body has no choices list")
    prompt_total, completion_total = usage_tokens(data.get("usage"))
    found: list[Mapping[str, Any] | str] = ["the member's reply has no choice for this prompt"] * len(prompts)
    for choice in choices:
        index = choice.get("index") if isinstance(choice, Mapping) else None
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(prompts):
            continue
        if not isinstance(found[index], str):
            found[index] = "the member's reply has several choices for this prompt"
        elif not isinstance(choice.get("text"), str):
            found[index] = f"choices[{index}].text is not a string"
        else:
            found[index] = choice
    prompt_shares = apportion(prompt_total, [len(p) for p in prompts])
    completion_shares = apportion(completion_total, [1] * len(prompts))
    return [item if isinstance(item, str) else Completion(item["text"], item, p, c)
            for item, p, c in zip(found, prompt_shares, completion_shares, strict=True)]


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """`total` split in proportion to `weights` into whole numbers that add up to `total` (largest remainder)."""
    weight = sum(weights)
    if weight <= 0:
        weights, weight = [1] * len(weights), len(weights)
    shares = [total * w // weight for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: -(total * weights[i] % weight))
    for i in by_remainder[:total - sum(shares)]:
        shares[i] += 1
    return shares


def error_message(body: bytes) -> str:
    """The upstream's OpenAI error message when it sent one, else a short excerpt."""
    try:
        message = orjson.loads(body)["error"]["message"]
        return str(message)[:200]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body[:200].decode(errors="replace")


def usage_tokens(usage: Any) -> tuple[int, int]:
    """(prompt, completion) tokens of an OpenAI `usage` block; absent counts are zero, odd ones a ValueError."""
    if usage is None:
        return 0, 0
    if not isinstance(usage, Mapping):
        raise ValueError("usage is not an object")
    counts = []
    for key in ("prompt_tokens", "completion_tokens"):
        value = usage.get(key)
        if value is None:
            value = 0
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_TOKENS_COUNT:
            raise ValueError(f"usage.{key} is not a token count")
        counts.append(value)
    return counts[0], counts[1]
