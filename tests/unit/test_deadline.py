"""The one timeout meaning inside rlmesh, and the Deadline helper (rlmesh._deadline)."""

from __future__ import annotations

import math

import pytest

from rlmesh import _deadline
from rlmesh._deadline import NEVER, POLL_FOREVER, Deadline, check_timeout


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(_deadline, "time", fake)
    return fake


def test_none_never_expires(clock: FakeClock) -> None:
    deadline = Deadline.after(None)
    assert deadline is NEVER and deadline.forever
    clock.now += 1e12
    assert not deadline.expired()
    assert deadline.remaining() is None
    assert deadline.poll_ms() == POLL_FOREVER == -1
    assert deadline.bounded(0.05) == 0.05
    assert repr(deadline) == "Deadline(never)"


def test_infinity_is_none() -> None:
    assert Deadline.after(math.inf) is NEVER
    assert check_timeout(math.inf) is None


def test_zero_has_already_expired(clock: FakeClock) -> None:
    deadline = Deadline.after(0)
    assert not deadline.forever
    assert deadline.expired()  # without the clock moving at all
    assert deadline.remaining() == 0.0
    assert deadline.poll_ms() == 0  # poll(2) once, never sleep
    assert deadline.bounded(0.05) == 0.0
    assert deadline.timeout == 0.0


def test_a_positive_timeout_is_a_deadline(clock: FakeClock) -> None:
    deadline = Deadline.after(2)
    assert deadline.timeout == 2.0 and isinstance(deadline.timeout, float)
    assert deadline.remaining() == 2.0 and not deadline.expired()
    assert deadline.bounded(0.05) == 0.05
    clock.now += 1.5
    assert deadline.remaining() == 0.5 and deadline.poll_ms() == 500
    assert deadline.bounded(1.0) == 0.5
    clock.now += 0.5
    assert deadline.expired() and deadline.remaining() == 0.0 and deadline.poll_ms() == 0
    clock.now += 10
    assert deadline.remaining() == 0.0  # never negative


@pytest.mark.parametrize("left", [1e-9, 1e-7, 0.0004, 0.0010001])
def test_poll_ms_never_rounds_a_positive_remainder_down(clock: FakeClock, left: float) -> None:
    deadline = Deadline(clock.now + left, left)
    assert not deadline.expired()
    assert deadline.poll_ms() == math.ceil(left * 1000) >= 1


def test_poll_ms_fits_a_c_int(clock: FakeClock) -> None:
    deadline = Deadline.after(1e9)  # about 31 years
    assert deadline.poll_ms() == 2**31 - 1  # the caller polls again until expired()
    assert not deadline.expired()


@pytest.mark.parametrize("bad", [-1, -1e-12, -math.inf, math.nan])
def test_negative_and_nan_are_value_errors(bad: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        check_timeout(bad)
    with pytest.raises(ValueError):
        Deadline.after(bad)


@pytest.mark.parametrize("bad", [True, "1", b"1", [1]])
def test_non_numbers_are_type_errors(bad: object) -> None:
    with pytest.raises(TypeError, match="request_timeout"):
        check_timeout(bad, "request_timeout")  # type: ignore[arg-type]


def test_check_timeout_returns_floats() -> None:
    assert check_timeout(None) is None
    assert check_timeout(0) == 0.0 and isinstance(check_timeout(0), float)
    assert check_timeout(3) == 3.0 and isinstance(check_timeout(3), float)
    assert check_timeout(0.25) == 0.25


def test_of_keeps_a_running_deadline_and_makes_one_from_seconds(clock: FakeClock) -> None:
    running = Deadline.after(5)
    assert Deadline.of(running) is running
    assert Deadline.of(None) is NEVER
    made = Deadline.of(2.5)
    assert made.timeout == 2.5 and made.remaining() == 2.5
    with pytest.raises(ValueError):
        Deadline.of(-1)


def test_repr_shows_what_is_left(clock: FakeClock) -> None:
    assert repr(Deadline.after(1.5)) == "Deadline(timeout=1.5, remaining=1.500000)"
