"""MessageRing and SlotRing, single process: property tests against simple models.

MessageRing is checked against a ``collections.deque`` plus a byte-accounting
model of the documented layout (8-byte record headers, payloads padded to 8,
records never wrap: a wrap marker skips to offset 0), so "full" is predicted
exactly. SlotRing is checked against the set of leased (segment, offset)
pairs, with a byte pattern written into every held slot.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from rlmesh._deadline import Deadline
from rlmesh.errors import (
    BrokenError,
    ClosedError,
    InvalidHandle,
    OperationTimeout,
    WouldBlock,
)
from rlmesh.shm import Block, Handle, MessageRing, Segment, Slab, SlotRing

MACHINE_SETTINGS = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def pad8(n: int) -> int:
    return (n + 7) & ~7


def make_ring_pair(capacity: int) -> tuple[Segment, MessageRing, MessageRing]:
    """A segment holding one ring, seen through a producer and a consumer object."""
    seg = Segment.create(64 + MessageRing.footprint(capacity))
    producer = MessageRing(seg.buf, seg.address, 64, capacity)
    consumer = MessageRing(seg.buf, seg.address, 64, capacity)
    return seg, producer, consumer


@pytest.fixture
def ring_pair() -> Iterator[tuple[MessageRing, MessageRing]]:
    seg, producer, consumer = make_ring_pair(256)
    try:
        yield producer, consumer
    finally:
        del producer, consumer
        seg.close()


# -- MessageRing --------------------------------------------------------------------------


class MessageRingMachine(RuleBasedStateMachine):
    """Random put/get interleavings against a deque and a byte-accounting model."""

    def __init__(self) -> None:
        super().__init__()
        self.seg: Segment | None = None
        self.model: collections.deque[tuple[bytes, int]] = collections.deque()
        self.head = 0  # bytes ever written, wrap padding included
        self.tail = 0  # bytes ever consumed
        self.serial = 0

    @initialize(capacity=st.sampled_from([64, 128, 256, 1024]))
    def setup(self, capacity: int) -> None:
        self.capacity = capacity
        self.seg, self.producer, self.consumer = make_ring_pair(capacity)
        assert self.producer.max_message == capacity // 2 - 8

    def teardown(self) -> None:
        if self.seg is not None:
            self.producer = self.consumer = None  # type: ignore[assignment]
            self.seg.close()

    def _payload(self, data: st.DataObject) -> bytes:
        limit = self.producer.max_message
        n = data.draw(
            st.one_of(st.integers(0, limit), st.sampled_from([0, 1, 7, 8, 9, limit - 1, limit])),
            label="size",
        )
        self.serial += 1
        # Distinct, non-trivial contents: a serial number then a counter.
        stamp = self.serial.to_bytes(4, "little")
        return (stamp + bytes((self.serial + i) & 0xFF for i in range(n)))[:n]

    def _plan(self, n: int) -> tuple[bool, int]:
        """Whether a message of n bytes fits now, and the bytes it will consume."""
        record = 8 + pad8(n)
        room_to_end = self.capacity - self.head % self.capacity
        need = record if record <= room_to_end else room_to_end + record
        return self.capacity - (self.head - self.tail) >= need, need

    @rule(data=st.data(), blocking=st.booleans())
    def put(self, data: st.DataObject, blocking: bool) -> None:
        payload = self._payload(data)
        fits, need = self._plan(len(payload))
        if not fits:
            if blocking:
                with pytest.raises(OperationTimeout):
                    self.producer.put(payload, timeout=0)
            else:
                with pytest.raises(WouldBlock):
                    self.producer.put_nowait(payload)
            return
        if blocking:
            self.producer.put(memoryview(payload), timeout=0)
        else:
            self.producer.put_nowait(payload)
        self.head += need
        self.model.append((payload, need))

    @rule()
    def put_too_large(self) -> None:
        with pytest.raises(ValueError):
            self.producer.put_nowait(b"\0" * (self.producer.max_message + 1))

    @rule(copy=st.booleans(), blocking=st.booleans())
    def get(self, copy: bool, blocking: bool) -> None:
        if not self.model:
            if blocking:
                # A timeout of 0 looks once and fails as a timeout.
                with pytest.raises(OperationTimeout):
                    self.consumer.get(timeout=0) if copy else self.consumer.peek(timeout=0)
            else:
                with pytest.raises(WouldBlock):
                    self.consumer.get_nowait() if copy else self.consumer.peek_nowait()
            return
        expected, consumed = self.model.popleft()
        if copy:
            assert (self.consumer.get(timeout=0) if blocking else self.consumer.get_nowait()) == expected
        else:
            view = self.consumer.peek(timeout=0) if blocking else self.consumer.peek_nowait()
            try:
                assert view.readonly is False and bytes(view) == expected
            finally:
                view.release()
            self.consumer.pop()
        self.tail += consumed

    @precondition(lambda self: len(self.model) > 0)
    @rule()
    def drain(self) -> None:
        while self.model:
            expected, consumed = self.model.popleft()
            assert self.consumer.get(timeout=0) == expected
            self.tail += consumed
        with pytest.raises(WouldBlock):
            self.consumer.get_nowait()

    @invariant()
    def pending_matches_the_model(self) -> None:
        if self.seg is None:
            return
        assert self.producer.pending() == self.head - self.tail
        assert self.consumer.pending() == self.head - self.tail
        assert 0 <= self.head - self.tail <= self.capacity


MessageRingMachine.TestCase.settings = MACHINE_SETTINGS
TestMessageRingModel = MessageRingMachine.TestCase


def test_ring_wraps_around_many_times(ring_pair: tuple[MessageRing, MessageRing]) -> None:
    producer, consumer = ring_pair
    sizes = [0, 1, 100, 120, 7, 64, 3, 119]
    sent = 0
    for rnd in range(200):
        batch = []
        for i, n in enumerate(sizes[rnd % 3 :]):
            msg = bytes([(rnd + i) & 0xFF]) * n
            try:
                producer.put_nowait(msg)
            except WouldBlock:
                break
            batch.append(msg)
        assert batch, "an empty ring must take at least one message"
        for msg in batch:
            assert consumer.get_nowait() == msg
        sent += len(batch)
    assert producer.pending() == 0
    assert sent > 200
    # The byte counters went around the 256-byte ring many times.
    assert consumer._tail > 50 * 256


def test_ring_full_then_empty(ring_pair: tuple[MessageRing, MessageRing]) -> None:
    producer, consumer = ring_pair
    count = 0
    while True:
        try:
            producer.put_nowait(b"12345678")  # 16-byte records: exactly 16 fit
        except WouldBlock:
            break
        count += 1
    assert count == 256 // 16
    assert producer.pending() == 256
    with pytest.raises(OperationTimeout):
        producer.put(b"x", timeout=0.01)
    for _ in range(count):
        assert consumer.get_nowait() == b"12345678"
    with pytest.raises(WouldBlock):
        consumer.get_nowait()
    with pytest.raises(OperationTimeout):
        consumer.get(timeout=0.01)
    producer.put_nowait(b"again")
    assert consumer.get(timeout=1) == b"again"


@pytest.mark.parametrize("bad", [-1, -1e-9, float("nan")])
def test_negative_or_nan_timeouts_are_refused(ring_pair: tuple[MessageRing, MessageRing], bad: float) -> None:
    producer, consumer = ring_pair
    # Refused whether or not the call would have had to wait.
    with pytest.raises(ValueError):
        consumer.get(timeout=bad)
    with pytest.raises(ValueError):
        producer.put(b"x", timeout=bad)
    producer.put(b"x", timeout=None)
    with pytest.raises(ValueError):
        consumer.peek(timeout=bad)
    assert consumer.get(timeout=0) == b"x"


def test_zero_timeout_never_waits_and_none_waits_for_the_peer(
    ring_pair: tuple[MessageRing, MessageRing],
) -> None:
    producer, consumer = ring_pair
    start = time.monotonic()
    for _ in range(100):
        with pytest.raises(OperationTimeout) as info:
            consumer.get(timeout=0)
    assert time.monotonic() - start < 0.5  # no spin, no sleep: 100 looks
    assert info.value.timeout == 0
    thread = threading.Timer(0.05, producer.put, args=(b"late",))
    thread.start()
    try:
        assert consumer.get(timeout=None) == b"late"
    finally:
        thread.join(timeout=10)


def test_a_shared_deadline_spans_a_put_and_a_get(ring_pair: tuple[MessageRing, MessageRing]) -> None:
    producer, consumer = ring_pair
    deadline = Deadline.after(0.3)
    producer.put(b"x", deadline)
    assert consumer.get(deadline) == b"x"
    time.sleep(0.15)  # half the call's time goes elsewhere
    start = time.monotonic()
    with pytest.raises(OperationTimeout) as info:
        consumer.get(deadline)
    assert time.monotonic() - start < 0.3  # what was left, not the whole timeout again
    assert info.value.timeout == 0.3


def test_largest_message_fits_wherever_the_head_is(ring_pair: tuple[MessageRing, MessageRing]) -> None:
    producer, consumer = ring_pair
    big = bytes(range(producer.max_message))
    for offset_msg in range(0, 16):
        producer.put_nowait(b"a" * offset_msg)
        assert consumer.get_nowait() == b"a" * offset_msg
        producer.put_nowait(big)  # the ring is empty: it must fit
        assert consumer.get_nowait() == big


def test_messages_of_any_buffer_type(ring_pair: tuple[MessageRing, MessageRing]) -> None:
    producer, consumer = ring_pair
    producer.put_nowait(bytearray(b"ba"))
    producer.put_nowait(memoryview(b"mv"))
    assert consumer.get_nowait() == b"ba"
    assert consumer.get_nowait() == b"mv"


def test_ring_validates_its_geometry() -> None:
    seg = Segment.create(4096)
    try:
        for capacity in (0, 32, 100, 1000):
            with pytest.raises(ValueError):
                MessageRing(seg.buf, seg.address, 64, capacity)
        with pytest.raises(ValueError):
            MessageRing(seg.buf, seg.address, 96, 256)  # not on a cache line
        with pytest.raises(ValueError):
            MessageRing(seg.buf, seg.address, 64, 4096)  # does not fit
    finally:
        seg.close()


def test_closing_ends(ring_pair: tuple[MessageRing, MessageRing]) -> None:
    producer, consumer = ring_pair
    producer.put_nowait(b"last")
    producer.close_producer()
    assert consumer.producer_closed
    assert consumer.get_nowait() == b"last"  # drained first
    with pytest.raises(BrokenError):
        consumer.get_nowait()
    with pytest.raises(BrokenError):
        consumer.get(timeout=5)


def test_producer_sees_a_closed_consumer_when_full(ring_pair: tuple[MessageRing, MessageRing]) -> None:
    producer, consumer = ring_pair
    consumer.close_consumer()
    assert producer.consumer_closed
    with pytest.raises(BrokenError):
        for _ in range(100):
            producer.put(b"x" * 64, timeout=5)


# -- SlotRing -------------------------------------------------------------------------------


class SlotRingMachine(RuleBasedStateMachine):
    """Random acquire/release interleavings; held slots are never handed out twice."""

    policy = "grow"
    max_slots: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self.slab: Slab | None = None
        self.held: dict[tuple[int, int], tuple[Block, Handle, int]] = {}
        self.stale: list[Handle] = []
        self.pattern = 0
        self.cycles = 0

    @initialize(slot_size=st.sampled_from([1, 64, 100, 4096]), depth=st.integers(1, 4))
    def setup(self, slot_size: int, depth: int) -> None:
        self.slab = Slab(segment_size=1 << 16)
        self.ring = SlotRing(self.slab, slot_size, depth, policy=self.policy, max_slots=self.max_slots)
        self.slot_size = slot_size
        self.depth = depth

    def teardown(self) -> None:
        if self.slab is not None:
            self.slab.close()

    def _can_acquire(self) -> bool:
        if self.ring.total > len(self.held):
            return True
        return self.policy == "grow" and (self.max_slots is None or self.ring.total < self.max_slots)

    @rule(blocking=st.booleans())
    def acquire(self, blocking: bool) -> None:
        assert self.slab is not None
        if not self._can_acquire():
            # A timeout of 0 never waits: it fails at once, as a timeout.
            with pytest.raises(OperationTimeout if blocking else WouldBlock):
                self.ring.acquire(timeout=0) if blocking else self.ring.acquire_nowait()
            return
        block = self.ring.acquire(timeout=0) if blocking else self.ring.acquire_nowait()
        key = (block.segment, block.offset)
        assert key not in self.held, "a leased slot was handed out again"
        assert block.nbytes == self.slot_size
        handle = block.handle
        for other in self.stale:
            assert other.generation != handle.generation
        self.pattern = (self.pattern % 255) + 1
        view = self.slab.view(block)
        view[:] = bytes([self.pattern]) * self.slot_size
        view.release()
        self.held[key] = (block, handle, self.pattern)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.held)), label="slot")
        _, handle, _ = self.held.pop(key)
        self.ring.release(Handle.decode(handle.encode()))
        self.stale.append(handle)
        self.cycles += 1

    @precondition(lambda self: bool(self.stale))
    @rule(data=st.data())
    def release_stale(self, data: st.DataObject) -> None:
        handle = data.draw(st.sampled_from(self.stale), label="stale")
        with pytest.raises(InvalidHandle):
            self.ring.release(handle)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), field=st.sampled_from(["segment", "generation", "offset"]))
    def release_forged(self, data: st.DataObject, field: str) -> None:
        key = data.draw(st.sampled_from(sorted(self.held)), label="slot")
        _, handle, _ = self.held[key]
        forged = handle._replace(**{field: getattr(handle, field) + 64})
        with pytest.raises(InvalidHandle):
            self.ring.release(forged)

    @invariant()
    def held_slots_are_intact(self) -> None:
        if self.slab is None:
            return
        assert self.ring.leased == len(self.held)
        assert self.slab.live_blocks == self.ring.total
        free = self.ring.total - self.ring.leased
        assert free <= self.depth
        if not self.held:
            assert self.ring.total == self.depth  # grown slots went back to the slab
        if self.max_slots is not None:
            assert self.ring.total <= max(self.max_slots, self.depth)
        for block, handle, pattern in self.held.values():
            assert self.slab.resolve(handle) is block
            view = self.slab.view(block)
            try:
                assert view.tobytes() == bytes([pattern]) * self.slot_size
            finally:
                view.release()


class SlotRingGrowCapped(SlotRingMachine):
    max_slots = 5


class SlotRingWait(SlotRingMachine):
    policy = "wait"


for _machine in (SlotRingMachine, SlotRingGrowCapped, SlotRingWait):
    _machine.TestCase.settings = MACHINE_SETTINGS
TestSlotRingGrow = SlotRingMachine.TestCase
TestSlotRingGrowCapped = SlotRingGrowCapped.TestCase
TestSlotRingWait = SlotRingWait.TestCase


@pytest.fixture
def slab() -> Iterator[Slab]:
    s = Slab(segment_size=1 << 16)
    try:
        yield s
    finally:
        s.close()


def test_held_leases_survive_many_cycles(slab: Slab) -> None:
    ring = SlotRing(slab, 256, 3, policy="wait")
    held = [ring.acquire(timeout=0) for _ in range(2)]
    for i, block in enumerate(held):
        slab.view(block)[:] = bytes([0xA0 + i]) * 256
    held_keys = {(b.segment, b.offset) for b in held}
    handles = []
    for cycle in range(1000):
        block = ring.acquire(timeout=0)
        assert (block.segment, block.offset) not in held_keys
        handles.append(block.handle)
        slab.view(block)[:] = bytes([cycle & 0xFF]) * 256
        ring.release(block.handle)
    assert len({h.generation for h in handles}) == 1000
    for i, block in enumerate(held):
        assert slab.view(block).tobytes() == bytes([0xA0 + i]) * 256
    for h in handles[-3:]:
        with pytest.raises(InvalidHandle):
            ring.release(h)
    for block in held:
        ring.release(block.handle)
    assert ring.leased == 0


def test_grow_grows_and_shrinks_back(slab: Slab) -> None:
    ring = SlotRing(slab, 1000, 2, policy="grow")
    assert ring.total == 2 and slab.live_blocks == 2
    blocks = [ring.acquire(timeout=0) for _ in range(7)]
    assert ring.total == 7 and ring.leased == 7 and slab.live_blocks == 7
    assert len({(b.segment, b.offset) for b in blocks}) == 7
    for block in blocks:
        ring.release(block.handle)
    assert ring.total == 2 and ring.leased == 0 and slab.live_blocks == 2
    # Steady state afterwards allocates nothing.
    for _ in range(50):
        ring.release(ring.acquire(timeout=0).handle)
    assert ring.total == 2 and slab.live_blocks == 2


def test_grow_with_max_slots_then_waits(slab: Slab) -> None:
    ring = SlotRing(slab, 64, 1, policy="grow", max_slots=3)
    blocks = [ring.acquire(timeout=0) for _ in range(3)]
    with pytest.raises(WouldBlock):
        ring.acquire_nowait()
    with pytest.raises(OperationTimeout):
        ring.acquire(timeout=0)
    with pytest.raises(OperationTimeout):
        ring.acquire(timeout=0.05)
    ring.release(blocks[0].handle)
    assert ring.acquire(timeout=0) is blocks[0]


@pytest.mark.parametrize("timeout", [0.1, 0.3])
def test_wait_times_out(slab: Slab, timeout: float) -> None:
    ring = SlotRing(slab, 64, 1, policy="wait")
    ring.acquire(timeout=0)
    with pytest.raises(WouldBlock):
        ring.acquire_nowait()
    start = time.monotonic()
    with pytest.raises(OperationTimeout) as info:
        ring.acquire(timeout=timeout)
    elapsed = time.monotonic() - start
    assert timeout * 0.5 <= elapsed <= timeout * 1.5 + 0.2
    assert info.value.timeout == timeout


def test_wait_wakes_on_a_release_from_another_thread(slab: Slab) -> None:
    ring = SlotRing(slab, 64, 1, policy="wait")
    block = ring.acquire(timeout=0)
    handle = block.handle
    got: list[Block] = []

    def waiter() -> None:
        got.append(ring.acquire(timeout=10))

    thread = threading.Thread(target=waiter)
    thread.start()
    ring.release(handle)
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert got == [block]
    assert got[0].handle.generation != handle.generation


def test_close_wakes_a_waiter_with_closed_error(slab: Slab) -> None:
    ring = SlotRing(slab, 64, 1, policy="wait")
    ring.acquire(timeout=0)
    errors: list[BaseException] = []
    started = threading.Event()

    def waiter() -> None:
        started.set()
        try:
            ring.acquire(timeout=10)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    assert started.wait(timeout=10)
    ring.close()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ClosedError)
    with pytest.raises(ClosedError):
        ring.acquire(timeout=0)
    ring.close()


def test_release_all_takes_every_lease_back(slab: Slab) -> None:
    ring = SlotRing(slab, 64, 3, policy="wait")
    handles = [ring.acquire(timeout=0).handle for _ in range(3)]
    assert ring.release_all() == 3
    assert ring.leased == 0
    for h in handles:
        with pytest.raises(InvalidHandle):
            ring.release(h)
    assert len({(b.segment, b.offset) for b in (ring.acquire(timeout=0) for _ in range(3))}) == 3


def test_release_rejects_handles_of_another_ring(slab: Slab) -> None:
    ring_a = SlotRing(slab, 64, 1)
    ring_b = SlotRing(slab, 64, 1)
    block = ring_a.acquire(timeout=0)
    with pytest.raises(InvalidHandle):
        ring_b.release(block.handle)
    ring_a.release(block.handle)


def test_stale_release_racing_an_acquire_cannot_free_the_new_lease(
    slab: Slab, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A duplicate release of the previous lease arrives (on another thread) while
    # acquire() hands the same slot out again: it must be rejected as stale.
    ring = SlotRing(slab, 64, 1, policy="wait")
    first = ring.acquire(timeout=0)
    old = first.handle
    ring.release(old)
    outcome: list[BaseException | None] = []
    real_renew = slab.renew

    def late_release() -> None:
        try:
            ring.release(old)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    def renew_with_a_racing_release(block: Block) -> None:
        racer = threading.Thread(target=late_release)
        racer.start()
        racer.join(timeout=0.2)  # it must not get in before the renewal
        threads.append(racer)
        real_renew(block)

    threads: list[threading.Thread] = []
    monkeypatch.setattr(slab, "renew", renew_with_a_racing_release)
    second = ring.acquire(timeout=0)
    monkeypatch.undo()
    threads[0].join(timeout=10)
    assert not threads[0].is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], InvalidHandle)
    assert ring.leased == 1
    with pytest.raises(WouldBlock):
        ring.acquire_nowait()
    ring.release(second.handle)


def test_a_timeout_longer_than_the_os_takes_still_waits(slab: Slab) -> None:
    # threading refuses waits past about 9.2e9 s (OverflowError); a longer
    # timeout sleeps in slices and is woken by a release like any other.
    ring = SlotRing(slab, 64, 1, policy="wait")
    block = ring.acquire(timeout=0)
    timer = threading.Timer(0.05, ring.release, args=(block.handle,))
    timer.start()
    try:
        assert ring.acquire(timeout=1e12) is block
    finally:
        timer.join(timeout=10)


def test_acquire_keeps_a_running_deadline(slab: Slab) -> None:
    ring = SlotRing(slab, 64, 1, policy="wait")
    deadline = Deadline.after(0.3)
    ring.acquire(deadline)
    time.sleep(0.15)
    start = time.monotonic()
    with pytest.raises(OperationTimeout):
        ring.acquire(deadline)
    assert time.monotonic() - start < 0.3


@pytest.mark.parametrize("bad", [-1, float("nan")])
def test_slot_ring_refuses_negative_or_nan_timeouts(slab: Slab, bad: float) -> None:
    ring = SlotRing(slab, 64, 1, policy="wait")
    with pytest.raises(ValueError):
        ring.acquire(timeout=bad)  # a slot is free, and still refused
    assert ring.leased == 0


def test_slot_ring_validates_arguments(slab: Slab) -> None:
    with pytest.raises(ValueError):
        SlotRing(slab, 64, 0)
    with pytest.raises(ValueError):
        SlotRing(slab, 64, 1, policy="drop")
