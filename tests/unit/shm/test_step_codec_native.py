"""The native fixed-shape step codec (rlmesh/_native_step.c): compact STEP and OK records
written and read in a shared-memory ring, round trips at the counters' wrap, and a hostile
peer's forged, short, oversized or flagged records (a BrokenError, never a crash)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np
import pytest

from rlmesh import _native
from rlmesh.errors import BrokenError
from rlmesh.shm import MessageRing, Segment
from rlmesh.shm.ring import CONTROL_SIZE
from rlmesh.wire.channel import RingChannel

U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
BASE = 64
HEAD, TAIL, DATA = BASE, BASE + 64, BASE + CONTROL_SIZE
TAG = _native.STEP_RECORD_TAG


@pytest.fixture
def seg() -> Iterator[Segment]:
    segment = Segment.create(BASE + MessageRing.footprint(256))
    try:
        yield segment
    finally:
        segment.close()


def pair(seg: Segment) -> tuple[MessageRing, MessageRing]:
    return MessageRing(seg.buf, seg.address, BASE, 256), MessageRing(seg.buf, seg.address, BASE, 256)


def test_the_compact_tag_sits_next_to_spill_and_is_no_msgpack_tail_tag() -> None:
    assert TAG == 0xFFFFFFFE == RingChannel.STEP_TAG
    assert RingChannel.SPILL_TAG == TAG + 1


def test_a_discrete_step_and_its_ok_round_trip(seg: Segment) -> None:
    producer, consumer = pair(seg)
    assert _native.step_recv(consumer._core, 8, True) is None  # empty
    assert _native.step_send(producer._core, 7, -3, 8) == 0
    assert consumer._core.readable()
    assert _native.step_recv(consumer._core, 8, True) == (7, -3)
    assert consumer.pending() == 0
    assert _native.ok_send(producer._core, 2**64 - 1, 1.5, True, False, 2**63 - 1, 8) == 0
    assert _native.ok_recv(consumer._core, 8, True) == (2**64 - 1, 1.5, True, False, 2**63 - 1)
    assert _native.ok_send(producer._core, 9, float("-inf"), 0, 1, 0, 8) == 0
    assert _native.ok_recv(consumer._core, 8, True) == (9, float("-inf"), False, True, 0)


def test_a_tensor_step_and_its_ok_round_trip_as_fresh_writable_bytes(seg: Segment) -> None:
    producer, consumer = pair(seg)
    action = np.array([0.25, -1.0, 3.0], np.float32)
    assert _native.step_send(producer._core, 1, action, 12) == 0
    rid, data = _native.step_recv(consumer._core, 12, False)  # type: ignore[misc]
    assert rid == 1 and type(data) is bytearray and bytes(data) == action.tobytes()
    obs = np.arange(5, dtype=np.uint8)
    assert _native.ok_send(producer._core, 2, 0.0, False, False, memoryview(obs), 5) == 0
    rid, reward, terminated, truncated, got = _native.ok_recv(consumer._core, 5, False)  # type: ignore[misc]
    array = np.frombuffer(got, np.uint8)
    assert (rid, reward, terminated, truncated) == (2, 0.0, False, False)
    assert array.tolist() == [0, 1, 2, 3, 4] and array.flags.writeable  # no copy needed to own it
    array[0] = 9  # it is ours: the ring is not touched
    assert got[0] == 9
    # A zero-byte observation (an empty Box) is a record of the head alone.
    assert _native.ok_send(producer._core, 3, 1.0, False, False, b"", 0) == 0
    assert _native.ok_recv(consumer._core, 0, False) == (3, 1.0, False, False, bytearray())


@pytest.mark.parametrize("start", [2**64 - 8, 2**64 - 40, 2**63])
def test_compact_records_wrap_with_the_counters_and_the_ring(seg: Segment, start: int) -> None:
    U64.pack_into(seg.buf, HEAD, start)
    U64.pack_into(seg.buf, TAIL, start)
    producer, consumer = pair(seg)
    for i in range(100):  # many times round a 256-byte ring, records of 40 and 56 bytes
        obs = bytes([i % 256]) * 24
        assert _native.ok_send(producer._core, i, float(i), i % 2 == 0, i % 3 == 0, obs, 24) == 0
        assert _native.step_send(producer._core, i, i, 8) == 0
        assert _native.ok_recv(consumer._core, 24, False) == (
            i,
            float(i),
            i % 2 == 0,
            i % 3 == 0,
            bytearray(obs),
        )
        assert _native.step_recv(consumer._core, 8, True) == (i, i)
    assert consumer.pending() == 0


def test_a_message_of_another_kind_is_left_for_the_msgpack_path(seg: Segment) -> None:
    producer, consumer = pair(seg)
    producer.put(b"\x93\x0b\x01\x00", tag=0)
    assert _native.step_recv(consumer._core, 8, True) is False
    assert _native.ok_recv(consumer._core, 8, True) is False
    assert consumer.get() == b"\x93\x0b\x01\x00"  # still there, whole


def test_sizes_that_do_not_fit_the_contract_or_the_ring_are_refused_before_writing(seg: Segment) -> None:
    producer, consumer = pair(seg)
    with pytest.raises(ValueError, match="the contract's is 12 bytes"):
        _native.step_send(producer._core, 1, b"\0" * 8, 12)
    with pytest.raises(ValueError, match="8-byte record"):
        _native.step_send(producer._core, 1, 5, 4)
    with pytest.raises(OverflowError):
        _native.step_send(producer._core, 1, 2**63, 8)
    with pytest.raises(ValueError, match="exceeds this ring's limit"):
        _native.ok_send(producer._core, 1, 0.0, False, False, b"\0" * 200, 200)
    for huge in (2**64 - 8, 2**64 - 24, 2**64 - 1):  # sizes that would wrap past the limit when added
        with pytest.raises(ValueError, match="exceeds this ring's limit"):
            _native.step_send(producer._core, 1, b"\0" * 8, huge)
        with pytest.raises(ValueError, match="exceeds this ring's limit"):
            _native.ok_send(producer._core, 1, 0.0, False, False, b"\0" * 8, huge)
    with pytest.raises(TypeError):
        _native.ok_send(producer._core, 1, "1.0", False, False, 1, 8)
    with pytest.raises(TypeError, match="rlmesh._native.Ring"):
        _native.step_send(object(), 1, 1, 8)
    with pytest.raises(ValueError, match="Discrete"):
        _native.step_recv(consumer._core, 4, True)
    assert consumer.pending() == 0  # nothing was written


def test_a_full_ring_asks_for_room_and_writes_nothing(seg: Segment) -> None:
    producer, consumer = pair(seg)
    sent = 0
    while _native.step_send(producer._core, sent, b"\1" * 40, 40) == 0:
        sent += 1
    need = _native.step_send(producer._core, sent, b"\1" * 40, 40)
    assert need >= 56 and sent >= 2
    pending = consumer.pending()
    assert _native.step_recv(consumer._core, 40, False) == (0, bytearray(b"\1" * 40))
    assert consumer.pending() < pending


def forge(seg: Segment, payload: bytes, tag: int = TAG) -> None:
    """Write one record as a hostile producer would: header, payload, head counter."""
    buf = seg.buf
    U32.pack_into(buf, DATA, len(payload))
    U32.pack_into(buf, DATA + 4, tag)
    buf[DATA + 8 : DATA + 8 + len(payload)] = payload
    U64.pack_into(buf, HEAD, 8 + ((len(payload) + 7) & ~7))


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # no request id at all
        U64.pack(1) + b"\0" * 4,  # short action
        U64.pack(1) + b"\0" * 16,  # oversized action
    ],
)
def test_a_forged_step_of_the_wrong_size_is_a_broken_ring_not_a_read_past_it(
    seg: Segment, payload: bytes
) -> None:
    forge(seg, payload)
    consumer = MessageRing(seg.buf, seg.address, BASE, 256)
    for _ in range(2):  # not consumed: the session ends on it, and it says the same again
        with pytest.raises(BrokenError, match="compact step record of"):
            _native.step_recv(consumer._core, 8, True)


@pytest.mark.parametrize(
    ("flags", "size"),
    [(4, 8), (0x80, 8), (0, 4), (0, 100)],
)
def test_a_forged_ok_with_unknown_flags_or_the_wrong_size_is_a_broken_ring(
    seg: Segment, flags: int, size: int
) -> None:
    payload = U64.pack(1) + struct.pack("<d", 1.0) + bytes([flags]) + b"\0" * 7 + b"\0" * size
    forge(seg, payload)
    consumer = MessageRing(seg.buf, seg.address, BASE, 256)
    with pytest.raises(BrokenError, match="corrupt ring: a (compact OK )?record"):
        _native.ok_recv(consumer._core, 8, True)


def test_non_zero_padding_in_an_ok_is_a_broken_ring(seg: Segment) -> None:
    payload = U64.pack(1) + struct.pack("<d", 1.0) + b"\1\0\0\1\0\0\0\0" + U64.pack(5)
    forge(seg, payload)
    consumer = MessageRing(seg.buf, seg.address, BASE, 256)
    with pytest.raises(BrokenError, match="flags 0x01"):
        _native.ok_recv(consumer._core, 8, True)


def test_a_record_claiming_more_than_the_ring_holds_is_refused_before_the_tag_is_read(seg: Segment) -> None:
    U32.pack_into(seg.buf, DATA, 10_000)
    U32.pack_into(seg.buf, DATA + 4, TAG)
    U64.pack_into(seg.buf, HEAD, 64)
    consumer = MessageRing(seg.buf, seg.address, BASE, 256)
    with pytest.raises(BrokenError, match="claims 10000 bytes"):
        _native.step_recv(consumer._core, 8, True)


def test_a_released_segment_is_a_value_error_not_a_crash() -> None:
    segment = Segment.create(BASE + MessageRing.footprint(256))
    ring = MessageRing(segment.buf, segment.address, BASE, 256)
    core = ring._core
    del ring
    segment.close_when_unpinned()
    with pytest.raises((ValueError, BufferError)):
        _native.step_send(core, 1, 1, 8)
    del core
