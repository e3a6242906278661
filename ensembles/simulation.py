"""Seeded simulated annotators with known confusion matrices: for parity tests and quality benchmarks.

Why: to check that an aggregator recovers the truth (and matches crowd-kit's own fit) we need
members whose reliability we set, including the pathological ones real pools have: an
adversarial member that prefers wrong labels and a lazy one that always says the same thing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SimulatedWorker:
    name: str
    skill: float = 0.7
    """P(answer = truth); errors spread evenly, unless `always` is set."""
    always: str | None = None
    """A lazy member: answers this label whatever the truth."""
    bias: str | None = None
    """When wrong, answers this label (a member skewed toward one label)."""

    def answer(self, truth: str, labels: Sequence[str], rng: random.Random) -> str:
        if self.always is not None:
            return self.always
        if rng.random() < self.skill:
            return truth
        wrong = [label for label in labels if label != truth]
        if self.bias is not None and self.bias != truth:
            return self.bias
        return rng.choice(wrong)


def simulate(annotators: Sequence[SimulatedWorker], labels: Sequence[str], n_items: int, seed: int = 0,
             class_weights: Sequence[float] | None = None) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """(truth by item id, (item, member, label) votes) for `n_items` items drawn with `class_weights`."""
    rng = random.Random(seed)
    truth = {f"item-{i}": rng.choices(list(labels), weights=class_weights)[0] for i in range(n_items)}
    votes = [(item, a.name, a.answer(t, labels, rng)) for item, t in truth.items() for a in annotators]
    return truth, votes


def standard_pool() -> list[SimulatedWorker]:
    """The benchmark pool: one good member, mediocre ones, an adversary and a lazy member."""
    return [SimulatedWorker("good", 0.9), SimulatedWorker("fair-1", 0.7), SimulatedWorker("fair-2", 0.65),
            SimulatedWorker("biased", 0.6, bias="negative"), SimulatedWorker("adversary", 0.2),
            SimulatedWorker("lazy", always="positive")]
