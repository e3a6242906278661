"""Calls to pool members: pooled HTTP (or litellm, chosen once per member), retries, breaker, stats, pricing.

Upstream never knows about labels; routers read `Upstreams.state` snapshots, never the clients.
"""

from gateway.upstream.client import Upstreams
from gateway.upstream.reply import Reply, UpstreamError

__all__ = ["Reply", "UpstreamError", "Upstreams"]
