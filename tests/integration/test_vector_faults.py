"""Faults on the vector fast path: dead, hung and failing workers; a killed server; reaping.

Real worker processes, real signals: a SIGKILLed worker gives WorkerError
naming its lanes within a second; a hung one the call's OperationTimeout
naming the lanes still outstanding; an env that raises a RemoteError naming
the lane, with the session still usable. A SIGKILLed server (in a
subprocess) leaves no worker behind and nothing in /dev/shm (the suite's
leak check), and close() or shutdown() reaps every worker.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

import rlmesh.numpy as rnp
from rlmesh.errors import BrokenError, OperationTimeout, RemoteError, WorkerError
from tests.conftest import serve_subprocess, workers_of
from tests.envs import BrokenLaneEnv, SlowLaneEnv

pytestmark = pytest.mark.timeout(120)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.02)
    return [p for p in pids if alive(p)]


def test_a_sigkilled_worker_gives_worker_error_naming_its_lanes_within_a_second(serve) -> None:
    served = serve("CartPole-v1", num_envs=4, workers=2)
    env = served.client(rnp.RemoteVectorEnv, request_timeout_seconds=30)
    env.reset(seed=0)
    pids = workers_of(os.getpid())
    assert len(pids) == 2
    pool = next(iter(served.server._sessions)).handler.adapter.env.pool
    assert sorted(pool.pids) == pids
    os.kill(pool.pids[1], signal.SIGKILL)  # worker 1: lanes 2 and 3
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"lanes \[2, 3\]") as caught:
        while True:  # the step in flight when the worker died, or the next one
            env.step(np.zeros(4, dtype=np.int64))
    assert time.monotonic() - start < 1.0
    assert caught.value.lanes == [2, 3] and caught.value.worker == 1
    assert isinstance(caught.value, BrokenError)
    with pytest.raises(WorkerError):
        env.step(np.zeros(4, dtype=np.int64))


def test_a_worker_killed_while_the_client_waits_is_noticed_at_once(serve) -> None:
    served = serve(SlowLaneEnv, num_envs=2, workers=2)
    env = served.client(rnp.RemoteVectorEnv)
    env.reset(seed=[1000, 1], options={"delay": 30.0})
    pool = next(iter(served.server._sessions)).handler.adapter.env.pool
    env.step_async(np.ones(2, dtype=np.int64))
    time.sleep(0.2)
    os.kill(pool.pids[0], signal.SIGKILL)  # stuck in a 30 s step
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"lanes \[0\]"):
        env.step_wait(timeout=20)
    assert time.monotonic() - start < 1.0


def test_a_hung_worker_gives_the_deadline_naming_the_lanes_outstanding(serve) -> None:
    served = serve(SlowLaneEnv, num_envs=4, workers=2)
    env = served.client(rnp.RemoteVectorEnv)
    env.reset(seed=[1, 2, 1000, 3], options={"delay": 3.0})
    start = time.monotonic()
    with pytest.raises(OperationTimeout, match=r"lanes \[2, 3\]"):
        env.step(np.ones(4, dtype=np.int64), timeout=0.3)
    assert time.monotonic() - start < 1.0
    # close() does not wait out the hung step.
    start = time.monotonic()
    env.close()
    assert time.monotonic() - start < 2.0


def test_an_env_error_names_the_lane_and_the_session_stays_usable(serve) -> None:
    served = serve(BrokenLaneEnv, num_envs=4, workers=2)
    env = served.client(rnp.RemoteVectorEnv)
    env.reset(seed=0)
    with pytest.raises(RemoteError, match=r"lane 2 raised ValueError: action 1 breaks this lane") as caught:
        env.step(np.array([0, 0, 1, 0]))
    assert caught.value.remote_type == "ValueError" and "Traceback" in caught.value.remote_traceback
    obs, rewards, *_ = env.step(np.array([0, 0, 0, 0]))
    assert rewards.tolist() == [1.0] * 4
    env.send(np.array([1]), env_ids=[1])
    with pytest.raises(RemoteError, match="lane 1"):
        env.recv(timeout=10)
    assert env._lanes.pending == []
    # One worker fails while the other succeeds: the error first, then the good lanes (none lost).
    env.send(np.array([0, 0, 1, 0]))
    with pytest.raises(RemoteError, match="lane 2"):
        env.recv(timeout=10)
    _, rewards, _, _, _, ids = env.recv(timeout=10)
    assert ids.tolist() == [0, 1] and rewards.tolist() == [1.0, 1.0]
    assert env._lanes.pending == []


def test_close_and_shutdown_reap_every_worker(serve) -> None:
    served = serve("CartPole-v1", num_envs=6, workers=3)
    env = served.client(rnp.RemoteVectorEnv)
    env.reset(seed=0)
    pids = workers_of(os.getpid())
    assert len(pids) == 3
    env.close()
    assert wait_gone(pids) == []
    env = served.client(rnp.RemoteVectorEnv)  # a new session: new workers
    env.reset(seed=0)
    pids = workers_of(os.getpid())
    assert len(pids) == 3
    served.server.shutdown()
    assert wait_gone(pids) == []


def test_a_sigkilled_server_leaves_no_worker_and_no_segment(tmp_path: Path) -> None:
    proc, address = serve_subprocess(
        "CartPole-v1", f"unix://{tmp_path}/vec.sock", "--num-envs", "4", "--workers", "2"
    )
    try:
        env = rnp.RemoteVectorEnv(address, request_timeout_seconds=30)
        assert env.fast_path
        env.reset(seed=0)
        env.step(np.zeros(4, dtype=np.int64))
        pids = workers_of(proc.pid)
        assert len(pids) == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert wait_gone(pids, 3.0) == []
        start = time.monotonic()
        with pytest.raises(BrokenError):
            for _ in range(1000):
                env.step(np.zeros(4, dtype=np.int64), timeout=10)
        assert time.monotonic() - start < 2.0
        env.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
