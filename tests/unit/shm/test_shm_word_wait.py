"""The native word waits and rings of the vector fast path (wait_words, bell_ring, Doorbell.wait_words).

Threads stand in for the peer (the C calls release the GIL); the cross-process
versions are in tests/integration/test_vector_wakeups.py.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator

import pytest

from rlmesh import _native
from rlmesh.errors import OperationTimeout
from rlmesh.shm import Doorbell, Segment, SpinPolicy
from rlmesh.shm.doorbell import CHECK_INTERVAL, WORD_EQ, WORD_NE, word_terms

U32 = struct.Struct("<I")
BELL = 128


@pytest.fixture
def seg() -> Iterator[Segment]:
    segment = Segment.create(4096)
    try:
        yield segment
    finally:
        segment.close()


def test_a_group_holds_when_any_term_does_and_the_condition_when_every_group_does(seg: Segment) -> None:
    buf = seg.buf
    U32.pack_into(buf, 256, 5)
    U32.pack_into(buf, 260, 0)
    U32.pack_into(buf, 264, 7)
    done = word_terms([[(256, WORD_EQ, 5), (260, WORD_EQ, 2)], [(264, WORD_NE, 6)]])
    assert _native.wait_words(buf, done, BELL, 0.0, 0.0) == 2  # one look, true
    assert _native.wait_words(buf, done, BELL, 0.001, 0.0) == 1  # caught by the spin
    waiting = word_terms([[(256, WORD_EQ, 6), (260, WORD_EQ, 2)], [(264, WORD_NE, 6)]])
    assert _native.wait_words(buf, waiting, BELL, 0.0, 0.0) == 0
    U32.pack_into(buf, 260, 2)  # the group's other term now holds
    assert _native.wait_words(buf, waiting, BELL, 0.0, 0.0) == 2
    U32.pack_into(buf, 264, 6)  # the second group fails: the whole condition does
    assert _native.wait_words(buf, waiting, BELL, 0.0, 0.0) == 0
    start = time.monotonic()
    assert _native.wait_words(buf, waiting, BELL, 0.002, 0.02) == 0  # spins, sleeps, times out
    assert time.monotonic() - start >= 0.015
    assert U32.unpack_from(buf, BELL + 4)[0] == 0  # the waiting flag is cleared again
    assert _native.wait_words(buf, b"", BELL, 0.0, 0.0) == 2  # no term: holds


@pytest.mark.parametrize(
    ("terms", "bell"),
    [
        (struct.pack("<4I", 4096, WORD_EQ, 0, 0), BELL),  # past the end
        (struct.pack("<4I", 4094, WORD_EQ, 0, 0), BELL),  # straddles the end
        (struct.pack("<4I", 258, WORD_EQ, 0, 0), BELL),  # misaligned
        (struct.pack("<4I", 256, 2, 0, 0), BELL),  # no such operator
        (struct.pack("<4I", 256, WORD_EQ, 0, 0) + b"\0", BELL),  # not whole terms
        (struct.pack("<4I", 256, WORD_EQ, 0, 0) * 257, BELL),  # too many
        (b"", 4090),  # the doorbell outside
        (b"", 130),  # the doorbell misaligned
        (b"", -4),
    ],
)
def test_terms_and_doorbells_outside_the_memory_are_refused(seg: Segment, terms: bytes, bell: int) -> None:
    with pytest.raises(ValueError):
        _native.wait_words(seg.buf, terms, bell, 0.0, 0.0)


def test_bad_spins_and_released_memory_are_refused(seg: Segment) -> None:
    with pytest.raises(ValueError):
        _native.wait_words(seg.buf, b"", BELL, -1.0, 0.0)
    with pytest.raises(ValueError):
        _native.wait_words(seg.buf, b"", BELL, 0.0, float("nan"))
    with pytest.raises(ValueError):
        word_terms([[(256, WORD_EQ, 0)]] * 257)
    view = memoryview(bytearray(64))
    view.release()
    with pytest.raises(ValueError):
        _native.wait_words(view, b"", 0, 0.0, 0.0)
    with pytest.raises(ValueError):
        _native.bell_ring(view, 0)
    with pytest.raises(ValueError):
        _native.bell_ring(seg.buf, 4092)


def test_bell_ring_counts_and_wraps(seg: Segment) -> None:
    bell = Doorbell(seg.buf, BELL, seg.address)
    _native.bell_ring(seg.buf, BELL)
    bell.ring()
    assert bell.seq == 2
    U32.pack_into(seg.buf, BELL, 0xFFFFFFFF)
    bell.ring()
    assert bell.seq == 0


def test_doorbell_wait_words_times_out_and_a_zero_timeout_looks_once(seg: Segment) -> None:
    bell = Doorbell(seg.buf, BELL, seg.address)
    never = word_terms([[(256, WORD_EQ, 1)]])
    start = time.monotonic()
    with pytest.raises(OperationTimeout):
        bell.wait_words(never, 0)
    assert time.monotonic() - start < 0.01
    start = time.monotonic()
    with pytest.raises(OperationTimeout):
        bell.wait_words(never, 0.1, spin=SpinPolicy(enabled=True))
    assert 0.05 <= time.monotonic() - start <= 0.5
    U32.pack_into(seg.buf, 256, 1)
    bell.wait_words(never, 0)  # holds now: returns at once
    with pytest.raises(ValueError):
        bell.wait_words(never, -1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("spin", [None, "default"])
def test_doorbell_wait_words_is_woken_by_a_ring(seg: Segment, spin: str | None) -> None:
    # The waiter's sleeps never end by themselves (max_sleep of a minute): a lost
    # wake-up fails the 10-second timeout instead of passing after 50 ms.
    bell = Doorbell(seg.buf, BELL, seg.address)
    rounds = 300
    errors: list[BaseException] = []
    policy = SpinPolicy(enabled=True) if spin else None

    def waiter() -> None:
        try:
            for i in range(1, rounds + 1):
                bell.wait_words(word_terms([[(256, WORD_EQ, i)]]), 10, spin=policy, max_sleep=60)
                U32.pack_into(seg.buf, 320, i)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        for i in range(1, rounds + 1):
            if i % 50 == 0:  # now and then, let the waiter fall asleep first
                deadline = time.monotonic() + 5
                while U32.unpack_from(seg.buf, BELL + 4)[0] == 0 and time.monotonic() < deadline:
                    time.sleep(0.0005)
            U32.pack_into(seg.buf, 256, i)
            bell.ring()
            deadline = time.monotonic() + 10
            while U32.unpack_from(seg.buf, 320)[0] != i and time.monotonic() < deadline and not errors:
                time.sleep(0)
    finally:
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert errors == []
    assert U32.unpack_from(seg.buf, 320)[0] == rounds


def test_doorbell_wait_words_runs_its_check_while_blocked(seg: Segment) -> None:
    bell = Doorbell(seg.buf, BELL, seg.address)
    calls: list[float] = []

    class PeerDied(Exception):
        pass

    def check() -> None:
        calls.append(time.monotonic())
        if len(calls) == 3:
            raise PeerDied

    start = time.monotonic()
    with pytest.raises(PeerDied):
        bell.wait_words(word_terms([[(256, WORD_EQ, 1)]]), None, check=check)
    assert len(calls) == 3
    assert 1.5 * CHECK_INTERVAL <= time.monotonic() - start <= 3 * CHECK_INTERVAL * 1.5 + 0.2
    assert U32.unpack_from(seg.buf, BELL + 4)[0] == 0
