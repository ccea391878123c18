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

Counters are stored in the host's byte order through ctypes words, which is
little-endian: ``import rlmesh`` refuses a big-endian host, so the layout
below is little-endian on every machine that can map it.
"""

from __future__ import annotations

import collections
import ctypes
import platform
import struct
import threading
from collections.abc import Callable
from typing import Any

from .._deadline import LONGEST_SLEEP, Deadline
from .._lifecycle import Lifecycle, State
from ..errors import BrokenError, ClosedError, InvalidHandle, OperationTimeout, WouldBlock
from ._layout import CACHE_LINE
from .doorbell import Doorbell, SpinPolicy, fence, futex_wake
from .handle import Handle
from .slab import Block, Slab

__all__ = ["MessageRing", "SlotRing"]

#: The per-step state check compares against this (one global, no enum attribute lookup).
_OPEN = State.OPEN

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_RECORD = struct.Struct("<II")  # payload length, reserved

_WRAP = 0xFFFFFFFF

# Head and tail are free-running u64 byte counters, as stored in the segment:
# every sum and difference is taken modulo 2**64, so the ring keeps working
# when they wrap (a peer may start them anywhere).
_M64 = (1 << 64) - 1

# Only weakly ordered CPUs (arm64) need explicit fences around the payload:
# between writing it and publishing the head, between reading the head and
# reading it, and between reading it and publishing the tail. x86 keeps loads
# and stores in those orders by itself.
_FENCE = platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686")

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
# A record is an 8-byte header (u32 payload length, u32 reserved) and the
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


def _pad8(n: int) -> int:
    return (n + 7) & ~7


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
        "_data",
        "_capacity",
        "_mask",
        "_head",
        "_tail",
        "data_bell",
        "space_bell",
        "spin",
        "max_message",
        "tag",
        "_words",
        "_data_seq",
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
        self._data = offset + CONTROL_SIZE
        self._capacity = capacity
        self._mask = capacity - 1
        self.data_bell = Doorbell(buf, offset + _DATA_BELL, address)
        self.space_bell = Doorbell(buf, offset + _SPACE_BELL, address)
        self._head: int = _U64.unpack_from(buf, offset + _HEAD)[0]
        self._tail: int = _U64.unpack_from(buf, offset + _TAIL)[0]
        self.spin = spin
        self.max_message = capacity // 2 - _RECORD.size
        #: The tag of the message returned by the last :meth:`peek`.
        self.tag = 0
        # ctypes words over the counters: publishing one is a single 8-byte
        # store (see _put) with no slice and cast per message, and they take
        # no buffer export, so the segment stays closable. Every put and pop
        # touches `buf` first, which raises once the segment is closed, so
        # these addresses are never written after an unmap.
        base = address + offset
        self._words = (
            ctypes.c_uint64.from_address(base + _HEAD),
            ctypes.c_uint64.from_address(base + _TAIL),
            ctypes.c_uint32.from_address(base + _DATA_BELL),
        )
        self._data_seq: int = _U32.unpack_from(buf, offset + _DATA_BELL)[0]

    @staticmethod
    def footprint(capacity: int) -> int:
        """Bytes a ring of ``capacity`` occupies (control block included)."""
        return CONTROL_SIZE + capacity

    @property
    def capacity(self) -> int:
        """Bytes for records."""
        return self._capacity

    # -- shared state ------------------------------------------------------------

    def _load_head(self) -> int:
        return int(_U64.unpack_from(self._buf, self._base + _HEAD)[0])

    def _load_tail(self) -> int:
        return int(_U64.unpack_from(self._buf, self._base + _TAIL)[0])

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
        return (self._load_head() - self._load_tail()) & _M64

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
            BrokenError: the consumer closed its end.
            ClosedError: this end was closed (:meth:`close_producer`) while waiting.
        """
        _check_timeout(timeout)
        self._put(data, timeout, check, blocking=True, tag=tag)

    def put_nowait(self, data: Any) -> None:
        """Append one message if there is room now.

        Raises:
            WouldBlock: the ring is full.
            ValueError: the message is larger than :attr:`max_message`.
            BrokenError: the consumer closed its end.
        """
        self._put(data, None, None, blocking=False)

    def _put(
        self,
        data: Any,
        timeout: float | Deadline | None,
        check: Callable[[], None] | None,
        *,
        blocking: bool,
        tag: int = 0,
    ) -> None:
        if type(data) is not bytes and type(data) is not bytearray:
            data = memoryview(data).cast("B")
        n = len(data)
        if n > self.max_message:
            raise ValueError(f"a {n}-byte message exceeds this ring's limit of {self.max_message} bytes")
        record = _RECORD.size + _pad8(n)
        head = self._head
        pos = head & self._mask
        room_to_end = self._capacity - pos
        need = record if record <= room_to_end else room_to_end + record
        if self._capacity - ((head - self._tail) & _M64) < need:
            self._tail = self._load_tail()
            if self._capacity - ((head - self._tail) & _M64) < need:
                if self.consumer_closed:
                    raise BrokenError("the ring's consumer has closed")
                if not blocking:
                    raise WouldBlock("the ring is full")
                self._wait_for_room(need, timeout, check)
        buf = self._buf
        if record > room_to_end:
            _RECORD.pack_into(buf, self._data + pos, _WRAP, 0)
            head = (head + room_to_end) & _M64
            pos = 0
        start = self._data + pos
        _RECORD.pack_into(buf, start, n, tag)
        buf[start + 8 : start + 8 + n] = data
        head = (head + record) & _M64
        self._head = head
        # The payload is in place before the head moves (x86 keeps stores in
        # order; elsewhere the fence orders them). Head and tail are
        # published with one 8-byte store: struct.pack_into zeroes its target
        # before writing it, and a peer that read that transient 0 as the head
        # would take a stale record for a new one.
        if _FENCE:
            fence()
        head_word, _, seq_word = self._words
        head_word.value = head
        # The data doorbell, inlined: only this producer writes its sequence.
        seq = self._data_seq = (self._data_seq + 1) & 0xFFFFFFFF
        seq_word.value = seq
        fence()
        if _U32.unpack_from(buf, self._base + _DATA_BELL + 4)[0]:
            futex_wake(self._address + _DATA_BELL)

    def _wait_for_room(
        self, need: int, timeout: float | Deadline | None, check: Callable[[], None] | None
    ) -> None:
        if self.producer_closed:
            raise ClosedError("this ring's producer end is closed")

        def ready() -> bool:
            self._tail = self._load_tail()
            return (
                self._capacity - ((self._head - self._tail) & _M64) >= need
                or self.consumer_closed
                or self.producer_closed
            )

        # Doorbell.wait fails at once for a timeout of 0: the caller just
        # found the ring full, so one more look is all 0 allows.
        # The consumer rings the space bell without a barrier (one per message
        # would cost more than the rare full ring saves), so sleep in short slices.
        self.space_bell.wait(ready, timeout, spin=self.spin, check=check, max_sleep=0.001)
        if self.producer_closed:
            # Our own end was closed (by another thread) while we waited: that close wins.
            raise ClosedError("this ring's producer end was closed")
        if self.consumer_closed and self._capacity - ((self._head - self._tail) & _M64) < need:
            raise BrokenError("the ring's consumer has closed")

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
            BrokenError: the producer closed its end and the ring is empty.
            ClosedError: this end is closed (:meth:`close_consumer`) and the ring is empty.
            ValueError: ``timeout`` is negative or NaN.
        """
        _check_timeout(timeout)
        if self._load_head() == self._tail:
            self._await_message(timeout, check)
        return self._view_next()

    def peek_nowait(self) -> memoryview:
        """Return a view of the next message if one is waiting (see :meth:`peek`).

        Raises:
            WouldBlock: the ring is empty.
            BrokenError: the producer closed its end and the ring is empty.
        """
        if self._load_head() == self._tail:
            if self.producer_closed:
                raise BrokenError("the ring's producer has closed")
            raise WouldBlock("the ring is empty")
        return self._view_next()

    def _await_message(self, timeout: float | Deadline | None, check: Callable[[], None] | None) -> None:
        if self.producer_closed:
            raise BrokenError("the ring's producer has closed")
        if self.consumer_closed:
            raise ClosedError("this ring's consumer end is closed")
        self.data_bell.wait(self._ready_or_closed, timeout, spin=self.spin, check=check)
        if self.consumer_closed:
            # Our own end was closed (by another thread) while we waited: that close wins.
            raise ClosedError("this ring's consumer end was closed")
        if self._load_head() == self._tail:
            raise BrokenError("the ring's producer has closed")

    def _view_next(self) -> memoryview:
        if _FENCE:
            fence()
        buf = self._buf
        pos = self._tail & self._mask
        n, tag = _RECORD.unpack_from(buf, self._data + pos)
        if n == _WRAP:
            self._tail = (self._tail + self._capacity - pos) & _M64
            pos = 0
            n, tag = _RECORD.unpack_from(buf, self._data)
        self.tag = tag
        if n > self.max_message:
            raise BrokenError(f"corrupt ring: a record claims {n} bytes")
        start = self._data + pos + _RECORD.size
        return buf[start : start + n]

    def _ready_or_closed(self) -> bool:
        return self._load_head() != self._tail or self.producer_closed or self.consumer_closed

    def pop(self) -> None:
        """Consume the message returned by the last :meth:`peek`."""
        buf = self._buf
        pos = self._tail & self._mask
        n = _U32.unpack_from(buf, self._data + pos)[0]
        tail = (self._tail + _RECORD.size + _pad8(n)) & _M64
        self._tail = tail
        if _FENCE:
            fence()  # the payload was read before the producer may reuse it
        self._words[1].value = tail  # one store: see _put
        # The space bell, relaxed (no barrier): a producer waiting for room
        # sleeps in 1 ms slices, and only one that flagged itself needs a wake.
        if _U32.unpack_from(buf, self._base + _SPACE_BELL + 4)[0]:
            self.space_bell.ring(relaxed=True)

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
        return self._copy_out(self.peek(timeout, check=check))

    def get_nowait(self) -> bytes:
        """Return the next message if one is waiting.

        Raises:
            WouldBlock: the ring is empty.
            BrokenError: the producer closed its end and the ring is empty.
        """
        return self._copy_out(self.peek_nowait())

    def _copy_out(self, view: memoryview) -> bytes:
        data = bytes(view)
        view.release()
        self.pop()
        return data

    def close_consumer(self) -> None:
        """Tell the producer nobody reads any more (it gets BrokenError).

        A :meth:`get` or :meth:`peek` of this end waiting in another thread
        wakes with ClosedError.
        """
        _U32.pack_into(self._buf, self._base + _CONSUMER_CLOSED, 1)
        self.space_bell.ring()
        # Wake our own waiter. Only the producer writes the data bell's
        # sequence on the per-step path (it keeps a copy), so this wake leaves
        # the sequence alone: a waiter already asleep wakes now, one just
        # about to sleep within its 50 ms slice, and both see the flag.
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
        self._cond = threading.Condition(threading.Lock())
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
        with self._cond:
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
            self._cond.wait(deadline.bounded(LONGEST_SLEEP))

    def release(self, handle: Handle) -> None:
        """Take back the lease a handle names.

        Raises:
            InvalidHandle: the handle is forged, stale, or not leased from this ring.
            ClosedError: the ring is closed.
        """
        with self._cond:
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
