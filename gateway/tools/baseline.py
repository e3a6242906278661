"""The trivial answer every score is read against: always the most frequent label of the gold it is scored on.

Why every tool shows it: on a skewed label set a crowd, or a member, can score well below it (on an 8-label topic
task the member chosen served 20% where this gives 47%), and an accuracy means nothing until it beats it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Baseline:
    label: str
    accuracy: float

    def describe(self) -> str:
        return f"always {self.label!r} (most frequent label)"


def most_frequent(gold: Iterable[str]) -> Baseline | None:
    """The baseline on these gold labels (ties go to the label first seen); None without gold."""
    counts = Counter(gold)
    if not counts:
        return None
    label, count = counts.most_common(1)[0]
    return Baseline(label, count / sum(counts.values()))
