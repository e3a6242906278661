"""Aggregator registry: a new algorithm is one module plus one line here."""

from __future__ import annotations

from ensembles.aggregators.base import Aggregator, pick
from ensembles.aggregators.majority import Majority
from ensembles.aggregators.weighted import Weighted

REGISTRY: dict[str, type[Aggregator]] = {cls.name: cls for cls in (Majority, Weighted)}


def get_aggregator(name: str) -> Aggregator:
    """An aggregator instance by its config name; unknown names are a config error."""
    try:
        return REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown aggregator {name!r}; known: {sorted(REGISTRY)}") from None


__all__ = ["Aggregator", "REGISTRY", "get_aggregator", "pick"]
