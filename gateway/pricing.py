"""What a call cost: the upstream's token usage times the member's price per million tokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config import Price


def usage_tokens(usage: Mapping[str, Any] | None) -> tuple[int, int]:
    """(prompt, completion) tokens from an OpenAI `usage` block; missing counts are zero."""
    if not isinstance(usage, Mapping):
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def cost_usd(price: Price, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * price.input_usd_per_mtok + completion_tokens * price.output_usd_per_mtok) / 1e6
