"""An adaptive spin budget for waiters on a peer process.

Shared by the doorbells (``rlmesh.shm``) and the socket streams
(``rlmesh.net``): both wait for a peer that, given a core of its own, answers
within microseconds, which is much less than the cost of going to sleep and
being woken by the kernel. Stdlib only, so both layers can use it.
"""

from __future__ import annotations

__all__ = ["SpinPolicy"]


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
    * **whether spinning pays**: a moving score of hits. When more busy
      processes than cores compete, a spin steals the core the peer needs and
      long spins keep missing; once the score drops below a quarter the budget
      falls to ``minimum`` and the waiter sleeps at once. Every 256 waits the
      policy tries again, so spinning comes back when the machine quietens.

    ``maximum = 0`` disables spinning.
    """

    __slots__ = ("budget", "minimum", "maximum", "_score", "_count")

    #: How often (in waits) a policy that stopped spinning tries again.
    PROBE_EVERY = 256

    def __init__(self, maximum: float = 500e-6, minimum: float = 2e-6, initial: float = 100e-6) -> None:
        if maximum < 0 or minimum < 0:
            raise ValueError("spin budgets must be >= 0")
        self.maximum = maximum
        self.minimum = min(minimum, maximum)
        self.budget = min(initial, maximum)
        self._score = 1.0
        self._count = 0

    def record(self, waited: float) -> None:
        """Adapt to a wait that lasted ``waited`` seconds in all."""
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
