"""The native ring (rlmesh._native.Ring under MessageRing): counters at 2**64, a hostile
peer's records, a peer that dies mid-message, deadlines while blocked, spin counters."""

from __future__ import annotations

import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from rlmesh import _native, _spin
from rlmesh.errors import BrokenError, OperationTimeout, WouldBlock
from rlmesh.shm import MessageRing, Segment, SpinPolicy
from rlmesh.shm.ring import CONTROL_SIZE
from tests.conftest import ROOT

U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
BASE = 64  # the ring's offset in the test segment
HEAD, TAIL, DATA = BASE, BASE + 64, BASE + CONTROL_SIZE


def ring_segment(capacity: int) -> Segment:
    return Segment.create(BASE + MessageRing.footprint(capacity))


@pytest.fixture
def seg() -> Iterator[Segment]:
    segment = ring_segment(256)
    try:
        yield segment
    finally:
        segment.close()


def pair(
    seg: Segment, capacity: int = 256, spin: SpinPolicy | None = None
) -> tuple[MessageRing, MessageRing]:
    return (
        MessageRing(seg.buf, seg.address, BASE, capacity),
        MessageRing(seg.buf, seg.address, BASE, capacity, spin=spin),
    )


def test_message_ring_runs_on_the_native_ring(seg: Segment) -> None:
    producer, _ = pair(seg)
    assert type(producer._core) is _native.Ring


@pytest.mark.parametrize("start", [2**64 - 8, 2**64 - 200, 2**64 - 256 - 24, 2**63])
def test_counters_wrap_at_2_to_the_64(seg: Segment, start: int) -> None:
    # Both counters start just below 2**64 (a peer may start them anywhere):
    # sums and differences are modulo 2**64, as the stored words.
    U64.pack_into(seg.buf, HEAD, start)
    U64.pack_into(seg.buf, TAIL, start)
    producer, consumer = pair(seg)
    sent = 0
    for rnd in range(60):
        batch = [bytes([(rnd * 7 + i) & 0xFF]) * n for i, n in enumerate((1, 50, 0, 90, 13)[rnd % 3 :])]
        queued = []
        for msg in batch:
            try:
                producer.put_nowait(msg)
            except WouldBlock:
                break
            queued.append(msg)
        assert queued
        assert producer.pending() == consumer.pending() > 0
        for msg in queued:
            view = consumer.peek(timeout=0)
            assert bytes(view) == msg
            view.release()
            consumer.pop()
        sent += len(queued)
    assert producer.pending() == 0
    head = U64.unpack_from(seg.buf, HEAD)[0]
    assert head == consumer._tail == producer._head
    if start > 2**63:
        assert head < start  # the counters went past 2**64 and wrapped
    assert sent > 60


def forge(seg: Segment, records: list[tuple[int, int, int]], head: int) -> None:
    """Write (offset, length, tag) record headers and publish ``head``, as a hostile producer."""
    for offset, length, tag in records:
        U32.pack_into(seg.buf, DATA + offset, length)
        U32.pack_into(seg.buf, DATA + offset + 4, tag)
    U64.pack_into(seg.buf, HEAD, head)


@pytest.mark.parametrize(
    ("records", "head"),
    [
        ([(0, 121, 0)], 256),  # more than max_message (120)
        ([(0, 100, 0)], 16),  # claims more bytes than the head published
        ([(0, 8, 0)], 4096),  # the head is further ahead than the ring holds
        ([(0, 8, 0)], 12),  # a head that is not a whole record
        ([(0, 0xFFFFFFFF, 0)], 256),  # a wrap marker at offset 0, nothing after it
        ([(0, 0xFFFFFFFF, 0), (0, 0xFFFFFFFF, 0)], 264),  # wrap marker, then a wrap marker as the record
    ],
)
def test_a_hostile_producer_gets_broken_error_not_a_read_outside(
    seg: Segment, records: list[tuple[int, int, int]], head: int
) -> None:
    _, consumer = pair(seg)
    forge(seg, records, head)
    with pytest.raises(BrokenError, match="corrupt ring"):
        consumer.peek(timeout=0)
    with pytest.raises(BrokenError, match="corrupt ring"):
        consumer.get_nowait()
    with pytest.raises(BrokenError, match="corrupt ring"):
        consumer.pop()


def test_a_record_overrunning_the_ring_end_is_refused(seg: Segment) -> None:
    producer, consumer = pair(seg)
    # Move both counters to 240 honestly, then forge a 100-byte record there:
    # it fits in what the head claims but would run past the ring's end.
    producer.put_nowait(bytes(112))
    producer.put_nowait(bytes(112))
    assert consumer.get_nowait() == bytes(112)
    assert consumer.get_nowait() == bytes(112)
    assert consumer._tail == 240
    forge(seg, [(240, 100, 0)], 240 + 112)
    with pytest.raises(BrokenError, match="claims 100 bytes"):
        consumer.peek_nowait()


def test_a_hostile_consumer_tail_breaks_the_producer(seg: Segment) -> None:
    producer, _ = pair(seg)
    producer.put_nowait(b"x" * 100)
    producer.put_nowait(b"x" * 100)  # full by the producer's own count
    U64.pack_into(seg.buf, TAIL, 10_000)  # consumed more than was ever written
    with pytest.raises(BrokenError, match="corrupt ring"):
        producer.put(b"y" * 100, timeout=0)  # no room by its own count: it reads the tail
    with pytest.raises(BrokenError, match="corrupt ring"):
        producer.put_nowait(b"y" * 100)


def test_a_deadline_while_blocked_on_an_empty_ring(seg: Segment) -> None:
    _, consumer = pair(seg, spin=SpinPolicy(enabled=True))
    start = time.monotonic()
    with pytest.raises(OperationTimeout) as info:
        consumer.peek(timeout=0.2)
    elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < 1.0
    assert info.value.timeout == 0.2
    assert consumer.waits[1] >= 1  # it slept on the futex
    assert U32.unpack_from(seg.buf, BASE + 128 + 4)[0] == 0  # the waiting flag is cleared


def test_a_deadline_while_blocked_on_a_full_ring(seg: Segment) -> None:
    producer, _ = pair(seg)
    while True:
        try:
            producer.put_nowait(bytes(56))
        except WouldBlock:
            break
    start = time.monotonic()
    with pytest.raises(OperationTimeout):
        producer.put(bytes(56), timeout=0.1)
    assert 0.05 <= time.monotonic() - start < 1.0


def test_a_sleeping_consumer_is_woken_by_a_put(seg: Segment) -> None:
    producer, consumer = pair(seg, spin=SpinPolicy(0))
    got: list[bytes] = []
    thread = threading.Thread(target=lambda: got.append(consumer.get(timeout=10)))
    thread.start()
    deadline = time.monotonic() + 5
    while consumer.waits[1] == 0 and time.monotonic() < deadline:  # until it is asleep
        time.sleep(0.001)
    producer.put(b"wake", timeout=1)
    thread.join(timeout=10)
    assert got == [b"wake"]
    assert consumer.waits[0] == 0  # a SpinPolicy(0) never spins


# The producer attaches the ring, writes a record's header and half its
# payload without publishing the head, says so, and is killed.
DYING_PRODUCER = """
import struct, sys, time
from rlmesh.shm import Segment
seg = Segment.attach(sys.argv[1])
struct.pack_into("<II", seg.buf, {data}, 100, 0)
seg.buf[{data} + 8 : {data} + 58] = b"z" * 50
print("written", flush=True)
time.sleep(60)
"""


def test_a_peer_dying_mid_message_leaves_nothing_to_read(seg: Segment) -> None:
    _, consumer = pair(seg, spin=SpinPolicy(enabled=True))
    code = DYING_PRODUCER.format(data=DATA).replace("sys.argv[1]", repr(seg.name))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "written"
        proc.kill()
        proc.wait(timeout=10)

        def check() -> None:
            if proc.poll() is not None:
                raise BrokenError("the producer died")

        start = time.monotonic()
        with pytest.raises(BrokenError, match="the producer died"):
            consumer.get(timeout=10, check=check)
        assert time.monotonic() - start < 2  # found by the liveness check, not the deadline
        assert consumer.pending() == 0  # the half-written record was never published
        with pytest.raises(WouldBlock):
            consumer.get_nowait()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_spinning_off_goes_straight_to_the_futex(seg: Segment, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_spin.ENV_VAR, "0")
    policy = SpinPolicy()  # reads RLMESH_SPIN
    assert policy.maximum == 0 and policy.current(time.monotonic()) == 0
    _, consumer = pair(seg, spin=policy)
    with pytest.raises(OperationTimeout):
        consumer.get(timeout=0.05)
    spun, slept = consumer.waits
    assert spun == 0 and slept >= 1 and policy.spins == 0


def test_a_quiet_machine_spins_and_a_busy_one_does_not(seg: Segment, monkeypatch: pytest.MonkeyPatch) -> None:
    # The load probe is replaced: what is tested is the decision, not this machine's load.
    busy = [False]
    monkeypatch.setattr(_spin._CONTENTION, "check", lambda now: busy[0])
    policy = SpinPolicy(enabled=True)
    producer, consumer = pair(seg, spin=policy)
    producer.put(b"ready", timeout=0)
    assert consumer.get(timeout=1) == b"ready"  # ready at once: no wait at all
    with pytest.raises(OperationTimeout):
        consumer.get(timeout=0.01)
    assert policy.spins == 1 and policy.gated == 0
    busy[0] = True
    with pytest.raises(OperationTimeout):
        consumer.get(timeout=0.01)
    assert policy.spins == 1 and policy.gated == 1


def test_the_load_probe_reads_proc_loadavg() -> None:
    probe = _spin._Contention()
    runnable = probe._runnable()
    assert runnable is not None and runnable >= 1  # this very process is running
    probe._next = 0.0
    assert probe.check(time.monotonic()) in (True, False)
    assert _spin.spin_enabled(False) is False and _spin.spin_enabled(True) is True


def test_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in [("0", False), ("off", False), ("False", False), ("1", True), ("", True)]:
        monkeypatch.setenv(_spin.ENV_VAR, value)
        assert _spin.spin_enabled() is expected
        assert _spin.spin_enabled(True) is True  # an explicit choice wins
    monkeypatch.delenv(_spin.ENV_VAR)
    assert _spin.spin_enabled() is True


def test_the_native_ring_checks_its_arguments_and_its_memory() -> None:
    memory = bytearray(64 + CONTROL_SIZE + 256)
    view = memoryview(memory)
    with pytest.raises(ValueError, match="power of two"):
        _native.Ring(view, 64, 100, BrokenError)
    with pytest.raises(ValueError, match="cache line"):
        _native.Ring(view, 8, 256, BrokenError)
    with pytest.raises(ValueError, match="does not fit"):
        _native.Ring(view, 128, 256, BrokenError)
    with pytest.raises(TypeError, match="exception class"):
        _native.Ring(view, 64, 256, int)
    with pytest.raises(BufferError):
        _native.Ring(memoryview(bytes(len(memory))), 64, 256, BrokenError)  # read-only memory
    ring = _native.Ring(view, 64, 256, BrokenError)
    with pytest.raises(ValueError, match="exceeds"):
        ring.put(bytes(121), 0)
    with pytest.raises(ValueError):
        ring.wait_data(-1.0, 0.0)
    view.release()  # the memory is gone (a closed segment): every call refuses, none touches it
    for call in (lambda: ring.put(b"x", 0), ring.peek, ring.pop, ring.get, ring.pending):
        with pytest.raises(ValueError):
            call()
    with pytest.raises(ValueError):
        ring.wait_data(0.0, 0.01)


def test_native_futex_calls(seg: Segment) -> None:
    address = seg.address + BASE + 128
    assert _native.futex_wait(address, 1, 0.01) is True  # the word is 0: returns at once
    start = time.monotonic()
    assert _native.futex_wait(address, 0, 0.03) is False  # timed out
    assert time.monotonic() - start >= 0.02
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError):
            _native.futex_wait(address, 0, bad)
    _native.futex_wake(address)
    _native.futex_wake(address, 5)
    _native.sched_yield()
