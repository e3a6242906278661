"""The routing interface: which members to ask for an item, and whether to ask more.

Why this shape: fan-out asks everyone at once; cascades and cost-aware strategies ask a few,
look at the posterior, then decide. Both fit `first` + `more`. Routers see member names and the
current distribution only: they never parse labels or do HTTP.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from gateway.config import Ensemble


class Router(ABC):
    name: ClassVar[str]

    @abstractmethod
    def first(self, ensemble: Ensemble, usable: Sequence[str]) -> list[str]:
        """Members to ask first, from those whose circuit lets a call through."""

    def more(self, ensemble: Ensemble, usable: Sequence[str], asked: Sequence[str],
             distribution: Sequence[float]) -> list[str]:
        """Members to ask next given the posterior so far; empty means stop."""
        return []
