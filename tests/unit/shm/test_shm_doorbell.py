"""Doorbells and spin policies, within one process (threads stand in for the peer)."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator

import pytest

from rlmesh import _native
from rlmesh._deadline import Deadline
from rlmesh.errors import OperationTimeout
from rlmesh.shm import Doorbell, Segment, SpinPolicy, doorbell as doorbell_module
from rlmesh.shm.doorbell import CHECK_INTERVAL, fence, futex_wait, futex_wake

U32 = struct.Struct("<I")


@pytest.fixture
def bell() -> Iterator[Doorbell]:
    seg = Segment.create(4096)
    try:
        yield Doorbell(seg.buf, 128, seg.address)
    finally:
        seg.close()


def make_spin(kind: str) -> SpinPolicy | None:
    return {"none": None, "default": SpinPolicy(), "zero": SpinPolicy(0)}[kind]


SPINS = ["none", "default", "zero"]


def within(elapsed: float, timeout: float) -> bool:
    return timeout * 0.5 <= elapsed <= timeout * 1.5 + 0.2


def test_doorbell_must_be_aligned() -> None:
    seg = Segment.create(4096)
    try:
        with pytest.raises(ValueError):
            Doorbell(seg.buf, 130, seg.address)
    finally:
        seg.close()


def test_ring_bumps_the_sequence_and_wraps(bell: Doorbell) -> None:
    assert bell.seq == 0
    bell.ring()
    bell.ring()
    assert bell.seq == 2
    U32.pack_into(bell._buf, 128, 0xFFFFFFFF)
    bell.ring()
    assert bell.seq == 0


def test_wait_returns_at_once_when_ready(bell: Doorbell) -> None:
    start = time.monotonic()
    bell.wait(lambda: True, timeout=0)
    bell.wait(lambda: True, timeout=None)
    assert time.monotonic() - start < 0.1


@pytest.mark.parametrize("timeout", [0.05, 0.25])
@pytest.mark.parametrize("spin_kind", SPINS)
def test_wait_times_out(bell: Doorbell, timeout: float, spin_kind: str) -> None:
    spin = make_spin(spin_kind)
    start = time.monotonic()
    with pytest.raises(OperationTimeout) as info:
        bell.wait(lambda: False, timeout, spin=spin)
    assert within(time.monotonic() - start, timeout)
    assert info.value.timeout == timeout
    assert isinstance(info.value, TimeoutError)
    assert U32.unpack_from(bell._buf, 132)[0] == 0  # the waiting flag is cleared


def test_zero_timeout_looks_once_and_never_sleeps(bell: Doorbell, monkeypatch: pytest.MonkeyPatch) -> None:
    looks: list[int] = []

    def never_sleep(*args: object) -> bool:
        raise AssertionError("a timeout of 0 went to sleep")

    monkeypatch.setattr(doorbell_module, "futex_wait", never_sleep)
    spin = SpinPolicy()
    budget = spin.budget
    with pytest.raises(OperationTimeout) as info:
        bell.wait(lambda: bool(looks.append(1)), 0, spin=spin)
    assert looks == [1]  # one look: no spin either
    assert spin.budget == budget  # and nothing for the spin policy to learn
    assert info.value.timeout == 0
    assert U32.unpack_from(bell._buf, 132)[0] == 0  # never flagged itself as a sleeper


def test_an_expired_shared_deadline_fails_at_once(bell: Doorbell) -> None:
    deadline = Deadline.after(0.01)
    time.sleep(0.02)
    start = time.monotonic()
    with pytest.raises(OperationTimeout) as info:
        bell.wait(lambda: False, deadline, spin=SpinPolicy())
    assert time.monotonic() - start < 0.05
    assert info.value.timeout == 0.01  # the error names the call's timeout
    bell.wait(lambda: True, deadline)  # a ready condition never times out


@pytest.mark.parametrize("spin_kind", SPINS)
def test_a_running_deadline_is_kept(bell: Doorbell, spin_kind: str) -> None:
    deadline = Deadline.after(0.2)
    time.sleep(0.1)  # half of it spent elsewhere (a send before this receive, say)
    start = time.monotonic()
    with pytest.raises(OperationTimeout) as info:
        bell.wait(lambda: False, deadline, spin=make_spin(spin_kind))
    assert time.monotonic() - start < 0.2  # what was left, not the whole timeout again
    assert info.value.timeout == 0.2


def test_an_infinite_timeout_waits_like_none(bell: Doorbell) -> None:
    flag = threading.Event()
    timer = threading.Timer(0.05, lambda: (flag.set(), bell.ring()))
    timer.start()
    try:
        bell.wait(flag.is_set, float("inf"), spin=SpinPolicy())
    finally:
        timer.join(timeout=10)


@pytest.mark.parametrize("bad", [-1, -1e-9, float("nan")])
def test_negative_or_nan_timeouts_are_refused(bell: Doorbell, bad: float) -> None:
    with pytest.raises(ValueError):
        bell.wait(lambda: True, bad)
    with pytest.raises(ValueError):
        futex_wait(bell._address, 0, bad)


def test_fence_is_the_native_seq_cst_barrier() -> None:
    # Not a ctypes call whose ordering comes from the GIL's mutex as a side effect.
    assert fence is _native.memory_barrier
    assert fence() is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("spin_kind", ["none", "default"])
def test_ping_pong_never_loses_a_wake_up(spin_kind: str) -> None:
    # Two doorbells, one per direction, and sleeps that never end by themselves
    # (max_sleep of a minute): a lost wake-up is a wait that runs into its
    # 10-second timeout, not a 50 ms hiccup. Threads stand in for processes
    # (futex_wait releases the GIL); the cross-process version is in
    # tests/integration/test_shm_processes.py.
    rounds = 2000
    seg = Segment.create(4096)
    try:
        ping = Doorbell(seg.buf, 128, seg.address)
        pong = Doorbell(seg.buf, 192, seg.address)
        counters = seg.buf
        errors: list[BaseException] = []

        def peer() -> None:
            try:
                for i in range(1, rounds + 1):
                    ping.wait(lambda i=i: U32.unpack_from(counters, 256)[0] == i, 10, max_sleep=60)
                    U32.pack_into(counters, 320, i)
                    pong.ring()
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        spin = make_spin(spin_kind)
        thread = threading.Thread(target=peer)
        thread.start()
        try:
            for i in range(1, rounds + 1):
                U32.pack_into(counters, 256, i)
                ping.ring()
                pong.wait(lambda i=i: U32.unpack_from(counters, 320)[0] == i, 10, spin=spin, max_sleep=60)
        finally:
            thread.join(timeout=30)
        assert not thread.is_alive()
        assert errors == []
    finally:
        seg.close()


@pytest.mark.parametrize("spin_kind", SPINS)
def test_ring_wakes_a_sleeping_waiter(bell: Doorbell, spin_kind: str) -> None:
    spin = make_spin(spin_kind)
    flag = threading.Event()  # the waiter's condition; set by the "peer" before it rings
    asleep = threading.Event()
    outcome: list[BaseException | float] = []

    def waiter() -> None:
        try:
            start = time.monotonic()
            asleep.set()
            bell.wait(flag.is_set, timeout=10, spin=spin)
            outcome.append(time.monotonic() - start)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    assert asleep.wait(timeout=10)
    # Let the waiter get past its spin and into FUTEX_WAIT, so the wake is exercised.
    deadline = time.monotonic() + 5
    while U32.unpack_from(bell._buf, 132)[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    flag.set()
    bell.ring()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], float), outcome
    assert outcome[0] < 5  # woken, not timed out


def test_check_runs_while_blocked_and_its_exception_propagates(bell: Doorbell) -> None:
    calls: list[float] = []

    class PeerDied(Exception):
        pass

    def check() -> None:
        calls.append(time.monotonic())
        if len(calls) == 3:
            raise PeerDied

    start = time.monotonic()
    with pytest.raises(PeerDied):
        bell.wait(lambda: False, timeout=10, check=check)
    elapsed = time.monotonic() - start
    assert len(calls) == 3
    assert within(elapsed, 3 * CHECK_INTERVAL)


def test_check_runs_without_a_timeout(bell: Doorbell) -> None:
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bell.wait(lambda: False, timeout=None, check=check)
    assert U32.unpack_from(bell._buf, 132)[0] == 0


def test_futex_primitives(bell: Doorbell) -> None:
    address = bell._address
    fence()
    assert futex_wait(address, 1, 0.01) is True  # the value differs: returns at once
    start = time.monotonic()
    assert futex_wait(address, 0, 0.05) is False  # times out
    assert time.monotonic() - start >= 0.04
    futex_wake(address)  # nobody waiting: harmless


def test_spin_policy_adapts() -> None:
    # Only what any adaptive policy must do: stay within its bounds, stop
    # spinning when the peer keeps answering late, spin again when it is quick.
    policy = SpinPolicy(maximum=400e-6, minimum=5e-6, enabled=True)
    assert policy.minimum <= policy.budget <= policy.maximum
    for _ in range(300):
        policy.record(0.05)  # the peer is busy with real work: spinning cannot pay
        assert policy.minimum <= policy.budget <= policy.maximum
    assert policy.budget == policy.minimum
    for _ in range(1000):
        policy.record(100e-6)  # it answers within the maximum again
        assert policy.minimum <= policy.budget <= policy.maximum
    assert policy.budget >= 100e-6
    assert "us" in repr(policy)


def test_spin_policy_zero_never_spins() -> None:
    policy = SpinPolicy(0)
    assert policy.budget == 0 and policy.minimum == 0
    policy.record(0)
    assert policy.budget == 0
    policy.record(1)
    assert policy.budget == 0


def test_spin_policy_rejects_negative_budgets() -> None:
    with pytest.raises(ValueError):
        SpinPolicy(-1)
    with pytest.raises(ValueError):
        SpinPolicy(1e-6, -1)
