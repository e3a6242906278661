"""Label sets: what makes a list of strings a usable set of classes."""

from __future__ import annotations

from collections.abc import Sequence


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
