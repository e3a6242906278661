"""What a call cost: the upstream's token usage times the member's price per million tokens.

The way a member is priced is chosen once, when its client is built: its configured price, or for
a `dialect: litellm` member without one, the provider's list price from litellm's bundled map.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from gateway.config import Member, Price

Pricer = Callable[[int, int], float]
"""(prompt tokens, completion tokens) -> USD."""


def cost_usd(price: Price, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * price.input_usd_per_mtok + completion_tokens * price.output_usd_per_mtok) / 1e6


def pricer_for(member: Member) -> Pricer:
    price = member.price
    if member.dialect == "litellm" and price.input_usd_per_mtok == price.output_usd_per_mtok == 0:
        from gateway.upstream.litellm import price_usd

        return partial(price_usd, member.model)
    return partial(cost_usd, price)
