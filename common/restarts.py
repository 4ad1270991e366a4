"""How often a supervised process may die before its supervisor gives up, and how long it waits before a restart.

Shared by ``premd serve``'s supervision of its component processes and of the embedded nats-server: a crash
is restarted after a short pause that doubles with each recent death (a crash loop must not spin the CPU),
and more than ``max_restarts`` deaths within ``window_s`` mean it cannot be brought back.
"""

from __future__ import annotations

import collections
import time

FIRST_DELAY_S = 0.1
MAX_RESTARTS = 5
WINDOW_S = 60.0


class RestartBudget:
    def __init__(self, max_restarts: int = MAX_RESTARTS, window_s: float = WINDOW_S) -> None:
        self.max_restarts = max_restarts
        self.window_s = window_s
        self._deaths: collections.deque[float] = collections.deque()

    def died(self, now: float | None = None) -> float | None:
        """Count one death: the pause before the restart, or None when the budget is spent."""
        now = time.monotonic() if now is None else now
        self._deaths.append(now)
        while self._deaths and self._deaths[0] < now - self.window_s:
            self._deaths.popleft()
        if len(self._deaths) > self.max_restarts:
            return None
        return FIRST_DELAY_S * float(2 ** (len(self._deaths) - 1))

    @property
    def recent(self) -> int:
        """Deaths counted within the window (as of the last ``died``)."""
        return len(self._deaths)
