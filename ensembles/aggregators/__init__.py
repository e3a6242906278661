"""Aggregator registry: a new algorithm is one module plus one line here."""

from __future__ import annotations

from ensembles.aggregators.auto import Auto
from ensembles.aggregators.base import Aggregator, FitData, Params
from ensembles.aggregators.dawid_skene import DawidSkene
from ensembles.aggregators.glad import Glad
from ensembles.aggregators.grouped import GroupedDawidSkene
from ensembles.aggregators.mace import Mace
from ensembles.aggregators.majority import Majority
from ensembles.aggregators.one_coin import OneCoin
from ensembles.aggregators.prior import Prior
from ensembles.aggregators.skill_weighted import Wawa, ZeroBasedSkill
from ensembles.aggregators.stacking import Stacking
from ensembles.aggregators.weighted import Weighted
from ensembles.labels import pick

REGISTRY: dict[str, type[Aggregator]] = {
    cls.name: cls
    for cls in (Majority, Weighted, DawidSkene, GroupedDawidSkene, OneCoin, Glad, Mace, Wawa, ZeroBasedSkill, Stacking,
                Prior, Auto)
}


def get_aggregator(name: str) -> Aggregator:
    """An aggregator instance by its config name; unknown names are a config error."""
    try:
        return REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown aggregator {name!r}; known: {sorted(REGISTRY)}") from None


__all__ = ["Aggregator", "FitData", "Params", "REGISTRY", "get_aggregator", "pick"]
