"""Who spins on the vector fast path (spin_plan); the contention gate's allowance for a party's own tasks."""

from __future__ import annotations

import pytest

from rlmesh import _spin
from rlmesh.shm import SpinPolicy
from rlmesh.vector._layout import spin_plan


@pytest.mark.parametrize(
    ("workers", "cores", "plan"),
    [
        (1, 2, (True, 0)),  # a core each for the client and the worker
        (2, 2, (True, 1)),  # a core per worker: all spin, one task beyond the cores is the party's
        (3, 2, (False, 0)),  # spinners would outnumber the cores
        (1, 1, (False, 0)),  # one core: never
        (2, 4, (True, 0)),
        (4, 4, (True, 1)),
        (5, 4, (False, 0)),
    ],
)
def test_spin_plan(workers: int, cores: int, plan: tuple[bool, int]) -> None:
    assert spin_plan(workers, cores) == plan


def probe(runnable: list[int], cores: int) -> _spin._Contention:
    gate = _spin._Contention()
    gate.cores = cores
    gate._readable = True
    gate._runnable = lambda: runnable[0]  # type: ignore[method-assign]
    return gate


CLOCK = [1000.0]


def sample(gate: _spin._Contention, extra: int, times: int = 8) -> bool:
    busy = False
    for _ in range(times):
        CLOCK[0] += 1.0  # each call a new sample (they are taken 20 ms apart at most)
        busy = gate.check_allowing(CLOCK[0], extra)
    return busy


def test_the_allowance_tolerates_the_partys_own_tasks_only() -> None:
    runnable = [3]
    gate = probe(runnable, cores=2)
    assert sample(gate, 1) is False  # client and 2 workers, all runnable: the party itself
    CLOCK[0] += 1.0
    assert gate.check(CLOCK[0]) is True  # without the allowance: oversubscribed
    runnable[0] = 4  # a third party
    assert sample(gate, 1) is True
    runnable[0] = 2
    assert sample(gate, 1) is False and sample(gate, 0) is False
    assert gate.busy is False


def test_a_policy_with_an_allowance_asks_the_gate_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []

    def check_allowing(now: float, extra: int) -> bool:
        asked.append(extra)
        return extra < 1

    monkeypatch.setattr(_spin._CONTENTION, "check_allowing", check_allowing)
    monkeypatch.setattr(_spin._CONTENTION, "check", lambda now: True)
    tolerant = SpinPolicy(enabled=True, allowance=1)
    assert tolerant.current(0.0) > 0 and asked == [1]
    plain = SpinPolicy(enabled=True)
    assert plain.current(0.0) == 0 and plain.gated == 1
    with pytest.raises(ValueError):
        SpinPolicy(allowance=-1)
