"""The weight of a one-coin worker's vote: shared by the aggregators and the routers, in a module of its own so
that `import routers` loads no aggregator (they are the refit's business, not the request router's)."""

from __future__ import annotations

import math


def log_odds(skill: float, k: int) -> float:
    """log((K-1) s / (1-s)): the optimal weight of a vote right with probability s among K labels (Nitzan & Paroush
    1982); a worker no better than chance weighs nothing."""
    skill = min(max(skill, 1e-6), 1 - 1e-6)
    return max(math.log((k - 1) * skill / (1 - skill)), 0.0)
