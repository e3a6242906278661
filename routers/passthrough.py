"""Passthrough: the first usable member answers alone (plain proxying, as a routing strategy)."""

from __future__ import annotations

from routers.base import RouteView, Router


class Passthrough(Router):
    name = "passthrough"

    def first(self, view: RouteView) -> list[str]:
        return next(([name] for name, state in view.members.items() if state.usable), [])
