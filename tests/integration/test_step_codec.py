"""The fixed-shape step codec end to end (rlmesh.wire.step_codec, rlmesh/_native_step.c).

Compact STEP / OK records over real shared-memory rings: the same trajectories as the
msgpack path (forced by RLMESH_STEP_CODEC=0, which also plays an older peer that does
not offer the codec), infos, invalid actions, lease releases, stale answers of
timed-out steps, a server that dies mid-step, and spinning off.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rlmesh
import rlmesh.numpy as rnp
from rlmesh._demo import start_server
from rlmesh.errors import BrokenError, InvalidActionError, OperationTimeout
from tests.conftest import ROOT, bind_address, stop_process
from tests.envs import TinyEnv

gymnasium = pytest.importorskip("gymnasium")
spaces = gymnasium.spaces

STEPS = 300


def serve_gym(env_id: str, tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """`rlmesh serve ENV_ID` in another process (a real peer), with extra environment variables."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return start_server(
        env_id, {}, bind_address("unix-shm", tmp_path), env=environ, cwd=str(ROOT), quiet=True
    )


def end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def trajectory(address: str, seed: int, actions: list[Any]) -> list[tuple[Any, ...]]:
    """Reset with ``seed``, step through ``actions`` (resetting at episode ends); every result."""
    out: list[tuple[Any, ...]] = []
    with rnp.RemoteEnv(address, request_timeout_seconds=30) as env:
        out.append(("codec", env._conn.step_layout is not None))
        obs, _ = env.reset(seed=seed)
        out.append((obs.tolist(),))
        for action in actions:
            obs, reward, terminated, truncated, info = env.step(action)
            assert type(obs) is np.ndarray and obs.flags.writeable
            assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
            assert len(info["episode_ids"]) == 1
            done = terminated or truncated
            assert info.get("completed_episodes") == (1 if done else None)
            out.append((obs.tolist(), obs.dtype.str, reward, terminated, truncated, sorted(info)))
            if done:
                out.append((env.reset()[0].tolist(),))
    return out


@pytest.mark.parametrize(
    ("env_id", "make_actions"),
    [
        ("CartPole-v1", lambda rng: [int(a) for a in rng.integers(0, 2, STEPS)]),
        ("Pendulum-v1", lambda rng: [rng.uniform(-2, 2, (1,)).astype(np.float32) for _ in range(STEPS)]),
    ],
)
def test_trajectories_are_the_same_with_and_without_the_codec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env_id: str, make_actions: Any
) -> None:
    actions = make_actions(np.random.default_rng(5))
    proc, address = serve_gym(env_id, tmp_path)
    try:
        compact = trajectory(address, 11, actions)
        monkeypatch.setenv("RLMESH_STEP_CODEC", "0")  # this client does not offer it: an older peer's HELLO
        plain = trajectory(address, 11, actions)
    finally:
        end(proc)
    assert compact[0] == ("codec", True) and plain[0] == ("codec", False)
    assert compact[1:] == plain[1:]
    assert len(compact) > STEPS


def test_a_server_that_does_not_offer_the_codec_gets_msgpack_steps(tmp_path: Path) -> None:
    proc, address = serve_gym("CartPole-v1", tmp_path, RLMESH_STEP_CODEC="0")
    try:
        steps = trajectory(address, 3, [0, 1] * 20)
    finally:
        end(proc)
    assert steps[0] == ("codec", False)


class ByteEnv:
    """uint8 Box observations and MultiBinary actions; an info on every third step."""

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"]}
    render_mode = "rgb_array"

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0, 255, (7,), np.uint8)
        self.action_space = spaces.MultiBinary(3)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        self.t = 0
        return np.full(7, seed or 0, np.uint8), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        assert type(action) is np.ndarray and action.dtype == np.int8 and action.shape == (3,)
        self.t += 1
        obs = np.arange(7, dtype=np.uint8) + self.t
        obs[:3] = action
        info = {"third": self.t} if self.t % 3 == 0 else {}
        return obs, float(action.sum()), False, self.t >= 40, info

    def render(self) -> np.ndarray:
        return np.full((80, 80, 3), self.t, np.uint8)  # 19,200 bytes: a leased slab block

    def close(self) -> None:
        pass


def counting(served: Any) -> list[int]:
    """Count the compact OKs the (in-process) server's session sends."""
    (session,) = served.server._sessions
    sent = [0]
    reply_step = session.reply_step

    def spy(*args: Any) -> bool:
        done = reply_step(*args)
        sent[0] += done
        return bool(done)

    session.reply_step = spy
    return sent


@pytest.mark.parametrize("transport", ["unix-shm", "tcp-shm"])
def test_uint8_observations_multibinary_actions_and_steps_with_an_info(serve: Any, transport: str) -> None:
    served = serve(ByteEnv, transport)
    env = served.client(rnp.RemoteEnv)
    assert env._conn.step_layout is not None
    sent = counting(served)
    env.reset(seed=4)
    for t in range(1, 13):
        action = np.array([t % 2, 1, 0], np.int8)
        obs, reward, terminated, truncated, info = env.step(action)
        assert obs.dtype == np.uint8 and obs.tolist() == [t % 2, 1, 0, 3 + t, 4 + t, 5 + t, 6 + t]
        assert reward == float(t % 2 + 1) and (terminated, truncated) == (False, False)
        if t % 3 == 0:
            assert info["third"] == t  # this step's answer was msgpack, carrying its info
        else:
            assert set(info) == {"episode_ids"}
    assert sent[0] == 8  # the 8 steps with an empty info went compact


def test_an_action_the_codec_cannot_carry_exactly_goes_as_msgpack_with_the_same_checks(serve: Any) -> None:
    served = serve(ByteEnv)
    env = served.client(rnp.RemoteEnv)
    sent = counting(served)
    env.reset(seed=1)
    # int64 values for an int8 space: not the contract's bytes, so msgpack; the server casts as ever.
    obs = env.step(np.array([1, 0, 1], np.int64))[0]
    assert obs[:3].tolist() == [1, 0, 1] and sent[0] == 0
    with pytest.raises(InvalidActionError, match="MultiBinary values must be 0 or 1"):
        env.step(np.array([2, 0, 1], np.int8))  # compact, refused by the same decoder
    assert env.step(np.array([0, 0, 1], np.int8))[0][:3].tolist() == [0, 0, 1]
    assert sent[0] == 1


def test_an_invalid_discrete_action_is_the_same_error_on_both_paths(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages = []
    for codec in ("1", "0"):
        monkeypatch.setenv("RLMESH_STEP_CODEC", codec)
        served = serve(TinyEnv(limit=100))
        env = served.client(rnp.RemoteEnv)
        assert (env._conn.step_layout is not None) == (codec == "1")
        env.reset()
        with pytest.raises(InvalidActionError) as caught:
            env.step(5)
        messages.append(str(caught.value))
        assert env.step(1)[0] == 1  # the session goes on
    assert messages[0] == messages[1] and "5 is outside Discrete(2, start=0)" in messages[0]


def test_pending_lease_releases_ride_on_a_msgpack_step(serve: Any) -> None:
    served = serve(ByteEnv)
    env = served.client(rlmesh.RemoteEnv)
    sent = counting(served)
    env.reset(seed=1)
    frame = env.render()
    assert frame.nbytes == 19_200
    stats = served.server.stats()["sessions"][0]
    assert stats["leases"] == 1
    del frame  # its lease is queued for the next request
    env.step(rlmesh.Tensor(np.array([1, 1, 0], np.int8).tobytes(), (3,), "int8"))
    assert sent[0] == 0 and served.server.stats()["sessions"][0]["leases"] == 0
    env.step(rlmesh.Tensor(np.array([1, 1, 0], np.int8).tobytes(), (3,), "int8"))
    assert sent[0] == 1  # nothing pending: compact again


class NapEnv(TinyEnv):
    """Action 1 sleeps `nap` seconds: a step that outlives its deadline."""

    def __init__(self, nap: float = 0.5) -> None:
        super().__init__(limit=10_000)
        self.nap = nap

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        if action == 1:
            time.sleep(self.nap)
        self.t += 1
        return int(action), float(self.t), False, False, {}


def test_the_late_answer_of_a_timed_out_step_is_skipped(serve: Any) -> None:
    served = serve(NapEnv(0.4))
    env = served.client(rnp.RemoteEnv)
    assert env._conn.step_layout is not None
    env.reset()
    with pytest.raises(OperationTimeout):
        env.step(1, timeout=0.05)
    # The next step's answer is its own (reward = the env's step count), not the late one.
    assert env.step(0)[1] == 2.0
    with pytest.raises(OperationTimeout):
        env.step(1, timeout=0.05)
    time.sleep(0.6)  # the late compact answer is in the ring now; a msgpack request drops it
    obs, info = env.reset()
    assert obs == 0 and env.step(0)[1] == 1.0


def test_a_server_dying_mid_step_is_a_typed_error_within_a_second(tmp_path: Path) -> None:
    proc, address = serve_gym("CartPole-v1", tmp_path)
    try:
        env = rnp.RemoteEnv(address, request_timeout_seconds=30)
        try:
            assert env._conn.step_layout is not None
            env.reset(seed=0)
            env.step(0)
            stop_process(proc.pid)  # the next step waits on a server that cannot answer
            errors: list[BaseException] = []

            def step() -> None:
                try:
                    env.step(1)
                except BaseException as exc:
                    errors.append(exc)

            waiter = threading.Thread(target=step)
            waiter.start()
            time.sleep(0.3)
            assert waiter.is_alive() and not errors
            start = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
            waiter.join(5)
            assert not waiter.is_alive()
            assert time.monotonic() - start < 1.0
            assert len(errors) == 1 and isinstance(errors[0], BrokenError), errors
            with pytest.raises(BrokenError):
                env.step(0)
        finally:
            env.close()
    finally:
        end(proc)


def test_spinning_off_changes_nothing_but_the_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    actions = [int(a) for a in np.random.default_rng(9).integers(0, 2, 200)]
    proc, address = serve_gym("CartPole-v1", tmp_path, RLMESH_SPIN="0")
    try:
        monkeypatch.setenv("RLMESH_SPIN", "0")
        with rnp.RemoteEnv(address) as env:
            assert env._conn.channel.rx.spin is not None and env._conn.channel.rx.spin.maximum == 0
        spun_off = trajectory(address, 2, actions)
        monkeypatch.setenv("RLMESH_STEP_CODEC", "0")
        plain = trajectory(address, 2, actions)
    finally:
        end(proc)
    assert spun_off[0] == ("codec", True) and spun_off[1:] == plain[1:]


def test_an_inline_session_keeps_msgpack_steps(serve: Any) -> None:
    served = serve(ByteEnv, "unix-inline")
    env = served.client(rnp.RemoteEnv)
    assert env.data_plane == "inline" and env._conn.step_layout is None
    env.reset(seed=2)
    assert env.step(np.array([1, 0, 1], np.int8))[0].tolist() == [1, 0, 1, 4, 5, 6, 7]


def test_a_vector_endpoint_keeps_msgpack_steps(serve: Any) -> None:
    served = serve("CartPole-v1", num_envs=2)
    env = served.client(rnp.RemoteVectorEnv)
    assert env._conn.step_layout is None
    env.reset(seed=0)
    obs, reward, terminated, truncated, _ = env.step(np.array([0, 1]))
    assert obs.shape == (2, 4) and reward.tolist() == [1.0, 1.0]
