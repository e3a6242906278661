"""A member's refused calls (any status but 200): logged with the upstream's message, at most one line a minute per
member, and counted per kind of call (the path), so a member that refuses every call of a kind is unhealthy in
/readyz and `crowd_gateway_member_healthy` instead of looking well while every vote it gives fails (issue 23: a base
model without a chat template answered each chat call with 400, silently, for 100 calls).

Why not only the breaker: a 4xx says the server is up and this request is wrong for it; opening the circuit would
also stop the calls of the kinds it does answer. 5xx, 408 and 429 count against the breaker as well.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

log = logging.getLogger("crowd_gateway.upstream")
LOG_EVERY_S = 60.0


class Rejections:
    """One member's streaks of refused calls per path, and the rate limit of its log lines."""

    def __init__(self, member: str, threshold: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.member = member
        self.threshold = threshold
        """Refused calls of one kind in a row that make the member unhealthy (the breaker's failure threshold)."""
        self.clock = clock
        self.streaks: dict[str, tuple[int, str]] = {}
        """path -> (refused calls in a row, the last refusal's status and message)."""
        self._logged_at = -math.inf
        self._unlogged = 0

    def refused(self, path: str, status: int, message: str) -> None:
        reason = f"HTTP {status}: {message}"
        self.streaks[path] = (self.streaks.get(path, (0, ""))[0] + 1, reason)
        now = self.clock()
        if now - self._logged_at < LOG_EVERY_S:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more refused calls since its last line)" if self._unlogged else ""
        log.warning("member %s refused a call to %s: %s%s", self.member, path, reason, more)
        self._logged_at, self._unlogged = now, 0

    def answered(self, path: str) -> None:
        self.streaks.pop(path, None)

    def problem(self) -> str | None:
        """Why the member is unhealthy (a kind of call it refused `threshold` times in a row), else None."""
        for path, (count, reason) in self.streaks.items():
            if count >= self.threshold:
                return f"refused its last {count} calls to {path} ({reason})"
        return None
