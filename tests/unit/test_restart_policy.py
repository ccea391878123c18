"""RestartPolicy's checks and RestartBudget's sliding window (a fake clock: no sleeping)."""

from __future__ import annotations

import dataclasses
import math

import pytest

import rlmesh
from rlmesh._restart import RestartBudget, RestartPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_policy_is_exported_frozen_and_keyword_only() -> None:
    assert rlmesh.RestartPolicy is RestartPolicy
    policy = RestartPolicy()
    assert (policy.max_restarts, policy.window_seconds) == (3, 60.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_restarts = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        RestartPolicy(3, 60.0)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_restarts": -1}, ValueError),
        ({"max_restarts": 1.5}, TypeError),
        ({"max_restarts": True}, TypeError),
        ({"window_seconds": 0}, ValueError),
        ({"window_seconds": -1.0}, ValueError),
        ({"window_seconds": math.inf}, ValueError),
        ({"window_seconds": math.nan}, ValueError),
        ({"window_seconds": "60"}, TypeError),
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        RestartPolicy(**kwargs)  # type: ignore[arg-type]


def test_a_budget_allows_max_restarts_within_the_window_then_refuses() -> None:
    clock = Clock()
    budget = RestartPolicy(max_restarts=2, window_seconds=10.0).budget(clock)
    assert isinstance(budget, RestartBudget)
    assert budget.allow() and budget.allow()
    assert not budget.allow()  # a third death within 10 s: a crash loop
    assert budget.count == 2 and budget.recent() == 2
    clock.now += 9.9
    assert not budget.allow()
    clock.now += 0.1
    assert budget.recent() == 0  # both restarts (at the same instant) left the window
    assert budget.allow()
    assert budget.count == 3


def test_the_window_slides_one_restart_at_a_time() -> None:
    clock = Clock()
    budget = RestartPolicy(max_restarts=2, window_seconds=10.0).budget(clock)
    assert budget.allow()
    clock.now += 6.0
    assert budget.allow()
    clock.now += 5.0  # the first left the window, the second has not
    assert budget.recent() == 1
    assert budget.allow()
    assert not budget.allow()


def test_zero_restarts_never_restarts() -> None:
    budget = RestartPolicy(max_restarts=0).budget(Clock())
    assert not budget.allow() and budget.count == 0
