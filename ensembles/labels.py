"""Label sets: what makes a list of strings a usable set of classes, and the one form a schema is stored in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def check_label_set(labels: Sequence[str]) -> list[str]:
    """Two or more distinct, non-empty labels (compared case-insensitively); stripped.

    Linear in the number of labels: a client can send thousands, and this runs on the event loop.
    """
    cleaned = [str(label).strip() for label in labels]
    if len(cleaned) < 2:
        raise ValueError("needs at least two labels")
    if not all(cleaned):
        raise ValueError("labels must be non-empty strings")
    seen: dict[str, str] = {}
    dupes: set[str] = set()
    for label in cleaned:
        folded = label.casefold()
        if folded in seen:
            dupes.update((seen[folded], label))
        else:
            seen[folded] = label
    if dupes:
        raise ValueError(f"duplicate labels: {sorted(dupes)[:10]}")
    return cleaned


def pick(distribution: Sequence[float]) -> int:
    """Index of the most probable label; ties go to the earliest label of the set (deterministic)."""
    best = 0
    for i in range(1, len(distribution)):
        if distribution[i] > distribution[best]:
            best = i
    return best


@dataclass(frozen=True, slots=True)
class LabelSet:
    """One request's label set in two forms.

    `canonical` is what votes, gold, soft-vote probabilities and fitted parameters are stored and fitted in:
    one spelling and one order per schema, so `[positive, negative]`, `[negative, positive]` and
    `[Positive, Negative]` are one schema with one fit. `asked` is the client's set in its own order and
    spelling: what the members' prompt shows and what the client's answer is spelt in.
    """

    canonical: tuple[str, ...]
    asked: tuple[str, ...]
    positions: tuple[int, ...]
    """`asked[j]` is `canonical[positions[j]]`."""

    @classmethod
    def adhoc(cls, asked: Sequence[str]) -> LabelSet:
        """A set the client made up (checked by `check_label_set`): canonical is each label casefolded, sorted."""
        return cls.matching(sorted(label.casefold() for label in asked), asked)

    @classmethod
    def matching(cls, canonical: Sequence[str], asked: Sequence[str]) -> LabelSet:
        """`asked` spelt against a fixed canonical set (a configured task's labels); ValueError unless it names
        the same labels, ignoring order and case."""
        index = {label.casefold(): i for i, label in enumerate(canonical)}
        positions = tuple(index.get(label.casefold(), -1) for label in asked)
        if len(asked) != len(canonical) or -1 in positions or len(set(positions)) != len(positions):
            raise ValueError(f"names other labels than {list(canonical)}")
        return cls(tuple(canonical), tuple(asked), positions)

    def canonical_of(self, label: str) -> str | None:
        """The stored spelling of a label given in any case; None when it is not in the set."""
        folded = label.casefold()
        return next((c for c in self.canonical if c.casefold() == folded), None)

    def spelled(self, label: str) -> str:
        """A canonical label as the client spelt it."""
        return self.asked[self.positions.index(self.canonical.index(label))]

    def best(self, distribution: Sequence[float]) -> str:
        """The canonical label of a canonical distribution's highest probability; a tie goes to the label the
        client listed first, as it did before label sets had a canonical order."""
        ordered = self.for_client(distribution)
        return self.canonical[self.positions[max(range(len(ordered)), key=ordered.__getitem__)]]

    def for_client(self, values: Sequence[float]) -> list[float]:
        """Per-label values in canonical order (a distribution, a soft vote), reordered as the client listed them."""
        return [values[i] for i in self.positions]
