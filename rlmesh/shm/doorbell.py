"""Doorbells: cross-process wake-ups through a futex word in shared memory.

A doorbell is an *eventcount*: a 32-bit sequence word plus a waiter flag,
living in shared memory::

    offset  size  field
    0       4     seq      bumped by the ringer on every ring; the futex word
    4       4     waiting  1 while the (single) waiter may be asleep

The waiter first spins for a bounded, adaptive time (a peer with a core of its
own answers in a microsecond or two), then publishes ``waiting = 1``, reads
``seq``, re-checks its condition, and sleeps in ``FUTEX_WAIT`` only if ``seq``
still holds the value it read. The ringer publishes its state change, bumps
``seq``, and issues ``FUTEX_WAKE`` only when ``waiting`` is set, so a ring
costs no system call while the peer spins. The kernel compares ``seq``
atomically with going to sleep, so a ring between the check and the sleep is
never lost.

Both sides need a full (store-load) barrier between their store and their
load (a Dekker pattern). Python has no atomics, so :func:`fence` is the C
extension's ``memory_barrier()``: a C11 sequentially consistent fence
(``mfence`` on x86-64, ``dmb ish`` on arm64), which orders the store before
the load whatever the interpreter does around the call.

Never an unbounded spin: after the spin budget the waiter sleeps; the
budget shrinks when spinning does not pay, and the waiter does not spin at
all while the machine has more runnable tasks than cores (the peer could not
have a core of its own) or when the user turned spinning off (``RLMESH_SPIN=0``):
see :mod:`rlmesh._spin`. The spin yields the core (``sched_yield``) every few
polls, so a peer waiting for it gets it.

The message rings (:mod:`rlmesh.shm.ring`) do the same in C, with the GIL
released; this class serves waiters whose condition is a Python callable
(:meth:`Doorbell.wait`) or a condition over u32 words of the same memory that
the C extension evaluates (:meth:`Doorbell.wait_words`, :func:`word_terms`:
the vector fast path's sequence words). A ring is an atomic increment in C,
so several processes may ring one doorbell.

Timeouts have rlmesh's one meaning (:mod:`rlmesh._deadline`): None waits
forever, 0 checks once and never sleeps, a positive number is a deadline.

Linux only: futexes on shared mappings work across processes and across
containers that share the mapping.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable

from .._deadline import Deadline
from .._native import bell_ring, futex_wait, futex_wake, memory_barrier, sched_yield, wait_words
from .._spin import SpinPolicy
from ..errors import OperationTimeout

__all__ = ["WORD_EQ", "WORD_NE", "Doorbell", "SpinPolicy", "fence", "futex_wait", "futex_wake", "word_terms"]

#: A full memory barrier between this thread's earlier stores and its later
#: loads (see the module docstring): the C extension's seq_cst fence.
fence = memory_barrier

# futex_wait(address, expected, timeout) -> bool and futex_wake(address, count=1)
# are the C extension's (rlmesh/_native_ring.c): the system call without ctypes,
# the GIL released while asleep. futex_wait returns False if the timeout passed,
# True if woken, interrupted or the value already differed; it raises
# ValueError for a negative or NaN timeout and OSError for a failed call.

_U32 = struct.Struct("<I")
_INF = math.inf


def _timed_out(timeout: float | None) -> OperationTimeout:
    return OperationTimeout(f"timed out after {timeout:.3g}s waiting for the peer", timeout=timeout)


#: While blocked, the waiter wakes up this often to run its liveness check.
CHECK_INTERVAL = 0.05


class Doorbell:
    """One doorbell in shared memory: one ringer, one waiter.

    Args:
        buf: a writable view of the shared memory holding the doorbell.
        offset: where its 8 bytes start in ``buf`` (4-byte aligned).
        address: the address of ``buf[0]`` (for the futex calls).
    """

    __slots__ = ("_buf", "_offset", "_address")

    SIZE = 8

    def __init__(self, buf: memoryview, offset: int, address: int) -> None:
        if offset % 4:
            raise ValueError("a doorbell must be 4-byte aligned")
        self._buf = buf
        self._offset = offset
        self._address = address + offset

    @property
    def seq(self) -> int:
        """The current sequence number."""
        return int(_U32.unpack_from(self._buf, self._offset)[0])

    def ring(self, *, relaxed: bool = False) -> None:
        """Bump the sequence and wake the waiter if it may be asleep.

        Publish whatever the waiter checks *before* ringing.

        Args:
            relaxed: skip the barrier. A wake-up can then be missed, so only
                use it for a doorbell whose waiter sleeps in short slices
                (``max_sleep``): a rare event where a millisecond is cheap and
                the barrier on every ring is not.
        """
        buf, offset = self._buf, self._offset
        if not relaxed:
            # In C: an atomic increment (several processes may ring one doorbell: a
            # lost increment could leave a sleeper's futex value unchanged), the
            # fence, and the wake if the waiter flagged it may be asleep.
            bell_ring(buf, offset)
            return
        _U32.pack_into(buf, offset, (_U32.unpack_from(buf, offset)[0] + 1) & 0xFFFFFFFF)
        if _U32.unpack_from(buf, offset + 4)[0]:
            futex_wake(self._address)

    def wait(
        self,
        ready: Callable[[], bool],
        timeout: float | Deadline | None,
        *,
        spin: SpinPolicy | None = None,
        check: Callable[[], None] | None = None,
        max_sleep: float = CHECK_INTERVAL,
    ) -> None:
        """Block until ``ready()`` is true.

        Args:
            ready: the condition; must be cheap and side-effect free.
            timeout: None waits forever (``check`` still runs); 0 checks
                ``ready()`` once and never spins or sleeps; a positive number
                is the longest wait in seconds. A :class:`Deadline` already
                running (one call's parts sharing it) is taken as it is.
            spin: the spin budget to use and adapt; None does not spin.
            check: called about every 50 ms while asleep, for liveness; it
                raises to abort the wait (a dead peer, say).
            max_sleep: the longest single sleep, in seconds (see ``relaxed``
                in :meth:`ring`).

        Raises:
            OperationTimeout: ``timeout`` passed first (at once for 0, when
                ``ready()`` is false).
            ValueError: ``timeout`` is negative or NaN.
        """
        # The spin below runs on every message a peer does not have ready, and
        # building a Deadline would cost a good part of a spin-caught wait: so
        # the spin works on the bare deadline `at`, and the Deadline is built
        # only for the sleep. The meaning is the same (rlmesh._deadline).
        if isinstance(timeout, Deadline):
            deadline: Deadline | None = timeout
            at, timeout = timeout.at, timeout.timeout
        else:
            if timeout is not None and not timeout >= 0:  # `not >=` catches NaN too
                raise ValueError(f"timeout must be None or >= 0 seconds, got {timeout}")
            deadline = at = None
        if ready():
            return
        start = time.monotonic()
        if deadline is None and timeout is not None and timeout != _INF:
            at = start + timeout
        if at is not None and start >= at:  # a timeout of 0: one look, no spin, no sleep
            raise _timed_out(timeout)
        budget = spin.current(start) if spin is not None else 0.0
        if budget > 0:
            assert spin is not None
            spin_until = start + budget
            if at is not None:
                spin_until = min(spin_until, at)
            polls = 0
            # The spin runs only while the machine has a core for the peer
            # (SpinPolicy.current); inside it, a sched_yield every few polls
            # hands the core over to a peer that needs it, and costs one
            # system call when nobody does.
            while True:
                if ready():
                    spin.record(time.monotonic() - start)
                    return
                polls += 1
                if polls & 15 == 0:
                    if time.monotonic() >= spin_until:
                        break
                    sched_yield()
        if deadline is None:
            deadline = Deadline.after(None) if at is None else Deadline(at, timeout)
        buf, offset, address = self._buf, self._offset, self._address
        last_check = time.monotonic()
        _U32.pack_into(buf, offset + 4, 1)
        try:
            while True:
                fence()
                seq = _U32.unpack_from(buf, offset)[0]
                if ready():
                    if budget > 0:
                        assert spin is not None
                        spin.record(time.monotonic() - start)
                    return
                if deadline.expired():
                    raise _timed_out(timeout)
                futex_wait(address, seq, deadline.bounded(max_sleep))
                if check is not None and time.monotonic() - last_check >= CHECK_INTERVAL:
                    last_check = time.monotonic()
                    check()
        finally:
            _U32.pack_into(buf, offset + 4, 0)

    def wait_words(
        self,
        terms: bytes | bytearray,
        timeout: float | Deadline | None,
        *,
        spin: SpinPolicy | None = None,
        check: Callable[[], None] | None = None,
        max_sleep: float = CHECK_INTERVAL,
    ) -> None:
        """Block until a condition over u32 words of the same memory holds (see :func:`word_terms`).

        :meth:`wait` for a condition the C extension evaluates: the spin and
        the sleep run in C with the GIL released, and a poll costs
        nanoseconds instead of a Python call (the vector fast path's waits on
        its workers' and its client's sequence words). Same arguments and
        meaning otherwise.

        Raises:
            OperationTimeout: ``timeout`` passed first.
            ValueError: ``timeout`` is negative or NaN, or a term lies outside the memory.
        """
        if isinstance(timeout, Deadline):
            deadline: Deadline | None = timeout
            at, timeout = timeout.at, timeout.timeout
        else:
            if timeout is not None and not timeout >= 0:  # `not >=` catches NaN too
                raise ValueError(f"timeout must be None or >= 0 seconds, got {timeout}")
            deadline = at = None
        buf, offset = self._buf, self._offset
        start = time.monotonic()
        if deadline is None and timeout is not None and timeout != _INF:
            at = start + timeout
        if at is not None and start >= at:  # a timeout of 0: one look, no spin, no sleep
            if wait_words(buf, terms, offset, 0.0, 0.0):
                return
            raise _timed_out(timeout)
        budget = spin.current(start) if spin is not None else 0.0
        if budget > 0:
            assert spin is not None
            if at is not None:
                budget = min(budget, at - start)
            if wait_words(buf, terms, offset, budget, 0.0):
                spin.record(time.monotonic() - start)
                return
        elif wait_words(buf, terms, offset, 0.0, 0.0):
            return
        if deadline is None:
            deadline = Deadline.after(None) if at is None else Deadline(at, timeout)
        last_check = time.monotonic()
        while True:
            if wait_words(buf, terms, offset, 0.0, deadline.bounded(max_sleep)):
                if budget > 0:
                    assert spin is not None
                    spin.record(time.monotonic() - start)
                return
            if deadline.expired():
                raise _timed_out(timeout)
            if check is not None and time.monotonic() - last_check >= CHECK_INTERVAL:
                last_check = time.monotonic()
                check()

    def __repr__(self) -> str:
        return f"<Doorbell at +{self._offset} seq={self.seq}>"


#: :func:`word_terms` operators: the word equals the value, or differs from it.
WORD_EQ = 0
WORD_NE = 1


def word_terms(groups: list[list[tuple[int, int, int]]]) -> bytes:
    """The condition :meth:`Doorbell.wait_words` waits for, packed for the C extension.

    Args:
        groups: every group must hold; a group holds when any of its
            ``(offset, op, value)`` terms does: the u32 at ``offset`` (from
            the start of the doorbell's memory, 4-byte aligned) equals
            (:data:`WORD_EQ`) or differs from (:data:`WORD_NE`) ``value``.

    Raises:
        ValueError: more than 256 terms. struct.error: a value outside u32.
    """
    flat = [(off, op, value & 0xFFFFFFFF, g) for g, terms in enumerate(groups) for off, op, value in terms]
    if len(flat) > 256:
        raise ValueError(f"a word wait takes at most 256 terms, got {len(flat)}")
    return struct.pack(f"<{4 * len(flat)}I", *(x for term in flat for x in term))
