"""Router registry: a new strategy is one module plus one line here."""

from __future__ import annotations

from routers.base import Router
from routers.fanout import FanOut
from routers.passthrough import Passthrough

REGISTRY: dict[str, type[Router]] = {cls.name: cls for cls in (FanOut, Passthrough)}


def get_router(name: str) -> Router:
    try:
        return REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown router {name!r}; known: {sorted(REGISTRY)}") from None


__all__ = ["REGISTRY", "Router", "get_router"]
