"""One meaning for a timeout inside rlmesh, and the deadline it becomes.

Every call inside the library that can block takes ``timeout: float | None``,
in seconds, with one meaning:

* ``None`` waits forever (liveness checks still run);
* ``0`` never waits: the call checks its condition once and, if it cannot
  proceed, fails at once with its timeout error;
* a positive number is a deadline that many seconds after the call;
* ``math.inf`` is the same as ``None``;
* a negative number or NaN is a :class:`ValueError`, never "no deadline".

The published API reads ``0`` as "no deadline" at its own keywords
(``request_timeout_seconds``, a call's ``timeout=``); the endpoints convert
that once, where the user's value comes in, and everything below them sees
only the meaning above.

A :class:`Deadline` is that timeout fixed to the monotonic clock when a call
starts, so that the parts of one call (a send, then a receive; the prefix of
a frame, then its body) share one deadline instead of each getting the whole
timeout again. Stdlib only (layer 0).
"""

from __future__ import annotations

import math
import time
from typing import Final

__all__ = ["LONGEST_SLEEP", "POLL_FOREVER", "Deadline", "check_timeout"]

#: What :meth:`Deadline.poll_ms` returns for "no deadline": poll(2) waits
#: forever on a negative timeout.
POLL_FOREVER: Final = -1

#: The longest single sleep to hand an OS call (a day): threading and socket
#: timeouts raise OverflowError past roughly 9.2e9 s, so a longer wait sleeps
#: in slices of this and checks its deadline in between.
LONGEST_SLEEP: Final = 86400.0

# poll(2) takes a C int of milliseconds; a longer wait is cut to this (about
# 24.8 days) and the caller's loop polls again until the deadline.
_POLL_MAX_MS: Final = 2**31 - 1

_INF: Final = math.inf


def check_timeout(timeout: float | None, name: str = "timeout") -> float | None:
    """Validate a timeout in seconds and return it as a float, or None for "never".

    Args:
        timeout: None or a number of seconds >= 0; ``math.inf`` means None.
        name: the argument's name, for the error message.

    Returns:
        None to wait forever, else the timeout as a float (0.0 included).

    Raises:
        TypeError: not a number (a bool is not a number of seconds either).
        ValueError: negative or NaN.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, got {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"{name} must be None or >= 0 seconds, got {timeout}")
    if math.isinf(timeout):
        return None
    return float(timeout)


class Deadline:
    """A point on the monotonic clock by which a call must be done, or none.

    Build one with :meth:`after` at the start of a call and hand it to every
    wait the call makes. Treat it as immutable.

    Attributes:
        at: the deadline on :func:`time.monotonic`'s clock; None for never.
        timeout: the timeout it was made from (for error messages); None for never.
    """

    __slots__ = ("at", "timeout")

    at: float | None
    timeout: float | None

    def __init__(self, at: float | None, timeout: float | None) -> None:
        self.at = at
        self.timeout = timeout

    @classmethod
    def after(cls, timeout: float | None) -> Deadline:
        """The deadline ``timeout`` seconds from now (see the module docstring).

        ``0`` gives a deadline that has already passed: :meth:`expired` is
        true at once and :meth:`remaining` is ``0.0``, so a wait checks once
        and never sleeps.

        Raises:
            TypeError: ``timeout`` is not a number or None.
            ValueError: ``timeout`` is negative or NaN.
        """
        if timeout is None:
            return NEVER
        # The common case in one comparison (NaN and inf fail it), since a
        # deadline is made for every frame and every wait that sleeps.
        if type(timeout) is float and 0.0 <= timeout < _INF:
            return cls(time.monotonic() + timeout, timeout)
        seconds = check_timeout(timeout)
        if seconds is None:
            return NEVER
        return cls(time.monotonic() + seconds, seconds)

    @classmethod
    def of(cls, timeout: float | Deadline | None) -> Deadline:
        """``timeout`` as a Deadline: a running one as it is, else :meth:`after`.

        For calls that take either, so that the parts of one larger call can
        share its deadline.

        Raises:
            TypeError: ``timeout`` is not a number, a Deadline or None.
            ValueError: ``timeout`` is negative or NaN.
        """
        return timeout if isinstance(timeout, Deadline) else cls.after(timeout)

    @property
    def forever(self) -> bool:
        """True if this deadline never passes."""
        return self.at is None

    def expired(self) -> bool:
        """True once the deadline has passed (at once for a timeout of 0)."""
        return self.at is not None and time.monotonic() >= self.at

    def remaining(self) -> float | None:
        """Seconds left, never negative; None if the deadline never passes."""
        if self.at is None:
            return None
        return max(self.at - time.monotonic(), 0.0)

    def bounded(self, longest: float) -> float:
        """Seconds to sleep in one slice: what is left, but at most ``longest``.

        A waiter that must wake up now and then (to run a liveness check)
        sleeps in slices; with no deadline every slice is ``longest``.
        """
        remaining = self.remaining()
        return longest if remaining is None else min(longest, remaining)

    def poll_ms(self) -> int:
        """What is left as a poll(2) timeout: whole milliseconds, rounded up.

        A positive remainder never becomes 0 (which would make poll return
        at once, and its caller spin until the deadline); 0 only once the
        deadline has passed; :data:`POLL_FOREVER` for no deadline. Waits
        longer than poll(2) can take (about 24.8 days) are cut short; poll
        again until :meth:`expired`.
        """
        remaining = self.remaining()
        if remaining is None:
            return POLL_FOREVER
        return min(math.ceil(remaining * 1000), _POLL_MAX_MS)

    def __repr__(self) -> str:
        if self.at is None:
            return "Deadline(never)"
        return f"Deadline(timeout={self.timeout!r}, remaining={self.remaining():.6f})"


#: The deadline that never passes (``Deadline.after(None)``).
NEVER: Final = Deadline(None, None)
