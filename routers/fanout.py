"""Fan-out: ask every usable member of the ensemble at once; the most expensive, most informed answer."""

from __future__ import annotations

from routers.base import RouteView, Router


class FanOut(Router):
    name = "fanout"

    def first(self, view: RouteView) -> list[str]:
        return [name for name, state in view.members.items() if state.usable]
