"""Ring buffers for per-step traffic.

:class:`MessageRing` carries variable-length messages from one producer
process to one consumer process through shared memory, with doorbells for
wake-ups. :class:`SlotRing` recycles fixed-size slab blocks for tensor
payloads without ever handing out a block a peer still leases.

Timeouts have rlmesh's one meaning (:mod:`rlmesh._deadline`): None waits
forever, 0 checks once and never waits, a positive number is a deadline; a
running :class:`~rlmesh._deadline.Deadline` may stand for one, so that the
parts of a larger call share its deadline. A blocking call (``put``, ``get``,
``peek``, ``acquire``) that cannot proceed in time raises
:class:`~rlmesh.errors.OperationTimeout`, for 0 too; only the ``*_nowait``
calls raise :class:`~rlmesh.errors.WouldBlock`.

Counters are stored in the host's byte order by the C extension, which is
little-endian: ``import rlmesh`` refuses a big-endian host, so the layout
below is little-endian on every machine that can map it.
"""

from __future__ import annotations

import collections
import math
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from .._deadline import LONGEST_SLEEP, Deadline
from .._lifecycle import Lifecycle, State
from .._native import Ring
from ..errors import BrokenError, ClosedError, InvalidHandle, OperationTimeout, WouldBlock
from ._layout import CACHE_LINE
from .doorbell import CHECK_INTERVAL, Doorbell, SpinPolicy, futex_wake
from .handle import Handle
from .slab import Block, Slab

__all__ = ["MessageRing", "SlotRing"]

#: The per-step state check compares against this (one global, no enum attribute lookup).
_OPEN = State.OPEN

_U32 = struct.Struct("<I")
_RECORD_SIZE = 8  # u32 payload length, u32 tag
_INF = math.inf

# Head and tail are free-running u64 byte counters, as stored in the segment:
# every sum and difference is taken modulo 2**64 (in C), so the ring keeps
# working when they wrap (a peer may start them anywhere).

# The ring's control block, one cache line per field group so the producer's
# and the consumer's counters never share a line:
#
#   offset  size  field
#   0       8     head: bytes ever written (producer)
#   64      8     tail: bytes ever consumed (consumer)
#   128     8     data doorbell: the consumer waits here for messages
#   192     8     space doorbell: the producer waits here for room
#   256     4     producer closed flag
#   260     4     consumer closed flag
#   320     ...   data: `capacity` bytes of records
#
# A record is an 8-byte header (u32 payload length, u32 tag) and the
# payload, padded to 8 bytes. A record never wraps: when it does not fit
# before the end, the producer writes a length of 0xFFFFFFFF there and starts
# again at offset 0.
_HEAD = 0
_TAIL = CACHE_LINE
_DATA_BELL = 2 * CACHE_LINE
_SPACE_BELL = 3 * CACHE_LINE
_PRODUCER_CLOSED = 4 * CACHE_LINE
_CONSUMER_CLOSED = 4 * CACHE_LINE + 4
CONTROL_SIZE = 5 * CACHE_LINE


def _timed_out(timeout: float | None) -> OperationTimeout:
    return OperationTimeout(f"timed out after {timeout:.3g}s waiting for the peer", timeout=timeout)


def _check_timeout(timeout: float | Deadline | None) -> None:
    # The per-message check, kept to a comparison: a negative or NaN timeout
    # is refused even when the call would not have to wait. (Deadline.after
    # checks it fully once a wait begins.)
    if timeout is None or isinstance(timeout, Deadline):
        return
    if not timeout >= 0:
        raise ValueError(f"timeout must be None or >= 0 seconds, got {timeout}")


class MessageRing:
    """A single-producer, single-consumer ring of messages in shared memory.

    Each process builds its own ``MessageRing`` over the same memory and uses
    it in one role: the producer calls :meth:`put` / :meth:`put_nowait`, the
    consumer :meth:`get` / :meth:`get_nowait` (or :meth:`peek` then
    :meth:`pop` to read without a copy).

    The per-message work is the C extension's ``Ring`` (rlmesh/_native_ring.c):
    the counters, the record layout, the doorbells and the waits (a bounded
    spin, then a futex sleep, with the GIL released). It bounds every length
    and offset it reads from the shared memory, so a peer that writes garbage
    gets this side a BrokenError, never a read outside the ring. This class
    keeps the deadlines, liveness checks and closed ends.

    Args:
        buf: a writable view of the shared memory.
        address: the address of ``buf[0]`` in this process.
        offset: where the ring starts in ``buf`` (64-byte aligned).
        capacity: bytes for records, a power of two >= 64.
        spin: the waiting side's spin policy (None: never spin).

    The largest message is ``capacity // 2 - 8`` bytes, so a message always
    fits once the ring is drained, wherever the head is.
    """

    __slots__ = (
        "_buf",
        "_base",
        "_capacity",
        "_core",
        "data_bell",
        "space_bell",
        "spin",
        "max_message",
        "_address",
    )

    def __init__(
        self,
        buf: memoryview,
        address: int,
        offset: int,
        capacity: int,
        *,
        spin: SpinPolicy | None = None,
    ) -> None:
        if capacity < 64 or capacity & (capacity - 1):
            raise ValueError(f"ring capacity must be a power of two >= 64, got {capacity}")
        if offset % CACHE_LINE:
            raise ValueError("a ring must start on a cache line")
        if offset + CONTROL_SIZE + capacity > len(buf):
            raise ValueError("the ring does not fit in the buffer")
        self._buf = buf
        self._base = offset
        self._address = address + offset
        self._capacity = capacity
        self._core = Ring(buf, offset, capacity, BrokenError)
        self.data_bell = Doorbell(buf, offset + _DATA_BELL, address)
        self.space_bell = Doorbell(buf, offset + _SPACE_BELL, address)
        self.spin = spin
        self.max_message = capacity // 2 - _RECORD_SIZE

    @staticmethod
    def footprint(capacity: int) -> int:
        """Bytes a ring of ``capacity`` occupies (control block included)."""
        return CONTROL_SIZE + capacity

    @property
    def capacity(self) -> int:
        """Bytes for records."""
        return self._capacity

    @property
    def tag(self) -> int:
        """The tag of the message returned by the last :meth:`peek`."""
        return self._core.tag

    @property
    def _head(self) -> int:
        # The producer's count of bytes written (modulo 2**64).
        return self._core.head

    @property
    def _tail(self) -> int:
        # The consumer's count of bytes consumed (modulo 2**64).
        return self._core.tail

    @property
    def waits(self) -> tuple[int, int]:
        """``(caught by the spin, futex sleeps)`` of this end's waits so far."""
        return self._core.spun, self._core.slept

    # -- shared state ------------------------------------------------------------

    @property
    def producer_closed(self) -> bool:
        """True once the producer called :meth:`close_producer`."""
        return bool(_U32.unpack_from(self._buf, self._base + _PRODUCER_CLOSED)[0])

    @property
    def consumer_closed(self) -> bool:
        """True once the consumer called :meth:`close_consumer`."""
        return bool(_U32.unpack_from(self._buf, self._base + _CONSUMER_CLOSED)[0])

    def pending(self) -> int:
        """Bytes written and not yet consumed (records and padding)."""
        return self._core.pending()

    # -- producer ----------------------------------------------------------------

    def put(
        self,
        data: Any,
        timeout: float | Deadline | None = None,
        *,
        check: Callable[[], None] | None = None,
        tag: int = 0,
    ) -> None:
        """Append one message, waiting for room up to ``timeout`` seconds.

        Args:
            data: a bytes-like object of at most :attr:`max_message` bytes.
            timeout: seconds to wait for room (or a running Deadline); None
                waits indefinitely; 0 checks for room once and never waits.
            check: liveness check run while waiting (see :meth:`Doorbell.wait`).
            tag: a 32-bit number kept with the message; the consumer reads it
                from :attr:`tag` after :meth:`peek`.

        Raises:
            ValueError: the message is larger than :attr:`max_message`, or
                ``timeout`` is negative or NaN.
            OperationTimeout: no room before the deadline (at once for 0).
            BrokenError: the consumer closed its end (or corrupted the ring).
            ClosedError: this end was closed (:meth:`close_producer`) while waiting.
        """
        _check_timeout(timeout)
        need = self._core.put(data, tag)
        if need:
            self._full(data, tag, need, timeout, check, blocking=True)

    def put_nowait(self, data: Any) -> None:
        """Append one message if there is room now.

        Raises:
            WouldBlock: the ring is full.
            ValueError: the message is larger than :attr:`max_message`.
            BrokenError: the consumer closed its end.
        """
        need = self._core.put(data, 0)
        if need:
            self._full(data, 0, need, None, None, blocking=False)

    def _full(
        self,
        data: Any,
        tag: int,
        need: int,
        timeout: float | Deadline | None,
        check: Callable[[], None] | None,
        *,
        blocking: bool,
    ) -> None:
        if self.consumer_closed:
            raise BrokenError("the ring's consumer has closed")
        if not blocking:
            raise WouldBlock("the ring is full")
        if self.producer_closed:
            raise ClosedError("this ring's producer end is closed")
        self.wait_room(need, timeout, check)
        if self._core.put(data, tag):
            if self.consumer_closed:
                raise BrokenError("the ring's consumer has closed")
            raise BrokenError("corrupt ring: the consumer's tail moved backwards")

    def wait_room(
        self, need: int, timeout: float | Deadline | None, check: Callable[[], None] | None
    ) -> None:
        """Wait until ``need`` bytes are free (the producer's wait, for a record written in place).

        Raises:
            OperationTimeout: no room in time (at once for 0).
            BrokenError: the consumer closed its end.
            ClosedError: this end is (or was, while waiting) closed.
        """
        if self.consumer_closed:
            raise BrokenError("the ring's consumer has closed")
        if self.producer_closed:
            raise ClosedError("this ring's producer end is closed")
        core = self._core
        # The consumer rings the space bell without a barrier (one per message
        # would cost more than the rare full ring saves), so sleep in short
        # slices. A timeout of 0 fails at once: the caller just found the ring full.
        self._wait(lambda spin, sleep: core.wait_space(need, spin, sleep), timeout, check, 0.001)
        if self.producer_closed:
            # Our own end was closed (by another thread) while we waited: that close wins.
            raise ClosedError("this ring's producer end was closed")

    def _wait(
        self,
        wait: Callable[[float, float], int],
        timeout: float | Deadline | None,
        check: Callable[[], None] | None,
        max_sleep: float,
    ) -> None:
        """Spin, then sleep in slices of at most ``max_sleep``, until ``wait`` reports ready.

        The same meaning as :meth:`Doorbell.wait`: a 0 timeout fails at once,
        ``check`` runs about every 50 ms while asleep, the spin follows the
        policy and the machine's load (:meth:`SpinPolicy.current`).
        """
        start = time.monotonic()
        if isinstance(timeout, Deadline):
            at, timeout = timeout.at, timeout.timeout
        elif timeout is None or timeout == _INF:
            at = None
        else:
            at = start + timeout
        if at is not None and start >= at:  # a timeout of 0: one look (the caller's), no spin, no sleep
            raise _timed_out(timeout)
        spin = self.spin
        budget = spin.current(start) if spin is not None else 0.0
        if budget > 0:
            assert spin is not None
            if wait(budget if at is None else min(budget, at - start), 0.0):
                spin.record(time.monotonic() - start)
                return
        last_check = time.monotonic()
        while True:
            now = time.monotonic()
            sleep = max_sleep if at is None else min(max_sleep, at - now)
            if sleep <= 0:
                if wait(0.0, 0.0):  # one last look
                    return
                raise _timed_out(timeout)
            if wait(0.0, sleep):
                if budget > 0:
                    assert spin is not None
                    spin.record(time.monotonic() - start)
                return
            if check is not None and time.monotonic() - last_check >= CHECK_INTERVAL:
                last_check = time.monotonic()
                check()

    def close_producer(self) -> None:
        """Tell the consumer no more messages will come (it gets BrokenError once drained).

        A :meth:`put` of this end waiting for room in another thread wakes
        with ClosedError.
        """
        _U32.pack_into(self._buf, self._base + _PRODUCER_CLOSED, 1)
        self.data_bell.ring()
        # Our own waiter sleeps on the space bell, in 1 ms slices: one ring is enough.
        self.space_bell.ring()

    # -- consumer ------------------------------------------------------------------

    def peek(
        self, timeout: float | Deadline | None = None, *, check: Callable[[], None] | None = None
    ) -> memoryview:
        """Wait for the next message and return a view of it, without consuming it.

        The view stays valid until :meth:`pop`; call it once done. Release
        the view (or let it go) before the ring's memory is closed.

        Args:
            timeout: seconds to wait (or a running Deadline); None waits
                forever; 0 looks once and never waits.
            check: liveness check run while waiting (see :meth:`Doorbell.wait`).

        Raises:
            OperationTimeout: no message before the deadline (at once for 0).
            BrokenError: the producer closed its end and the ring is empty, or
                wrote a record that breaks the ring's layout.
            ClosedError: this end is closed (:meth:`close_consumer`) and the ring is empty.
            ValueError: ``timeout`` is negative or NaN.
        """
        _check_timeout(timeout)
        view = self._core.peek()
        if view is None:
            self.await_message(timeout, check)
            view = self._core.peek()
            if view is None:
                raise BrokenError("the ring's producer has closed")
        return view

    def peek_nowait(self) -> memoryview:
        """Return a view of the next message if one is waiting (see :meth:`peek`).

        Raises:
            WouldBlock: the ring is empty.
            BrokenError: the producer closed its end and the ring is empty.
        """
        view = self._core.peek()
        if view is None:
            if self.producer_closed:
                raise BrokenError("the ring's producer has closed")
            raise WouldBlock("the ring is empty")
        return view

    def await_message(self, timeout: float | Deadline | None, check: Callable[[], None] | None) -> None:
        """Wait until a message is there (or the producer closed), for a reader that takes it in place.

        Raises:
            OperationTimeout: nothing in time (at once for 0).
            BrokenError: the producer closed its end.
            ClosedError: this end is (or was, while waiting) closed.
        """
        if self.producer_closed:
            raise BrokenError("the ring's producer has closed")
        if self.consumer_closed:
            raise ClosedError("this ring's consumer end is closed")
        self._wait(self._core.wait_data, timeout, check, CHECK_INTERVAL)
        if self.consumer_closed:
            # Our own end was closed (by another thread) while we waited: that close wins.
            raise ClosedError("this ring's consumer end was closed")

    def pop(self) -> None:
        """Consume the message returned by the last :meth:`peek`."""
        self._core.pop()

    def get(
        self, timeout: float | Deadline | None = None, *, check: Callable[[], None] | None = None
    ) -> bytes:
        """Wait for the next message and return a copy of it.

        Args:
            timeout: seconds to wait (or a running Deadline); None waits
                forever; 0 looks once and never waits.
            check: liveness check run while waiting (see :meth:`Doorbell.wait`).

        Raises:
            OperationTimeout: no message before the deadline (at once for 0).
            BrokenError: the producer closed its end and the ring is empty.
            ClosedError: this end is closed (:meth:`close_consumer`) and the ring is empty.
            ValueError: ``timeout`` is negative or NaN.
        """
        _check_timeout(timeout)
        data = self._core.get()
        if data is None:
            self.await_message(timeout, check)
            data = self._core.get()
            if data is None:
                raise BrokenError("the ring's producer has closed")
        return data

    def get_nowait(self) -> bytes:
        """Return the next message if one is waiting.

        Raises:
            WouldBlock: the ring is empty.
            BrokenError: the producer closed its end and the ring is empty.
        """
        data = self._core.get()
        if data is None:
            if self.producer_closed:
                raise BrokenError("the ring's producer has closed")
            raise WouldBlock("the ring is empty")
        return data

    def close_consumer(self) -> None:
        """Tell the producer nobody reads any more (it gets BrokenError).

        A :meth:`get` or :meth:`peek` of this end waiting in another thread
        wakes with ClosedError.
        """
        _U32.pack_into(self._buf, self._base + _CONSUMER_CLOSED, 1)
        self.space_bell.ring()
        # Wake our own waiter. Only the producer writes the data bell's
        # sequence on the per-step path, so this wake leaves the sequence
        # alone: a waiter already asleep wakes now, one just about to sleep
        # within its 50 ms slice, and both see the flag.
        futex_wake(self._address + _DATA_BELL)

    def __repr__(self) -> str:
        return f"<MessageRing capacity={self._capacity} pending={self.pending()}>"


class SlotRing:
    """Fixed-size slab blocks recycled in FIFO order, never while leased.

    :meth:`acquire` hands out a free slot (it is *leased* from then on);
    :meth:`release` takes a lease back, checking the handle's generation.
    Steady state allocates nothing. When every slot is leased, the policy
    decides: ``"grow"`` takes a fresh block from the slab (returned to the
    slab once more than ``depth`` slots are free again), ``"wait"`` blocks
    until a release or the deadline.

    Args:
        slab: the slab to carve slots from.
        slot_size: bytes per slot.
        depth: slots allocated up front.
        policy: "grow" or "wait".
        max_slots: with "grow", the most slots ever leased at once; further
            acquires wait as with "wait".

    Lifetime: :meth:`close` (idempotent) wakes an :meth:`acquire` waiting in
    another thread with ClosedError; every later call raises ClosedError.
    The ring holds no memory of its own (the slab owns its blocks and frees
    them at the slab's close), so it has no finalizer.

    Thread safety: acquire and release may run on different threads.
    """

    def __init__(
        self,
        slab: Slab,
        slot_size: int,
        depth: int,
        *,
        policy: str = "grow",
        max_slots: int | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError("a slot ring needs depth >= 1")
        if policy not in ("grow", "wait"):
            raise ValueError(f"policy must be 'grow' or 'wait', got {policy!r}")
        self._slab = slab
        self.slot_size = slot_size
        self.depth = depth
        self.policy = policy
        self.max_slots = max_slots
        self._free: collections.deque[Block] = collections.deque()
        self._leased: dict[tuple[int, int], Block] = {}
        # A plain Lock: acquire/release run every step, and RLock is slower.
        # The per-step acquire and release take the plain lock (a C-level context
        # manager; the Condition's own __enter__/__exit__ are Python calls), and
        # notify only when an acquire waits for room (counted in _waiters).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiters = 0
        self._life = Lifecycle("the slot ring")
        for _ in range(depth):
            self._free.append(slab.alloc(slot_size))
        self._total = depth

    @property
    def state(self) -> State:
        """OPEN or CLOSED (see :mod:`rlmesh._lifecycle`)."""
        return self._life.state

    @property
    def leased(self) -> int:
        """Slots handed out and not released."""
        return len(self._leased)

    @property
    def total(self) -> int:
        """Slots owned by the ring, free or leased."""
        return self._total

    def acquire(self, timeout: float | Deadline | None = None) -> Block:
        """Lease the next free slot.

        Args:
            timeout: seconds (or a running Deadline) to wait for a release
                when every slot is leased (and the policy cannot grow); None
                waits forever; 0 never waits.

        Raises:
            OperationTimeout: no slot became free before the deadline (at
                once for 0).
            ClosedError: the ring is closed.
            ValueError: ``timeout`` is negative or NaN.
        """
        _check_timeout(timeout)
        return self._acquire(timeout, blocking=True)

    def acquire_nowait(self) -> Block:
        """Lease the next free slot if one is free now (or the policy can grow).

        Raises:
            WouldBlock: every slot is leased.
            ClosedError: the ring is closed.
        """
        return self._acquire(None, blocking=False)

    def _acquire(self, timeout: float | Deadline | None, *, blocking: bool) -> Block:
        with self._lock:
            if self._life.state is not _OPEN:
                raise ClosedError("the slot ring is closed")
            if not self._free:
                self._make_room(timeout, blocking=blocking)
            block = self._free.popleft()
            # Renew under the lock that release() checks generations under, so
            # a stale handle of the previous lease can never release this one.
            self._slab.renew(block)
            block.nbytes = self.slot_size
            self._leased[(block.segment, block.offset)] = block
        return block

    def _make_room(self, timeout: float | Deadline | None, *, blocking: bool) -> None:
        if self.policy == "grow" and (self.max_slots is None or self._total < self.max_slots):
            self._free.append(self._slab.alloc(self.slot_size))
            self._total += 1
            return
        if not blocking:
            raise WouldBlock("every slot is leased")
        deadline = Deadline.of(timeout)
        while not self._free:
            if self._life.state is not _OPEN:
                raise ClosedError("the slot ring is closed")
            if deadline.expired():
                raise OperationTimeout(
                    f"every slot is leased and none was released within {deadline.timeout:.3g}s",
                    timeout=deadline.timeout,
                )
            self._waiters += 1
            try:
                self._cond.wait(deadline.bounded(LONGEST_SLEEP))
            finally:
                self._waiters -= 1

    def release(self, handle: Handle) -> None:
        """Take back the lease a handle names.

        Raises:
            InvalidHandle: the handle is forged, stale, or not leased from this ring.
            ClosedError: the ring is closed.
        """
        with self._lock:
            if self._life.state is not _OPEN:
                raise ClosedError("the slot ring is closed")
            block = self._slab.resolve(handle)
            if self._leased.pop((block.segment, block.offset), None) is None:
                raise InvalidHandle(f"{handle} is not leased from this slot ring")
            if len(self._free) >= self.depth and self._total > self.depth:
                # Shrink back once the burst that grew the ring is over.
                self._total -= 1
                self._slab.free(block)
            else:
                self._free.append(block)
            if self._waiters:
                self._cond.notify()

    def release_all(self) -> int:
        """Take back every lease (the peer went away); returns how many there were.

        Raises:
            ClosedError: the ring is closed.
        """
        with self._cond:
            self._life.check_open()
            blocks = list(self._leased.values())
            self._leased.clear()
            for block in blocks:
                self._free.append(block)
            self._cond.notify_all()
        return len(blocks)

    def close(self) -> None:
        """Wake any waiter with ClosedError; the slab still owns the memory. Idempotent."""
        if not self._life.begin_close():
            return
        with self._cond:
            self._life.finish_close()
            self._cond.notify_all()

    def __repr__(self) -> str:
        return f"<SlotRing slot={self.slot_size} depth={self.depth} total={self._total} leased={self.leased}>"
