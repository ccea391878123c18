"""The vector fast path's restart policy: a dead worker is respawned, the other lanes run on.

Real worker processes and real SIGKILLs. Under ``EnvServer(...,
restart=RestartPolicy(...))`` the step (or recv) that was waiting for a
killed worker returns: that worker's lanes start new episodes (reset
observation, reward 0, neither terminated nor truncated,
``info["rlmesh_restarted"]`` True, new episode ids), while the other lanes'
trajectories stay identical to an undisturbed run. A crash loop gives
WorkerError naming the lanes; nothing is left behind (the suite's leak check).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import rlmesh
import rlmesh.numpy as rnp
from rlmesh import RestartPolicy
from rlmesh.errors import WorkerError
from tests.conftest import serve_subprocess, workers_of
from tests.envs import KillLaneEnv, SlowLaneEnv, TinyEnv

pytestmark = pytest.mark.timeout(120)

POLICY = RestartPolicy(max_restarts=3, window_seconds=60.0)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def kill_and_wait(pid: int) -> None:
    """SIGKILL ``pid`` and wait until it has stopped running (it may stay a zombie until reaped)."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} survived SIGKILL"
        time.sleep(0.005)


def pool_of(served: Any) -> Any:
    (session,) = served.server._sessions
    return session.handler.adapter.env.pool


def eventually(check: Any, timeout: float = 5.0) -> None:
    """Wait for ``check()`` (the monitor thread books a restart just after the new worker is ready)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


def restarted(info: dict[str, Any]) -> list[bool]:
    flags, mask = info["rlmesh_restarted"], info["_rlmesh_restarted"]
    assert flags.dtype == np.bool_ and mask.dtype == np.bool_
    return [bool(f and m) for f, m in zip(flags, mask, strict=True)]


def actions_at(t: int) -> Any:
    # Alternating pushes keep CartPole's poles up for a while; every lane differs.
    return np.array([(t + lane) % 2 for lane in range(4)], dtype=np.int64)


def test_a_killed_worker_is_respawned_and_the_other_lanes_run_on_unchanged(serve) -> None:
    served = serve("CartPole-v1", num_envs=4, workers=2, restart=POLICY)
    env = served.client(rnp.RemoteVectorEnv)
    assert env.fast_path
    reference = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 4)
    try:
        obs, _ = env.reset(seed=7)
        want, _ = reference.reset(seed=7)
        assert obs.tobytes() == want.tobytes()
        for t in range(5):
            obs, rewards, term, trunc, info = env.step(actions_at(t))
            want_obs, want_rewards, want_term, want_trunc, _ = reference.step(actions_at(t))
            assert obs.tobytes() == want_obs.tobytes() and rewards.tolist() == want_rewards.tolist()
            assert "rlmesh_restarted" not in info
        ids_before = list(info["episode_ids"])
        pool = pool_of(served)
        dead = pool.pids[1]  # worker 1: lanes 2 and 3
        kill_and_wait(dead)

        obs, rewards, term, trunc, info = env.step(actions_at(5))
        want_obs, want_rewards, want_term, want_trunc, _ = reference.step(actions_at(5))
        assert restarted(info) == [False, False, True, True]
        # Lanes 0 and 1 took their step as if nothing happened.
        assert obs[:2].tobytes() == want_obs[:2].tobytes()
        assert rewards[:2].tolist() == want_rewards[:2].tolist()
        # Lanes 2 and 3 report a new episode: CartPole's reset state, reward 0, no end.
        assert np.all(np.abs(obs[2:]) <= 0.05)
        assert rewards[2:].tolist() == [0.0, 0.0]
        assert term.tolist() == [False] * 4 and trunc.tolist() == [False] * 4
        ids = info["episode_ids"]
        assert ids[:2] == ids_before[:2] and ids[2] != ids_before[2] and ids[3] != ids_before[3]
        eventually(lambda: pool.pids[1] != dead and served.server.stats()["worker_restarts"] == 1)
        assert alive(pool.pids[1])
        stats = served.server.stats()
        assert stats["worker_restarts"] == 1 and stats["sessions"][0]["worker_restarts"] == 1

        # Lanes 0 and 1 stay identical to the undisturbed run; lanes 2 and 3 play their new episodes.
        previous = obs.copy()
        for t in range(6, 16):
            obs, rewards, term, trunc, info = env.step(actions_at(t))
            want_obs, want_rewards, want_term, want_trunc, _ = reference.step(actions_at(t))
            assert obs[:2].tobytes() == want_obs[:2].tobytes()
            assert rewards[:2].tolist() == want_rewards[:2].tolist()
            assert term[:2].tolist() == want_term[:2].tolist()
            assert "rlmesh_restarted" not in info
            assert rewards[2:].tolist() == [1.0, 1.0] and not (obs[2:] == previous[2:]).all()
            assert info["episode_ids"][2:] == ids[2:]
            previous = obs.copy()
    finally:
        reference.close()


def test_a_worker_killed_while_the_client_waits_answers_that_wait(serve) -> None:
    served = serve(SlowLaneEnv, num_envs=2, workers=2, restart=POLICY)
    env = served.client(rnp.RemoteVectorEnv)
    env.reset(seed=[1000, 1], options={"delay": 30.0})  # lane 0 sleeps 30 s in every step
    pool = pool_of(served)
    env.step_async(np.ones(2, dtype=np.int64))
    time.sleep(0.2)
    kill_and_wait(pool.pids[0])
    start = time.monotonic()
    obs, rewards, term, trunc, info = env.step_wait(timeout=30)
    assert time.monotonic() - start < 15.0
    assert restarted(info) == [True, False]
    assert obs.tolist() == [0, 1] and rewards.tolist() == [0.0, 1.0]
    # The respawned lane was reset unseeded: its new episode has no delay.
    start = time.monotonic()
    obs, rewards, *_ = env.step(np.ones(2, dtype=np.int64), timeout=10)
    assert obs.tolist() == [1, 1] and rewards.tolist() == [1.0, 1.0]
    assert time.monotonic() - start < 5.0


def test_send_recv_across_a_restart_loses_nothing(serve) -> None:
    served = serve(KillLaneEnv, num_envs=4, workers=2, restart=POLICY)
    env = served.client(rnp.RemoteVectorEnv)
    env.reset(seed=0)
    ids_before = env._episode_ids[:]
    env.send(np.array([0, 0, 1]), env_ids=[0, 1, 2])  # action 1 kills lane 2's worker (lanes 2, 3)
    received: dict[int, tuple[int, float, bool]] = {}
    while len(received) < 3:
        obs, rewards, term, trunc, info, ids = env.recv(min_envs=1, timeout=30)
        flags = restarted(info) if "rlmesh_restarted" in info else [False] * len(ids)
        for pos, lane in enumerate(ids.tolist()):
            assert lane not in received
            received[lane] = (int(obs[pos]), float(rewards[pos]), flags[pos])
            if lane == 2:
                assert info["episode_ids"][pos] != ids_before[2]
    assert received == {0: (0, 1.0, False), 1: (0, 1.0, False), 2: (0, 0.0, True)}
    # Lane 3 was not in flight: its new episode is reported by the first command that covers it.
    env.send(np.array([0, 0, 0, 0]))
    obs, rewards, term, trunc, info, ids = env.recv(timeout=30)
    assert ids.tolist() == [0, 1, 2, 3]
    assert restarted(info) == [False, False, False, True]
    assert rewards.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert env._lanes.pending == []
    eventually(lambda: served.server.stats()["worker_restarts"] == 1)


def test_a_crash_loop_gives_worker_error_naming_the_lanes(serve) -> None:
    served = serve(KillLaneEnv, num_envs=4, workers=2, restart=RestartPolicy(max_restarts=2))
    env = served.client(rnp.RemoteVectorEnv)
    env.reset(seed=0)
    crash = np.array([0, 0, 1, 0])
    for _ in range(2):
        obs, rewards, *_, info = env.step(crash, timeout=30)
        assert restarted(info) == [False, False, True, True] and rewards.tolist() == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(WorkerError, match=r"lanes \[2, 3\].*max_restarts=2") as caught:
        env.step(crash, timeout=30)
    assert caught.value.lanes == [2, 3] and caught.value.worker == 1
    assert served.server.stats()["worker_restarts"] == 2
    pids = pool_of(served).pids
    env.close()
    deadline = time.monotonic() + 5.0
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_without_a_policy_a_killed_worker_is_a_worker_error(serve) -> None:
    served = serve("CartPole-v1", num_envs=4, workers=2)
    env = served.client(rnp.RemoteVectorEnv)
    env.reset(seed=0)
    kill_and_wait(pool_of(served).pids[0])
    with pytest.raises(WorkerError, match=r"lanes \[0, 1\]\) died \(exit status -9\)"):
        env.step(np.zeros(4, dtype=np.int64), timeout=30)
    stats = served.server.stats()
    assert stats["worker_restarts"] == 0 and stats["sessions"][0]["worker_restarts"] == 0


def test_a_client_off_the_fast_path_sees_the_restart_too(serve) -> None:
    served = serve("CartPole-v1", transport="tcp", num_envs=4, workers=2, restart=POLICY)
    env = served.client(rnp.RemoteVectorEnv)
    assert not env.fast_path
    env.reset(seed=0)
    ids_before = env.step(np.zeros(4, dtype=np.int64))[4]["episode_ids"]
    kill_and_wait(pool_of(served).pids[0])
    obs, rewards, term, trunc, info = env.step(np.zeros(4, dtype=np.int64))
    assert [bool(f) for f in info["rlmesh_restarted"]] == [True, True, False, False]
    assert rewards.tolist() == [0.0, 0.0, 1.0, 1.0]
    ids = info["episode_ids"]
    assert ids[0] != ids_before[0] and ids[1] != ids_before[1] and ids[2:] == ids_before[2:]


def test_restart_needs_the_fast_path_and_a_policy() -> None:
    with pytest.raises(ValueError, match="restart= is for the vector fast path"):
        rlmesh.EnvServer(TinyEnv(), restart=POLICY)
    with pytest.raises(TypeError, match="RestartPolicy"):
        rlmesh.EnvServer("CartPole-v1", num_envs=2, restart=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["NextStep", "SameStep", "Disabled"])
def test_model_run_replays_a_seeded_episode_a_restart_cut_short(serve, mode: str) -> None:
    served = serve("CartPole-v1", num_envs=4, workers=2, autoreset_mode=mode, restart=POLICY)
    calls = [0]

    def policy(observations: np.ndarray) -> np.ndarray:
        calls[0] += 1
        if calls[0] == 12:  # mid-episode on every lane: kill the worker of lanes 2 and 3
            kill_and_wait(pool_of(served).pids[1])
        return (observations[:, 2] > 0).astype(np.int64)

    seeds = list(range(100, 110))
    result = rnp.Model(policy).run(served.server.address, seeds=seeds)
    single = rnp.Model(lambda obs: int(obs[2] > 0)).run("CartPole-v1", seeds=seeds)

    def outcome(run: rlmesh.RunResult) -> list[tuple[Any, ...]]:
        return [(e.index, e.seed, e.steps, e.reward, e.terminated, e.truncated) for e in run.episodes]

    # The episodes the restart cut short ran again from their seeds: the same results as undisturbed.
    assert outcome(result) == outcome(single)
    assert served.server.stats()["worker_restarts"] == 1


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_closing_during_a_respawn_reaps_the_new_worker_too(serve, delay: float) -> None:
    served = serve("CartPole-v1", num_envs=4, workers=2, restart=POLICY)
    env = served.client(rnp.RemoteVectorEnv)
    env.reset(seed=0)
    kill_and_wait(pool_of(served).pids[0])
    time.sleep(delay)  # 0: before the monitor respawns; 0.3 s: while the new worker starts
    start = time.monotonic()
    env.close()
    served.server.shutdown()
    assert time.monotonic() - start < 10.0
    deadline = time.monotonic() + 5.0
    while workers_of(os.getpid()):
        assert time.monotonic() < deadline, f"workers left behind: {workers_of(os.getpid())}"
        time.sleep(0.02)


def test_rlmesh_serve_max_restarts(tmp_path: Path) -> None:
    proc, address = serve_subprocess(
        "CartPole-v1",
        f"unix://{tmp_path}/vec.sock",
        "--num-envs",
        "4",
        "--workers",
        "2",
        "--max-restarts",
        "1",
    )
    try:
        env = rnp.RemoteVectorEnv(address, request_timeout_seconds=30)
        assert env.fast_path
        env.reset(seed=0)
        env.step(np.zeros(4, dtype=np.int64))
        first = workers_of(proc.pid)
        assert len(first) == 2
        kill_and_wait(first[0])
        *_, info = env.step(np.zeros(4, dtype=np.int64))
        assert sum(restarted(info)) == 2  # one worker's two lanes
        eventually(lambda: len(workers_of(proc.pid)) == 2)
        again = [p for p in workers_of(proc.pid) if p not in first]
        assert len(again) == 1
        kill_and_wait(again[0])  # a second death within the window: more than --max-restarts 1
        with pytest.raises(WorkerError, match="max_restarts=1"):
            env.step(np.zeros(4, dtype=np.int64), timeout=30)
        env.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_rlmesh_serve_refuses_max_restarts_without_the_fast_path(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rlmesh", "serve", "CartPole-v1", "--max-restarts", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--max-restarts needs --num-envs N >= 2" in result.stderr


def test_model_run_restarts_the_count_of_an_unseeded_episode_a_restart_cut_short(serve) -> None:
    served = serve("CartPole-v1", num_envs=4, workers=2, restart=POLICY)
    calls = [0]

    def policy(observations: np.ndarray) -> np.ndarray:
        calls[0] += 1
        if calls[0] == 12:
            kill_and_wait(pool_of(served).pids[0])
        return (observations[:, 2] > 0).astype(np.int64)

    result = rnp.Model(policy).run(served.server.address, max_episodes=8)
    assert len(result.episodes) == 8
    # CartPole pays 1 per step: an episode that counted the restart's step (reward 0), or
    # steps of the episode before it, would have more steps than reward.
    assert all(e.steps == e.reward and e.terminated for e in result.episodes)
    assert served.server.stats()["worker_restarts"] == 1
