"""Restart policies: how often a supervisor respawns a process that died before it gives up.

:class:`RestartPolicy` is the user's opt-in (``EnvServer(..., restart=RestartPolicy())``
for the vector fast path's workers; any supervisor of processes may take the same
object). :class:`RestartBudget` applies it to one supervised process: a sliding
window of the times it was restarted. Stdlib only, so any layer may use it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable

__all__ = ["RestartBudget", "RestartPolicy"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RestartPolicy:
    """Respawn a process that died, unless it is crash-looping. Keyword-only, immutable.

    A process may be restarted ``max_restarts`` times within any
    ``window_seconds``; the death after that (more than ``max_restarts``
    restarts within the window) is a crash loop, and the supervisor gives
    up as it would without a policy (the vector fast path raises
    :class:`~rlmesh.errors.WorkerError` naming the lanes).

    Attributes:
        max_restarts: restarts allowed within the window, >= 0 (0 never restarts).
        window_seconds: the sliding window, a finite number of seconds > 0.

    Raises:
        TypeError: a positional argument, or values of the wrong type.
        ValueError: a negative ``max_restarts``, or a window that is not finite and positive.
    """

    max_restarts: int = 3
    window_seconds: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int):
            raise TypeError(f"max_restarts must be an int, got {type(self.max_restarts).__name__}")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        window = self.window_seconds
        if isinstance(window, bool) or not isinstance(window, (int, float)):
            raise TypeError(f"window_seconds must be a number of seconds, got {type(window).__name__}")
        if math.isnan(window) or math.isinf(window) or window <= 0:
            raise ValueError(f"window_seconds must be a finite number of seconds > 0, got {window}")

    def budget(self, clock: Callable[[], float] = time.monotonic) -> RestartBudget:
        """A fresh budget for one supervised process."""
        return RestartBudget(self, clock)


class RestartBudget:
    """One process's restarts under a :class:`RestartPolicy`.

    Not thread-safe: one supervisor thread asks it.
    """

    def __init__(self, policy: RestartPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._times: deque[float] = deque()
        #: Restarts granted so far.
        self.count = 0

    def recent(self) -> int:
        """Restarts granted within the last window."""
        self._expire(self._clock())
        return len(self._times)

    def _expire(self, now: float) -> None:
        while self._times and now - self._times[0] >= self.policy.window_seconds:
            self._times.popleft()

    def allow(self) -> bool:
        """Whether the process that just died may be restarted; a True is counted as a restart."""
        now = self._clock()
        self._expire(now)
        if len(self._times) >= self.policy.max_restarts:
            return False
        self._times.append(now)
        self.count += 1
        return True
