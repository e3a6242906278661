"""The vote: one member's answer to one item, the unit every aggregator consumes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HUMAN_PREFIX = "human:"
"""Member names of human annotators (feedback labels join the crowd as `human:<annotator>`); the
store writes them, the fits pool their reliability. Must equal the store's prefix."""


@dataclass(slots=True)
class Vote:
    """A member's answer. `label` is None when it abstained (error or an answer outside the set).

    `probs` is a soft vote over the label set (same order) read from token log-probabilities,
    when the member returned them; aggregators that can use it do, the others use `label`.
    """

    member: str
    label: str | None
    raw: str | None = None
    probs: tuple[float, ...] | None = None
    latency_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    cached: bool = False
    """Served from the response cache: no call was made, so it cost nothing (gateway/response_cache.py)."""

    @classmethod
    def from_wire(cls, vote: dict[str, Any], n_labels: int) -> Vote:
        """A stored vote back as a Vote; a soft vote is kept only if it matches the label set's size."""
        probs = vote.get("probs")
        return cls(member=vote["member"], label=vote.get("label"),
                   probs=tuple(probs) if probs and len(probs) == n_labels else None)

    @property
    def valid(self) -> bool:
        return self.label is not None

    def wire(self) -> dict[str, Any]:
        """The vote as it appears in the response's `annotation.votes`."""
        # by hand, not dataclasses.asdict: its recursive deep copy was a quarter of a batch line's CPU; a probability
        # under 5e-7 keeps its digits, so that rounding never turns a label's small probability into a 0.0
        return {"member": self.member, "label": self.label, "raw": self.raw,
                "probs": None if self.probs is None else [round(p, 6) if p >= 5e-7 else p for p in self.probs],
                "latency_ms": round(self.latency_ms, 3), "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost_usd": round(self.cost_usd, 12),
                "error": self.error, "cached": self.cached}
