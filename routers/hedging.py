"""Hedged requests: when a call runs past its member's recent p95, send a duplicate to an idle replica.

The first valid answer wins and the other call is cancelled (vLLM aborts a request whose client
went away). Only replicas of the same worker (`Member.group`) qualify, so the vote means the same.
"""

from __future__ import annotations

from collections.abc import Sequence

from routers.base import MemberState, load_key


def hedge_plan(primary: MemberState, replicas: Sequence[MemberState], min_samples: int,
               asked: Sequence[str]) -> tuple[float, str] | None:
    """(seconds to wait before hedging, replica to ask) or None when hedging is not possible."""
    if primary.p95_s is None or primary.samples < min_samples:
        return None
    spare = [r for r in replicas if r.name != primary.name and r.group == primary.group and r.usable
             and r.name not in asked]
    if not spare:
        return None
    return primary.p95_s, min(spare, key=load_key).name
