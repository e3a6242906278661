"""Fan-out: ask every usable member of the ensemble at once."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.config import Ensemble
from routers.base import Router


class FanOut(Router):
    name = "fanout"

    def first(self, ensemble: Ensemble, usable: Sequence[str]) -> list[str]:
        return list(usable)
