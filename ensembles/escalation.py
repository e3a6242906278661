"""Escalation policy: ask a stronger member only where the crowd is unsure, then a human if still unsure."""

from __future__ import annotations

from collections.abc import Collection

from gateway.config import Ensemble


def escalate_to(ensemble: Ensemble, confidence: float, asked: Collection[str]) -> str | None:
    """The member to ask next, or None: below the threshold, and only once per item."""
    esc = ensemble.escalation
    if esc is None or confidence >= esc.below or esc.to in asked:
        return None
    return esc.to


def needs_review(ensemble: Ensemble, confidence: float) -> bool:
    return ensemble.review is not None and confidence < ensemble.review.below
