"""Router registry: a new strategy is one module plus one line here."""

from __future__ import annotations

from routers.adaptive import Adaptive
from routers.base import Knobs, MemberState, RouteView, Router, Step, StopReason
from routers.cost_aware import CostAware
from routers.fanout import FanOut
from routers.least_loaded import LeastLoaded
from routers.passthrough import Passthrough

REGISTRY: dict[str, type[Router]] = {cls.name: cls for cls in (FanOut, Passthrough, Adaptive, CostAware,
                                                                LeastLoaded)}


def router_class(name: str) -> type[Router]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown router {name!r}; known: {sorted(REGISTRY)}") from None


def get_router(name: str) -> Router:
    return router_class(name)()


__all__ = ["REGISTRY", "Knobs", "MemberState", "RouteView", "Router", "Step", "StopReason", "get_router",
           "router_class"]
