"""Router registry: a new strategy is one module plus one line here."""

from __future__ import annotations

from routers.adaptive import Adaptive
from routers.base import MemberState, RouteView, Router, Step, StopReason
from routers.cost_aware import CostAware
from routers.fanout import FanOut
from routers.least_loaded import LeastLoaded
from routers.passthrough import Passthrough

REGISTRY: dict[str, type[Router]] = {cls.name: cls for cls in (FanOut, Passthrough, Adaptive, CostAware,
                                                                LeastLoaded)}


def get_router(name: str) -> Router:
    try:
        return REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown router {name!r}; known: {sorted(REGISTRY)}") from None


__all__ = ["REGISTRY", "MemberState", "RouteView", "Router", "Step", "StopReason", "get_router"]
