"""An adaptive spin budget for waiters on a peer process, and when spinning pays.

Shared by the doorbells and rings (``rlmesh.shm``) and the socket streams
(``rlmesh.net``): both wait for a peer that, given a core of its own, answers
within microseconds, which is much less than the cost of going to sleep and
being woken by the kernel. But a spin only pays while the peer has a core:
on a machine with more runnable processes than cores, the spinner takes the
core the peer needs and every step costs a timeslice. So a waiter spins only
when all three say yes:

* the user: ``RLMESH_SPIN=0`` in the environment (or ``spin=False`` on a
  server's ``ServeOptions`` or a client) turns spinning off, and every wait
  goes straight to the futex or ``poll``;
* the machine (:func:`machine_busy`): the number of runnable tasks, read from
  ``/proc/loadavg`` at most every 20 ms and smoothed, exceeds the number of
  cores: the peer cannot have a core of its own;
* the policy (:class:`SpinPolicy`): spins that keep missing turn it down.

Stdlib only, so both layers can use it.
"""

from __future__ import annotations

import os
import time

__all__ = ["ENV_VAR", "SpinPolicy", "machine_busy", "spin_enabled"]

#: The environment variable that turns spinning off process-wide (0, false, no, off).
ENV_VAR = "RLMESH_SPIN"

_OFF = ("0", "false", "no", "off")


def spin_enabled(choice: bool | None = None) -> bool:
    """Whether waiters may spin: ``choice`` when given, else :data:`ENV_VAR` (default on)."""
    if choice is not None:
        return bool(choice)
    return os.environ.get(ENV_VAR, "1").strip().lower() not in _OFF


class _Contention:
    """Whether the machine has more runnable tasks than cores, sampled rarely and cheaply.

    ``/proc/loadavg``'s fourth field is ``runnable/total``: runnable counts
    the task reading it, and, in a ping-pong, the peer computing its answer.
    More than one per core means a third party competes for the cores, and a
    spinner would keep the peer off its core. Each sample costs a few
    microseconds; one is taken at most every :attr:`INTERVAL` seconds, and a
    moving score of samples decides, so a single spike does not.
    """

    INTERVAL = 0.02
    PATH = "/proc/loadavg"

    def __init__(self) -> None:
        self.cores = os.cpu_count() or 1
        self._next = 0.0
        self.busy = self.cores < 2
        self._readable = self.cores >= 2
        # A moving score and a decision per allowance (see check_allowing); 0 is `busy`.
        self._scores: dict[int, float] = {0: 0.0}
        self._busy: dict[int, bool] = {0: self.busy}

    def check(self, now: float) -> bool:
        """True while the machine is oversubscribed (or has a single core)."""
        return self.check_allowing(now, 0)

    def check_allowing(self, now: float, extra: int) -> bool:
        """:meth:`check`, tolerating ``extra`` runnable tasks beyond the cores.

        For a party of processes that knowingly outnumbers the cores by
        ``extra`` (a vector client and as many workers as cores): its own
        tasks, all runnable, are not a third party.
        """
        if extra not in self._scores:
            self._scores[extra] = 0.0
            self._busy[extra] = self.cores < 2
        if now < self._next or not self._readable:
            return self._busy[extra]
        self._next = now + self.INTERVAL
        runnable = self._runnable()
        if runnable is None:
            self._readable = False
            self.busy = False
            for key in self._busy:
                self._busy[key] = False
            return False
        for key, score in self._scores.items():
            score += ((1.0 if runnable > self.cores + key else 0.0) - score) * 0.25
            self._scores[key] = score
            self._busy[key] = score > 0.5
        self.busy = self._busy[0]
        return self._busy[extra]

    def _runnable(self) -> int | None:
        try:
            fd = os.open(self.PATH, os.O_RDONLY)
        except OSError:
            return None
        try:
            fields = os.read(fd, 128).split()
            return int(fields[3].split(b"/")[0])
        except (OSError, IndexError, ValueError):
            return None
        finally:
            os.close(fd)


_CONTENTION = _Contention()


def machine_busy(now: float | None = None) -> bool:
    """True while more tasks are runnable than there are cores (see :class:`_Contention`)."""
    return _CONTENTION.check(time.monotonic() if now is None else now)


class SpinPolicy:
    """An adaptive spin budget, in seconds, for one waiter.

    Two things are tracked after every wait:

    * **the budget follows the waits**: a wait the spin caught leaves it
      alone; a wait that outlasted the spin but ended within ``maximum``
      shows that a somewhat longer spin would have caught it, so the budget
      grows to 1.25 times that wait. This matters because a sleeping peer
      answers late by its own wake-up latency (a futex wake on a virtual
      machine can take a few hundred microseconds): a fixed budget below that
      latency lets both sides of a ping-pong fall asleep and stay asleep. A
      wait longer than ``maximum`` (the peer is doing real work) halves it.
    * **whether spinning pays**: a moving score of hits. When spins keep
      missing, the budget falls to ``minimum``. Every 256 waits the policy
      tries again, so spinning comes back when the machine quietens.

    :meth:`current` is what a waiter spins for: the budget, or 0 while the
    machine is oversubscribed (:func:`machine_busy`; past ``allowance``
    runnable tasks of the waiter's own party beyond the cores). ``maximum = 0``
    disables spinning; so does ``RLMESH_SPIN=0`` for a policy built without
    an explicit ``enabled``.

    Args:
        maximum, minimum, initial: bounds and start of the budget, in seconds.
        enabled: whether to spin at all; None reads ``RLMESH_SPIN``.
        allowance: tasks of the waiter's own party that may outnumber the cores
            (a vector client with as many workers as cores: 1).
    """

    __slots__ = ("budget", "minimum", "maximum", "_score", "_count", "spins", "gated", "allowance")

    #: How often (in waits) a policy that stopped spinning tries again.
    PROBE_EVERY = 256

    def __init__(
        self,
        maximum: float = 500e-6,
        minimum: float = 2e-6,
        initial: float = 100e-6,
        *,
        enabled: bool | None = None,
        allowance: int = 0,
    ) -> None:
        if maximum < 0 or minimum < 0:
            raise ValueError("spin budgets must be >= 0")
        if allowance < 0:
            raise ValueError("the allowance must be >= 0")
        if not spin_enabled(enabled):
            maximum = 0.0
        self.maximum = maximum
        self.minimum = min(minimum, maximum)
        self.budget = min(initial, maximum)
        self._score = 1.0
        self._count = 0
        #: Waits that spun (:meth:`current` gave them a budget).
        self.spins = 0
        #: Waits that went straight to sleep because the machine was oversubscribed.
        self.gated = 0
        #: Runnable tasks beyond the cores that are the waiter's own party (not a
        #: third party): the machine counts as oversubscribed only past them.
        self.allowance = allowance

    def current(self, now: float) -> float:
        """The spin to do now, in seconds: the budget, or 0 on an oversubscribed machine."""
        budget = self.budget
        if budget <= 0:
            return 0.0
        allowance = self.allowance
        if _CONTENTION.check_allowing(now, allowance) if allowance else _CONTENTION.check(now):
            self.gated += 1
            return 0.0
        self.spins += 1
        return budget

    def record(self, waited: float) -> None:
        """Adapt to a wait that spun and lasted ``waited`` seconds in all."""
        self._count += 1
        if self._score < 0.25 and self._count % self.PROBE_EVERY == 0:
            self._score = 0.5
        hit = waited <= self.budget
        self._score += ((1.0 if hit else 0.0) - self._score) * 0.0625
        if hit:
            return
        if self._score < 0.25:
            self.budget = self.minimum
        elif waited <= self.maximum:
            self.budget = min(self.maximum, waited * 1.25)
        else:
            self.budget = max(self.minimum, self.budget / 2)

    def __repr__(self) -> str:
        budget, maximum = self.budget * 1e6, self.maximum * 1e6
        return f"SpinPolicy(budget={budget:.1f}us, max={maximum:.1f}us, score={self._score:.2f})"
