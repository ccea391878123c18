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

Never an unbounded spin: after the spin budget the waiter sleeps, and the
budget shrinks when spinning does not pay (a peer without a core of its own,
more busy processes than cores), so an oversubscribed machine degrades to
blocking wake-ups instead of collapsing.

Timeouts have rlmesh's one meaning (:mod:`rlmesh._deadline`): None waits
forever, 0 checks once and never sleeps, a positive number is a deadline.

Linux only: futexes on shared mappings work across processes and across
containers that share the mapping.
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
import platform
import struct
import time
from collections.abc import Callable

from .._deadline import Deadline
from .._native import memory_barrier
from .._spin import SpinPolicy
from ..errors import OperationTimeout

__all__ = ["Doorbell", "SpinPolicy", "fence", "futex_wait", "futex_wake"]

_SYS_FUTEX = {
    "x86_64": 202,
    "amd64": 202,
    "aarch64": 98,
    "arm64": 98,
    "riscv64": 98,
    "ppc64le": 221,
    "s390x": 238,
}
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1

_libc = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [
    ctypes.c_long,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.POINTER(_Timespec),
    ctypes.c_void_p,
    ctypes.c_uint,
]

_NR_FUTEX = _SYS_FUTEX.get(platform.machine().lower())

#: A full memory barrier between this thread's earlier stores and its later
#: loads (see the module docstring): the C extension's seq_cst fence.
fence = memory_barrier


def futex_wait(address: int, expected: int, timeout: float | None) -> bool:
    """Sleep while the u32 at ``address`` equals ``expected``, at most ``timeout`` s.

    Args:
        address: the futex word's address in this process.
        expected: the value it must still hold for the call to sleep.
        timeout: None sleeps until woken; 0 never sleeps (the kernel only
            compares the word); a positive number is the longest sleep.

    Returns:
        False if the timeout passed; True if woken, interrupted, or the value
        already differed (callers re-check their condition either way).

    Raises:
        ValueError: ``timeout`` is negative or NaN.
        OSError: the futex call failed for another reason.
    """
    if timeout is not None and not timeout >= 0:  # `not >=` catches NaN too
        raise ValueError(f"a futex timeout must be None or >= 0 seconds, got {timeout}")
    if _NR_FUTEX is None:  # pragma: no cover - exotic architecture
        time.sleep(0.001 if timeout is None else min(timeout, 0.001))
        return True
    spec = None
    if timeout is not None:
        sec = int(timeout)
        spec = _Timespec(sec, int((timeout - sec) * 1e9))
    result = _syscall(_NR_FUTEX, address, _FUTEX_WAIT, expected & 0xFFFFFFFF, spec, None, 0)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.ETIMEDOUT:
        return False
    if err in (errno.EAGAIN, errno.EINTR):
        return True
    raise OSError(err, f"futex wait failed: {os.strerror(err)}")


def futex_wake(address: int, count: int = 1) -> None:
    """Wake up to ``count`` waiters sleeping on the u32 at ``address``."""
    if _NR_FUTEX is None:  # pragma: no cover
        return
    _syscall(_NR_FUTEX, address, _FUTEX_WAKE, count, None, None, 0)


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
        _U32.pack_into(buf, offset, (_U32.unpack_from(buf, offset)[0] + 1) & 0xFFFFFFFF)
        if not relaxed:
            fence()
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
        if spin is not None and spin.budget > 0:
            spin_until = start + spin.budget
            if at is not None:
                spin_until = min(spin_until, at)
            polls = 0
            # No sched_yield() here: with a third process runnable it hands the
            # core away for a whole timeslice; the bounded, adaptive budget is
            # what keeps an oversubscribed machine from collapsing.
            while True:
                if ready():
                    spin.record(time.monotonic() - start)
                    return
                polls += 1
                if polls & 15 == 0 and time.monotonic() >= spin_until:
                    break
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
                    if spin is not None:
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

    def __repr__(self) -> str:
        return f"<Doorbell at +{self._offset} seq={self.seq}>"
