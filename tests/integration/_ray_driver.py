"""Driver bodies for test_ray_fleet.py, each run in a fresh interpreter against the module's cluster.

A Ray driver keeps gRPC connections to every actor it called (the test process
would show them as leaked sockets), so each test connects from its own
process, as a learner would: ``python -c "...; main(NAME, ADDRESS)"``. A failed
check exits non-zero with its message.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import ray

import rlmesh
import rlmesh.numpy as rnp
import rlmesh.ray as rr
from rlmesh.errors import ClosedError, FleetError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def policy() -> Any:
    """A deterministic CartPole policy; vectorizable (the sweep's hosts give it a batch of lanes)."""
    return rnp.Model(lambda obs: (obs[..., 2] > 0).astype(np.int64))


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start


def kill_mid_step() -> None:
    """A fleet serves its lanes; a host SIGKILLed mid-step is lost, then back within 15 s."""
    restart = rr.RestartPolicy(max_restarts=3, window_seconds=60)
    with rr.EnvFleet("CartPole-v1", num_envs=6, hosts=3, restart=restart) as fleet:
        hosts = fleet.hosts()
        assert [h.state for h in hosts] == ["live"] * 3, hosts
        assert [h.lanes for h in hosts] == [2, 2, 2], hosts
        assert len({h.node_id for h in hosts}) == 3, hosts  # spread: one host per node
        assert all(h.address and not h.address.startswith("tcp://127.") for h in hosts), hosts  # node IP
        env = fleet.vector_env(request_timeout_seconds=20)
        try:
            assert env.num_envs == 6
            env.reset(seed=0)
            actions = np.zeros(6, dtype=np.int64)
            victim = hosts[1]
            killer = threading.Timer(0.2, os.kill, (victim.pid, signal.SIGKILL))
            start = time.monotonic()
            killer.start()
            lost_at = None
            try:
                while lost_at is None:
                    _, _, _, truncated, info = env.step(actions)
                    assert info["rlmesh_live"][[0, 1, 4, 5]].all(), info  # the other hosts keep stepping
                    if info["rlmesh_lost"][2:4].all():
                        assert truncated[2:4].all(), truncated
                        lost_at = time.monotonic()
                    assert time.monotonic() - start < 10, "the killed host's lanes were never reported lost"
            finally:
                killer.cancel()
            assert lost_at - start < 0.2 + 2.0, lost_at - start  # lost within 2 s of the kill
            while True:
                _, _, _, _, info = env.step(actions)
                if info["rlmesh_restarted"][2:4].all():
                    break
                assert not info["rlmesh_restarted"][[0, 1, 4, 5]].any(), info
                assert time.monotonic() - lost_at < 15, "the lanes did not come back within 15 s"
            recovered = time.monotonic() - lost_at
            # Ray restarted the host on the same node and port, so the env may be back on it
            # before the supervisor's watch has seen the restart: its record follows within seconds.
            _wait(lambda: fleet.hosts()[1].generation == 2, 10, "the supervisor's record of the restart")
            back = fleet.hosts()[1]
            assert back.state == "live" and back.generation == 2 and back.restarts == 1, back
            assert back.pid != victim.pid
            _, _, _, _, info = env.step(actions)
            assert info["rlmesh_live"].all(), info
            stats = fleet.stats()
            assert stats["restarts"] == 1 and stats["live"] == 3 and stats["live_lanes"] == 6, stats
        finally:
            env.close()
    assert fleet.state.value == "closed"
    fleet.shutdown()  # idempotent
    print(f"recovered in {recovered:.2f} s")


def sweep() -> None:
    """300 seeds, a host SIGKILLed after 100: every seed once, in order, equal to a local run."""
    seeds = list(range(1000, 1300))
    with rr.EnvFleet("CartPole-v1", num_envs=6, hosts=3) as fleet:
        killed: list[int] = []

        def kill_once(done: int, total: int) -> None:
            if done >= 100 and not killed:
                victim = fleet.hosts()[2]
                assert victim.pid is not None
                os.kill(victim.pid, signal.SIGKILL)
                killed.append(victim.pid)

        result = rr.run(policy, seeds=seeds, fleet=fleet, chunk_size=10, on_progress=kill_once, timeout=150)
        assert killed, "the sweep ended before a host could be killed"
        _wait(lambda: fleet.hosts()[2].generation == 2, 15, "the killed host's restart")
        assert fleet.stats()["restarts"] == 1
    local = policy().run("CartPole-v1", seeds=seeds)
    assert [e.index for e in result.episodes] == list(range(300))
    assert [e.seed for e in result.episodes] == seeds
    got = [(e.steps, e.reward, e.terminated, e.truncated) for e in result.episodes]
    want = [(e.steps, e.reward, e.terminated, e.truncated) for e in local.episodes]
    assert got == want, [i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
    print(f"{result.num_episodes} episodes, {result.total_steps} steps")


def dies_on_build() -> Any:
    """An env factory whose process dies while the host's server builds the env."""
    os._exit(3)


def crash_loop() -> None:
    """A host that dies on every start is retired by the breaker; start() raises FleetError, no hang."""
    fleet = rr.EnvFleet(
        dies_on_build,
        num_envs=1,
        hosts=1,
        restart=rr.RestartPolicy(max_restarts=2),
        # The factory lives in this module: the host imports it from the checkout.
        runtime_env={"env_vars": {"PYTHONPATH": ROOT}},
    )
    start = time.monotonic()
    try:
        fleet.start(timeout=100)
    except FleetError as exc:
        assert "crash-looping" in str(exc), exc
    else:
        raise AssertionError("a crash-looping host started")
    assert time.monotonic() - start < 100
    assert fleet.state.value == "closed"


def arguments() -> None:
    """Bad arguments are refused; a fleet not started has no hosts; run() starts its own fleet."""
    for kwargs, word in [
        ({"num_envs": 2, "placement": "everywhere"}, "placement"),
        ({"num_envs": 0}, "num_envs"),
        ({"num_envs": 2, "hosts": 3}, "lanes"),
    ]:
        try:
            rr.EnvFleet("CartPole-v1", **kwargs)
        except ValueError as exc:
            assert word in str(exc), exc
        else:
            raise AssertionError(f"{kwargs} accepted")
    fleet = rr.EnvFleet("CartPole-v1", num_envs=2)
    try:
        fleet.hosts()
    except ClosedError:
        pass
    else:
        raise AssertionError("hosts() of a fleet never started")
    fleet.shutdown()
    assert rr.RestartPolicy is rlmesh.RestartPolicy
    try:
        rr.run(policy, "Pendulum-v1", seeds=[0], fleet=fleet)
    except ValueError as exc:
        assert "fleet's own source" in str(exc), exc
    else:
        raise AssertionError("a sweep of another env on a CartPole fleet")
    # Without a fleet, run() starts one (here one host of two lanes) and shuts it down.
    seeds = [5, 6, 7, 8, 9]
    result = rr.run(policy, "CartPole-v1", seeds=seeds, hosts=1, envs_per_host=2, chunk_size=2)
    local = policy().run("CartPole-v1", seeds=seeds)
    assert [(e.seed, e.steps, e.reward) for e in result.episodes] == [
        (e.seed, e.steps, e.reward) for e in local.episodes
    ]


def dropped() -> None:
    """A started fleet dropped unclosed warns and is shut down: its host actor is gone."""
    import gc
    import warnings

    fleet = rr.EnvFleet("CartPole-v1", num_envs=1, hosts=1).start(timeout=100)
    (handle,) = fleet.handles()
    assert ray.get(handle.info.remote())["lanes"] == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del fleet
        gc.collect()
    assert any(
        issubclass(w.category, ResourceWarning) and "never closed" in str(w.message) for w in caught
    ), [str(w.message) for w in caught]
    try:
        ray.get(handle.info.remote(), timeout=30)
    except ray.exceptions.RayActorError:
        pass
    else:
        raise AssertionError("the dropped fleet's host still answers")


def main(name: str, address: str) -> None:
    """Connect to the cluster at ``address`` and run the body ``name``."""
    ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        bodies = {
            "kill_mid_step": kill_mid_step,
            "sweep": sweep,
            "crash_loop": crash_loop,
            "arguments": arguments,
            "dropped": dropped,
        }
        bodies[name]()
    finally:
        ray.shutdown()
    sys.stdout.flush()
