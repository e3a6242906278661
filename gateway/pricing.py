"""What a call cost: the upstream's token usage times the member's price per million tokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway import metrics
from gateway.config import Member, Price


def usage_tokens(usage: Mapping[str, Any] | None) -> tuple[int, int]:
    """(prompt, completion) tokens from an OpenAI `usage` block; missing counts are zero."""
    if not isinstance(usage, Mapping):
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def cost_usd(price: Price, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * price.input_usd_per_mtok + completion_tokens * price.output_usd_per_mtok) / 1e6


def member_cost_usd(member: Member, prompt_tokens: int, completion_tokens: int) -> float:
    """The configured price; for a litellm member without one, the provider's price from litellm's map."""
    price = member.price
    if member.dialect == "litellm" and price.input_usd_per_mtok == price.output_usd_per_mtok == 0:
        from gateway.litellm_upstream import price_usd

        return price_usd(member.model, prompt_tokens, completion_tokens)
    return cost_usd(price, prompt_tokens, completion_tokens)


def account(member: Member, usage: Mapping[str, Any] | None) -> tuple[int, int, float]:
    """(prompt tokens, completion tokens, cost) of one call, also counted in the metrics."""
    prompt, completion = usage_tokens(usage)
    cost = member_cost_usd(member, prompt, completion)
    metrics.child(metrics.COST, member.name).inc(cost)
    metrics.child(metrics.TOKENS, member.name, "prompt").inc(prompt)
    metrics.child(metrics.TOKENS, member.name, "completion").inc(completion)
    return prompt, completion, cost
