"""The vector worker's native lane loop (``rlmesh._native.step_lanes``) and its hand-backs to Python.

A worker steps every lane of a full-group command in C and writes each
observation, reward and flag straight into the batch buffer; a lane whose
result needs Python (an info to encode, SameStep's end, an observation to
cast or gather, an exception) is handed back with what the env returned and
finished as the Python loop does it. ``QuirkyLaneEnv`` makes every kind of
hand-back happen; its trajectories must still equal
``gymnasium.vector.SyncVectorEnv``'s bit for bit, in every autoreset mode and
with 1 and 2 workers. Then the C function itself: its bounds checks, an
exception handed back with its traceback, and a Disabled lane that ended.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import rlmesh.numpy as rnp
from rlmesh._native import step_lanes
from tests.envs import QuirkyLaneEnv

pytestmark = pytest.mark.timeout(180)

N = 5
MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED]


def same(a: Any, b: Any, where: str) -> None:
    if isinstance(b, dict):
        assert isinstance(a, dict) and sorted(a) == sorted(b), (where, sorted(a), sorted(b))
        for key in b:
            same(a[key], b[key], f"{where}.{key}")
    elif isinstance(b, np.ndarray) and b.dtype == object:
        assert isinstance(a, np.ndarray) and a.dtype == object and a.shape == b.shape, where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if "final_obs" in where and y is not None:
                # A final observation comes back in its space's form (float32), whatever
                # the env returned (SyncVectorEnv keeps the env's own object).
                y = np.asarray(y, np.float32)
            same(x, y, f"{where}[{i}]")
    elif isinstance(b, (np.ndarray, np.generic)):
        a = np.asarray(a)
        assert (a.dtype, a.shape) == (b.dtype, b.shape), (where, a.dtype, a.shape, b.dtype, b.shape)
        assert a.tobytes() == np.asarray(b).tobytes(), (where, a, b)
    else:
        assert type(a) is type(b) and a == b, (where, a, b)


def env_info(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k not in ("episode_ids", "completed_episodes")}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_every_hand_back_matches_sync_vector_env(serve, mode: AutoresetMode, workers: int) -> None:
    served = serve(QuirkyLaneEnv, num_envs=N, workers=workers, autoreset_mode=mode.value)
    remote = served.client(rnp.RemoteVectorEnv)
    assert remote.fast_path
    local = gym.vector.SyncVectorEnv([QuirkyLaneEnv] * N, autoreset_mode=mode)
    rng = np.random.default_rng(5)
    try:
        got, want = remote.reset(seed=7), local.reset(seed=7)
        same(got[0], want[0], "reset obs")
        same(env_info(got[1]), want[1], "reset info")
        ended = 0
        for t in range(60):
            actions = rng.integers(0, 3, N)
            got, want = remote.step(actions), local.step(actions)
            names = ("obs", "rewards", "terminated", "truncated")
            for name, x, y in zip(names, got[:4], want[:4], strict=True):
                same(x, y, f"step {t} {name}")
            same(env_info(got[4]), want[4], f"step {t} info")
            done = want[2] | want[3]
            ended += int(done.sum())
            if mode == AutoresetMode.DISABLED and done.any():
                seeds = [int(s) for s in rng.integers(0, 1000, N)]
                got = remote.reset(seed=seeds, options={"reset_mask": done.copy()})
                want = local.reset(seed=seeds, options={"reset_mask": done.copy()})
                same(got[0], want[0], f"masked reset {t} obs")
                same(env_info(got[1]), want[1], f"masked reset {t} info")
        assert ended > 5
    finally:
        local.close()


class _Env:
    """A stand-in env for calling step_lanes directly."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.steps = 0

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self.steps += 1
        if self.fail:
            raise KeyError("this lane breaks")
        return np.full(2, float(action), np.float32), 1.5, bool(action), False, {}

    def reset(self) -> tuple[Any, dict[str, Any]]:
        return np.zeros(2, np.float32), {}


def _call(envs: list[Any], autoreset: list[bool], mode: int, buf: Any, **at: int) -> tuple[int, int, Any]:
    actions = np.array([0, 1, 0], np.int64)
    offsets = {"obs_at": 0, "rewards_at": 64, "terminated_at": 96, "truncated_at": 104, **at}
    return step_lanes(
        envs,
        autoreset,
        [None] * len(envs),
        actions,
        0,
        0,
        buf,
        offsets["obs_at"],
        8,
        "f",
        (2,),
        offsets["rewards_at"],
        offsets["terminated_at"],
        offsets["truncated_at"],
        mode,
    )


def test_step_lanes_writes_every_lane_and_hands_back_an_exception_with_its_traceback() -> None:
    buf = bytearray(128)
    envs = [_Env(), _Env(), _Env()]
    autoreset = [False, False, False]
    assert _call(envs, autoreset, 0, buf) == (3, 0, None)
    obs = np.frombuffer(bytes(buf[:24]), np.float32).reshape(3, 2)
    assert obs.tolist() == [[0, 0], [1, 1], [0, 0]]
    assert np.frombuffer(bytes(buf[64:88]), np.float64).tolist() == [1.5, 1.5, 1.5]
    assert bytes(buf[96:99]) == b"\x00\x01\x00" and bytes(buf[104:107]) == bytes(3)
    assert autoreset == [False, True, False]
    # NextStep: the ended lane is reset, not stepped.
    assert _call(envs, autoreset, 0, buf) == (3, 0, None)
    assert [e.steps for e in envs] == [2, 1, 2] and autoreset == [False, False, False]

    envs[1] = _Env(fail=True)
    j, outcome, exc = _call(envs, autoreset, 0, buf)
    assert (j, outcome) == (1, 3) and isinstance(exc, KeyError)
    assert exc.__traceback__ is not None and "this lane breaks" in str(exc)


def test_step_lanes_leaves_an_ended_disabled_lane_to_python_and_checks_bounds() -> None:
    buf = bytearray(128)
    envs = [_Env(), _Env(), _Env()]
    assert _call(envs, [False, False, True], 2, buf) == (2, 4, None)
    assert [e.steps for e in envs] == [1, 1, 0]
    with pytest.raises(ValueError, match="outside the buffer"):
        _call(envs, [False] * 3, 0, buf, truncated_at=126)
    with pytest.raises(ValueError, match="outside the buffer"):
        _call(envs, [False] * 3, 0, buf, obs_at=120)
    with pytest.raises(ValueError, match="outside the buffer"):
        _call(envs, [False] * 3, 0, buf, rewards_at=-8)
