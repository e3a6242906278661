"""Escalation policy: ask a stronger member only where the crowd is unsure, then a human if still unsure."""

from __future__ import annotations

from collections.abc import Collection

from pydantic import BaseModel, ConfigDict, Field


class Escalation(BaseModel):
    """Ask member `to` once when confidence is below `below` after routing stopped."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    below: float = Field(ge=0, le=1)
    to: str


class Review(BaseModel):
    """Queue the item for a human when the final confidence is below `below`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    below: float = Field(ge=0, le=1)


def escalate_to(escalation: Escalation | None, confidence: float, asked: Collection[str]) -> str | None:
    """The member to ask next, or None: below the threshold, and only once per item."""
    if escalation is None or confidence >= escalation.below or escalation.to in asked:
        return None
    return escalation.to


def needs_review(review: Review | None, confidence: float) -> bool:
    return review is not None and confidence < review.below
