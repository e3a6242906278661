"""Passthrough: one named member answers, unchanged (plain proxying)."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.config import Ensemble
from routers.base import Router


class Passthrough(Router):
    name = "passthrough"

    def first(self, ensemble: Ensemble, usable: Sequence[str]) -> list[str]:
        return list(usable[:1])
