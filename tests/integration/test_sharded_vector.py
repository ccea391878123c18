"""ShardedVectorEnv over real `rlmesh serve` subprocesses on loopback TCP (issue 14, tier 0).

Each endpoint is its own server process (`--num-envs K --workers 1`), driven
across processes as a remote host would be: `shared_memory=False` is the
cross-host path (inline frames). The sharded env must replay a local
SyncVectorEnv of the same total size bit for bit, survive a SIGKILLed or
SIGSTOPped endpoint, and let a restarted one rejoin.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

gymnasium = pytest.importorskip("gymnasium")

from rlmesh.errors import EndpointLostError  # noqa: E402
from rlmesh.numpy import ShardedVectorEnv  # noqa: E402
from tests.conftest import serve_subprocess, stop_process  # noqa: E402

SIZES = (2, 3, 2)
N = sum(SIZES)


def start(size: int, address: str = "tcp://127.0.0.1:0", *extra: str, target: str = "CartPole-v1") -> Any:
    return serve_subprocess(target, address, "--num-envs", str(size), "--workers", "1", *extra)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    proc.wait(timeout=10)


@contextlib.contextmanager
def endpoints(*extra: str, sizes: tuple[int, ...] = SIZES) -> Iterator[tuple[list[Any], list[str]]]:
    procs: list[Any] = []
    addresses: list[str] = []
    try:
        for size in sizes:
            proc, address = start(size, "tcp://127.0.0.1:0", *extra)
            procs.append(proc)
            addresses.append(address)
        yield procs, addresses
    finally:
        for proc in procs:
            stop(proc)


def actions_at(t: int, n: int = N) -> Any:
    return np.random.default_rng(t).integers(0, 2, size=n)


@pytest.mark.parametrize("mode", ["NextStep", "SameStep", "Disabled"])
def test_replays_a_local_sync_vector_env_bit_for_bit(mode: str) -> None:
    local = gymnasium.make_vec(
        "CartPole-v1", num_envs=N, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode}
    )
    with (
        endpoints("--autoreset-mode", mode) as (_, addresses),
        ShardedVectorEnv(addresses, shared_memory=False, request_timeout_seconds=30) as env,
    ):
        assert env.num_envs == N and env.autoreset_mode == mode
        assert [env.lanes_of(i) for i in range(3)] == [range(0, 2), range(2, 5), range(5, 7)]
        obs, info = env.reset(seed=11)
        want, _ = local.reset(seed=11)
        assert np.array_equal(obs, want)
        assert info["rlmesh_live"].all() and not info["rlmesh_lost"].any()
        ended = 0
        for t in range(250):
            got = env.step(actions_at(t))
            ref = local.step(actions_at(t))
            for a, b in zip(got[:4], ref[:4], strict=True):
                assert np.array_equal(a, b), (t, a, b)
            if mode == "SameStep" and "final_obs" in ref[4]:
                lanes = np.nonzero(ref[4]["_final_obs"])[0]
                assert list(np.nonzero(got[4]["_final_obs"])[0]) == list(lanes)
                for lane in lanes:
                    assert np.array_equal(np.asarray(got[4]["final_obs"][lane]), ref[4]["final_obs"][lane])
            done = ref[2] | ref[3]
            ended += int(done.sum())
            if mode == "Disabled" and done.any():
                mask = np.asarray(done, dtype=bool)
                obs, _ = env.reset(options={"reset_mask": mask})
                want, _ = local.reset(options={"reset_mask": mask})
                assert np.array_equal(obs, want)
        assert ended > 0
    local.close()


def test_a_killed_endpoint_is_truncated_at_once_then_masked_and_a_restarted_one_rejoins() -> None:
    with (
        endpoints() as (procs, addresses),
        ShardedVectorEnv(addresses, shared_memory=False, request_timeout_seconds=30) as env,
    ):
        env.reset(seed=3)
        for t in range(5):
            _, _, _, _, info = env.step(actions_at(t))
        before = env.step(actions_at(5))[0]
        procs[1].kill()
        procs[1].wait()
        start_at = time.monotonic()
        obs, rewards, terminated, truncated, info = env.step(actions_at(6))
        assert time.monotonic() - start_at < 2.0
        lanes = list(env.lanes_of(1))
        assert truncated[lanes].all() and not terminated[lanes].any()
        assert info["rlmesh_lost"][lanes].all() and not info["rlmesh_lost"][[0, 1, 5, 6]].any()
        assert not info["rlmesh_live"][lanes].any() and info["rlmesh_live"][[0, 1, 5, 6]].all()
        assert np.array_equal(obs[lanes], before[lanes])  # the last observation delivered
        # Masked: not stepped, zero fillers, the others step on.
        obs, rewards, _, truncated, info = env.step(actions_at(7))
        assert not truncated[lanes].any() and not info["rlmesh_lost"].any()
        assert (
            not info["rlmesh_live"][lanes].any() and (obs[lanes] == 0).all() and (rewards[lanes] == 0).all()
        )
        assert env.live == [True, False, True]
        # A new server on the same address rejoins: its lanes are reset with their seeds.
        port = addresses[1].rsplit(":", 1)[1]
        procs[1], again = start(SIZES[1], f"tcp://127.0.0.1:{port}")
        assert again == addresses[1]
        deadline = time.monotonic() + 15
        t = 8
        while True:
            obs, _, _, truncated, info = env.step(actions_at(t))
            t += 1
            if info["rlmesh_restarted"][lanes].any():
                break
            assert time.monotonic() < deadline, "the restarted endpoint did not rejoin"
            time.sleep(0.05)
        assert info["rlmesh_restarted"][lanes].all() and info["rlmesh_live"].all()
        fresh = gymnasium.make_vec("CartPole-v1", num_envs=N, vectorization_mode="sync")
        want, _ = fresh.reset(seed=3)
        fresh.close()
        assert np.array_equal(obs[lanes], want[lanes])  # lane g reset with seed 3 + g
        _, _, _, _, info = env.step(actions_at(t))
        assert info["rlmesh_live"].all() and not info["rlmesh_restarted"].any()


def test_on_lost_raise_carries_the_partial_batch() -> None:
    with (
        endpoints() as (procs, addresses),
        ShardedVectorEnv(addresses, shared_memory=False, on_lost="raise", reconnect=False) as env,
    ):
        env.reset(seed=0)
        procs[2].kill()
        procs[2].wait()
        with pytest.raises(EndpointLostError) as caught:
            env.step(actions_at(0))
        err = caught.value
        assert err.lanes == [5, 6] and err.endpoints == [2]
        obs, rewards, terminated, truncated, info = err.partial
        assert obs.shape == (N, 4) and truncated[[5, 6]].all() and info["rlmesh_live"][:5].all()
        # The others keep stepping; the lost lanes stay masked.
        _, _, _, truncated, info = env.step(actions_at(1))
        assert not info["rlmesh_live"][[5, 6]].any() and info["rlmesh_live"][:5].all()


def test_a_stopped_endpoint_is_a_straggler_not_a_hang() -> None:
    with (
        endpoints() as (procs, addresses),
        ShardedVectorEnv(addresses, shared_memory=False, request_timeout_seconds=20) as env,
    ):
        env.reset(seed=1)
        stop_process(procs[0].pid)
        try:
            env.send(actions_at(0))
            obs, _, _, _, info, ids = env.recv(min_envs=N - 2, timeout=10)
            assert list(ids) == [2, 3, 4, 5, 6] and obs.shape == (5, 4)
            with pytest.raises(rlmesh_errors().OperationTimeout):
                env.recv(timeout=0.2)  # the straggler's lanes are still in flight, kept
        finally:
            os.kill(procs[0].pid, signal.SIGCONT)
        obs, _, _, _, info, ids = env.recv(timeout=10)
        assert list(ids) == [0, 1] and info["rlmesh_live"].all()
        # step waits for a straggler until it resumes.
        stop_process(procs[0].pid)
        timer = subprocess.Popen(["sh", "-c", f"sleep 0.7; kill -CONT {procs[0].pid}"])
        try:
            start_at = time.monotonic()
            _, _, _, truncated, info = env.step(actions_at(1))
            assert time.monotonic() - start_at >= 0.5
            assert info["rlmesh_live"].all() and not info["rlmesh_lost"].any()
        finally:
            timer.wait()


def rlmesh_errors() -> Any:
    import rlmesh.errors

    return rlmesh.errors


def test_send_recv_returns_ready_lanes_first_and_loses_nothing() -> None:
    with endpoints() as (_, addresses), ShardedVectorEnv(addresses, shared_memory=False) as env:
        env.reset(seed=0)
        steps = np.zeros(N, dtype=int)
        env.send(actions_at(0))
        for t in range(60):
            _, _, _, _, info, ids = env.recv(min_envs=2, timeout=10)
            assert list(ids) == sorted(ids) and len(ids) >= 2
            steps[ids] += 1
            env.send(actions_at(t)[: len(ids)], env_ids=ids)
        _, _, _, _, _, ids = env.recv(timeout=10)
        steps[ids] += 1
        assert (
            (steps[:2] == steps[0]).all() and (steps[2:5] == steps[2]).all() and (steps[5:] == steps[5]).all()
        )
        assert steps.min() >= 1
        with pytest.raises(ValueError, match="whole endpoints"):
            env.send(actions_at(0)[:1], env_ids=[0])


def test_mismatched_spaces_are_refused_naming_the_endpoint() -> None:
    a, addr_a = start(2)
    b, addr_b = start(2, target="Acrobot-v1")
    try:
        with pytest.raises(ValueError, match=r"endpoint 1 .* serves another"):
            ShardedVectorEnv([addr_a, addr_b], shared_memory=False)
    finally:
        stop(a)
        stop(b)


def test_the_gymnasium_face_replays_infos_as_a_sync_vector_env_and_the_jax_face_steps() -> None:
    import rlmesh.gymnasium as rg

    sizes = (2, 3)
    local = gymnasium.make_vec(
        "CartPole-v1", num_envs=5, vectorization_mode="sync", vector_kwargs={"autoreset_mode": "SameStep"}
    )
    with endpoints("--autoreset-mode", "SameStep", sizes=sizes) as (_, addresses):
        with rg.ShardedVectorEnv(addresses, shared_memory=False) as env:
            assert isinstance(env, gymnasium.vector.VectorEnv) and env.num_envs == 5
            assert env.single_action_space == local.single_action_space
            obs, _ = env.reset(seed=4)
            assert np.array_equal(obs, local.reset(seed=4)[0])
            ended = 0
            for t in range(150):
                env.step_async(actions_at(t, 5))
                got = env.step_wait()
                ref = local.step(actions_at(t, 5))
                for a, b in zip(got[:4], ref[:4], strict=True):
                    assert np.array_equal(a, b)
                info = {k: v for k, v in got[4].items() if "rlmesh_" not in k}
                assert sorted(info) == sorted(ref[4])
                if "final_obs" in ref[4]:
                    ended += 1
                    assert np.array_equal(info["_final_obs"], ref[4]["_final_obs"])
                    for lane in np.nonzero(ref[4]["_final_obs"])[0]:
                        assert np.array_equal(info["final_obs"][lane], ref[4]["final_obs"][lane])
            assert ended > 0
        jax_face = pytest.importorskip("rlmesh.jax")
        with jax_face.ShardedVectorEnv(addresses, shared_memory=False) as jenv:
            obs, _ = jenv.reset(seed=4)
            want, _ = local.reset(seed=4)
            assert type(obs).__module__.startswith("jax") and np.array_equal(np.asarray(obs), want)
            got = jenv.step(np.asarray(actions_at(0, 5)))
            assert np.array_equal(np.asarray(got[0]), local.step(actions_at(0, 5))[0])
    local.close()


def test_a_close_from_another_thread_wakes_a_step_and_an_unclosed_env_is_released() -> None:
    import gc
    import threading
    import warnings

    from rlmesh.errors import ClosedError

    with endpoints(sizes=(2, 2)) as (procs, addresses):
        env = ShardedVectorEnv(addresses, shared_memory=False, request_timeout_seconds=30)
        env.reset(seed=0)
        stop_process(procs[1].pid)
        try:
            outcome: dict[str, Any] = {}

            def blocked() -> None:
                try:
                    env.step(actions_at(0, 4))
                except BaseException as exc:  # noqa: BLE001 - the outcome is the check
                    outcome["error"] = exc

            thread = threading.Thread(target=blocked)
            thread.start()
            time.sleep(0.3)
            assert thread.is_alive()
            env.close()
            thread.join(timeout=3)
            assert not thread.is_alive() and isinstance(outcome.get("error"), ClosedError)
            env.close()
            with pytest.raises(ClosedError):
                env.reset()
        finally:
            os.kill(procs[1].pid, signal.SIGCONT)
        dropped = ShardedVectorEnv(addresses, shared_memory=False)
        threads = [ep.thread for ep in dropped._endpoints]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del dropped
            gc.collect()
        assert any("never closed" in str(w.message) for w in caught)
        assert not any(t.is_alive() for t in threads)


def test_an_endpoint_killed_while_its_lanes_are_in_flight_returns_them_truncated_from_recv() -> None:
    with (
        endpoints() as (procs, addresses),
        ShardedVectorEnv(addresses, shared_memory=False, request_timeout_seconds=20) as env,
    ):
        env.reset(seed=2)
        stop_process(procs[1].pid)  # its lanes stay in flight until the kill
        env.send(actions_at(0))
        _, _, _, _, _, ids = env.recv(min_envs=4, timeout=10)
        assert list(ids) == [0, 1, 5, 6]
        procs[1].kill()
        procs[1].wait()
        start_at = time.monotonic()
        _, _, _, truncated, info, ids = env.recv(timeout=10)
        assert time.monotonic() - start_at < 2.0
        assert list(ids) == [2, 3, 4] and truncated.all() and info["rlmesh_lost"].all()
        assert not info["rlmesh_live"].any()
        # Masked lanes sent again wait for the endpoint's return; the others step on.
        env.send(actions_at(1)[:4], env_ids=[0, 1, 5, 6])
        _, _, _, _, info, ids = env.recv(timeout=10)
        assert list(ids) == [0, 1, 5, 6] and info["rlmesh_live"].all()


def test_the_auth_token_reaches_every_endpoint(tmp_path: Any) -> None:
    from rlmesh.errors import AuthenticationError

    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token")
    token_file.chmod(0o600)
    with endpoints("--auth-token-file", str(token_file), sizes=(2, 2)) as (_, addresses):
        with ShardedVectorEnv(addresses, shared_memory=False, auth_token="s3cret-token") as env:
            obs, _ = env.reset(seed=0)
            assert obs.shape == (4, 4)
        with pytest.raises(AuthenticationError):
            ShardedVectorEnv(addresses, shared_memory=False, auth_token="wrong")


def test_an_endpoint_past_the_deadline_is_lost_then_rejoins_when_it_resumes() -> None:
    with (
        endpoints(sizes=(2, 2)) as (procs, addresses),
        ShardedVectorEnv(addresses, shared_memory=False, request_timeout_seconds=1.0) as env,
    ):
        env.reset(seed=6)
        stop_process(procs[0].pid)
        try:
            start_at = time.monotonic()
            _, _, _, truncated, info = env.step(actions_at(0, 4))
            assert time.monotonic() - start_at < 3.0
            assert truncated[:2].all() and info["rlmesh_lost"][:2].all() and info["rlmesh_live"][2:].all()
        finally:
            os.kill(procs[0].pid, signal.SIGCONT)
        deadline = time.monotonic() + 15
        t = 1
        while True:
            obs, _, _, _, info = env.step(actions_at(t, 4))
            t += 1
            if info["rlmesh_restarted"][:2].any():
                break
            assert not info["rlmesh_live"][:2].any()
            assert time.monotonic() < deadline, "the resumed endpoint did not rejoin"
            time.sleep(0.05)
        fresh = gymnasium.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
        assert np.array_equal(obs[:2], fresh.reset(seed=6)[0][:2])
        fresh.close()


def test_replace_endpoint_moves_lanes_to_a_new_address() -> None:
    with (
        endpoints(sizes=(2, 2)) as (procs, addresses),
        ShardedVectorEnv(addresses, shared_memory=False, reconnect=False) as env,
    ):
        env.reset(seed=9)
        env.step(actions_at(0, 4))
        moved, address = start(2)
        procs.append(moved)
        env.replace_endpoint(1, address)
        assert env.endpoints == [addresses[0], address]
        _, _, _, truncated, info = env.step(actions_at(1, 4))
        assert truncated[2:].all() and info["rlmesh_lost"][2:].all() and info["rlmesh_live"][:2].all()
        deadline = time.monotonic() + 15
        t = 2
        while True:
            obs, _, _, _, info = env.step(actions_at(t, 4))
            t += 1
            if info["rlmesh_restarted"][2:].any():
                break
            assert time.monotonic() < deadline, "the new address did not rejoin"
            time.sleep(0.05)
        fresh = gymnasium.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
        assert np.array_equal(obs[2:], fresh.reset(seed=9)[0][2:])
        fresh.close()
        _, _, _, _, info = env.step(actions_at(t, 4))
        assert info["rlmesh_live"].all()
