"""The vector fast path (rlmesh.vector) against gymnasium.vector.SyncVectorEnv, bit for bit.

A served ``EnvServer(id_or_factory, num_envs=N, workers=W)`` runs its lanes in
W worker processes that write into one shared-memory segment, and the client
steps them directly. These tests drive it with ``rlmesh.numpy.RemoteVectorEnv``
next to an in-process ``SyncVectorEnv`` over the same envs and compare every
reset and step: observations (bytes, dtype, shape), rewards, flags and the
batched info (SameStep's ``final_obs``/``final_info`` included), in every
autoreset mode, with 1, 2 and 3 workers, with per-lane masked resets and
per-lane seeds; then send/recv, render, step_async/step_wait, what crosses
the session, and bad input.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import rlmesh
import rlmesh.numpy as rnp
from rlmesh.errors import InvalidHandle, ProtocolError, RemoteError
from rlmesh.vector._layout import Layout
from tests.envs import ComboActionEnv, DictImageEnv, SlowLaneEnv, TinyEnv

pytestmark = pytest.mark.timeout(180)

N = 6


def compare(a: Any, b: Any, where: str) -> None:
    """Equal trees: arrays bit-identical with the same dtype and shape; dicts key by key."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and sorted(a) == sorted(b), (where, sorted(a), sorted(b))
        for key in b:
            compare(a[key], b[key], f"{where}.{key}")
    elif isinstance(b, tuple):
        assert isinstance(a, tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            compare(x, y, f"{where}[{i}]")
    elif isinstance(b, np.ndarray) and b.dtype == object:
        assert isinstance(a, np.ndarray) and a.dtype == object and a.shape == b.shape, where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            compare(x, y, f"{where}[{i}]")
    elif isinstance(b, (np.ndarray, np.generic)):
        a = np.asarray(a)
        assert (a.dtype, a.shape) == (b.dtype, b.shape), (where, a.dtype, a.shape, b.dtype, b.shape)
        assert a.tobytes() == np.asarray(b).tobytes(), (where, a, b)
    elif "final_obs" in where and type(b) is int:
        # A final observation comes back in its space's array form: a Discrete leaf as np.int64.
        assert isinstance(a, np.int64) and a == b, (where, a, b)
    else:
        assert type(a) is type(b) and a == b, (where, a, b)


def env_info(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k not in ("episode_ids", "completed_episodes")}


def drive(remote: Any, local: Any, mode: AutoresetMode, steps: int, seed: int) -> int:
    """Run both side by side with seeded actions and masked resets; the number of masked resets."""
    rng = np.random.default_rng(seed)
    got, want = remote.reset(seed=seed), local.reset(seed=seed)
    compare(got[0], want[0], "reset obs")
    compare(env_info(got[1]), want[1], "reset info")
    masked = 0
    for t in range(steps):
        actions = local.action_space.sample() if t == 0 else rng_actions(local, rng)
        got, want = remote.step(actions), local.step(actions)
        for name, x, y in zip(("obs", "rewards", "terminated", "truncated"), got[:4], want[:4], strict=True):
            compare(x, y, f"step {t} {name}")
        compare(env_info(got[4]), want[4], f"step {t} info")
        done = want[2] | want[3]
        if mode == AutoresetMode.DISABLED and done.any() or t % 17 == 16:
            mask = done.copy() if done.any() else rng.random(N) < 0.5
            if not mask.any():
                mask[int(rng.integers(0, N))] = True
            seeds = [int(s) for s in rng.integers(0, 10_000, N)]
            got = remote.reset(seed=seeds, options={"reset_mask": mask.copy()})
            want = local.reset(seed=seeds, options={"reset_mask": mask.copy()})
            compare(got[0], want[0], f"masked reset {t} obs")
            compare(env_info(got[1]), want[1], f"masked reset {t} info")
            masked += 1
    return masked


def rng_actions(local: Any, rng: np.random.Generator) -> Any:
    space = local.single_action_space
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(0, space.n, N)
    return rng.uniform(-1, 1, (N, *space.shape)).astype(space.dtype)


MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED]


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_cartpole_trajectories_match_sync_vector_env(serve, mode: AutoresetMode, workers: int) -> None:
    served = serve(
        "CartPole-v1", num_envs=N, workers=workers, autoreset_mode=mode.value, max_episode_steps=15
    )
    remote = served.client(rnp.RemoteVectorEnv)
    assert remote.fast_path and remote.autoreset_mode == mode.value
    local = gym.vector.SyncVectorEnv(
        [lambda: gym.make("CartPole-v1", max_episode_steps=15)] * N, autoreset_mode=mode
    )
    try:
        assert drive(remote, local, mode, 120, seed=3) > 0
    finally:
        local.close()


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_dict_image_observations_and_info_match(serve, mode: AutoresetMode) -> None:
    served = serve(DictImageEnv, num_envs=N, workers=2, autoreset_mode=mode.value)
    remote = served.client(rnp.RemoteVectorEnv)
    assert remote.fast_path
    local = gym.vector.SyncVectorEnv([DictImageEnv] * N, autoreset_mode=mode)
    try:
        drive(remote, local, mode, 40, seed=11)
        if mode == AutoresetMode.SAME_STEP:
            # The Gymnasium idiom works on what the client received.
            remote.reset(seed=0)
            for _ in range(12):
                _, _, term, trunc, info = remote.step(np.zeros((N, 2), np.float32))
                if (term | trunc).any():
                    finals = info["final_obs"][info["_final_obs"]]
                    assert len(finals) == int((term | trunc).sum())
                    assert all(f["image"].shape == (6, 5, 3) for f in finals)
                    break
            else:
                pytest.fail("no episode ended")
    finally:
        local.close()


def test_int_seed_gives_lane_i_seed_plus_i(serve) -> None:
    served = serve("CartPole-v1", num_envs=3, workers=2)
    remote = served.client(rnp.RemoteVectorEnv)
    obs, _ = remote.reset(seed=40)
    for lane in range(3):
        single = gym.make("CartPole-v1")
        want, _ = single.reset(seed=40 + lane)
        compare(obs[lane], want, f"lane {lane}")
        single.close()


def test_send_recv_returns_fast_lanes_first_and_loses_nothing(serve) -> None:
    served = serve(SlowLaneEnv, num_envs=N, workers=3)
    env = served.client(rnp.RemoteVectorEnv)
    env.reset(seed=[1000, 1, 2, 3, 4, 5], options={"delay": 0.8})  # lane 0 (worker 0) is slow
    seen: list[int] = []
    env.send(np.ones(N, dtype=np.int64))
    start = time.monotonic()
    obs, rewards, term, trunc, info, ids = env.recv(min_envs=1, timeout=10)
    assert time.monotonic() - start < 0.6, "the fast lanes waited for the slow one"
    assert 0 not in ids.tolist() and set(ids.tolist()) <= {2, 3, 4, 5}
    assert obs.shape == (len(ids),) and rewards.dtype == np.float64 and term.dtype == np.bool_
    assert info["episode_ids"] and info["completed_episodes"] == 0
    # Each fast lane goes again as soon as it is back, while lane 0 is still stepping.
    sent_twice: set[int] = set()
    while True:
        seen += ids.tolist()
        again = [i for i in ids.tolist() if i >= 2 and i not in sent_twice]
        if again:
            env.send(np.zeros(len(again), dtype=np.int64), env_ids=again)
            sent_twice.update(again)
        if not env._lanes.pending:
            break
        _, _, _, _, _, ids = env.recv(min_envs=1, timeout=10)
    # Every lane sent came back exactly once per send: nothing lost, nothing twice.
    assert sorted(seen) == sorted([0, 1, *range(2, N), *range(2, N)])
    assert seen.index(0) > seen.index(2)
    with pytest.raises(ValueError, match="nothing sent"):
        env.recv()
    # A full step after send/recv works, and the slow lane is still slow only for itself.
    obs, *_ = env.step(np.zeros(N, dtype=np.int64))
    assert obs.shape == (N,)


def test_send_recv_staged_sends_to_a_busy_worker(serve) -> None:
    served = serve(SlowLaneEnv, num_envs=4, workers=1)
    env = served.client(rnp.RemoteVectorEnv)
    env.reset(seed=[1000, 1, 2, 3], options={"delay": 0.3})
    env.send(np.array([1]), env_ids=[0])
    env.send(np.array([1, 0]), env_ids=[3, 2])  # the worker is busy: staged, sent when it is done
    got: list[int] = []
    obs_by_lane: dict[int, int] = {}
    while len(got) < 3:
        obs, _, _, _, _, ids = env.recv(min_envs=1, timeout=10)
        for o, i in zip(obs.tolist(), ids.tolist(), strict=True):
            obs_by_lane[i] = o
        got += ids.tolist()
    assert sorted(got) == [0, 2, 3] and obs_by_lane == {0: 1, 3: 1, 2: 0}


def test_render_env_index_returns_that_lanes_frame(serve) -> None:
    served = serve(DictImageEnv, num_envs=3, workers=2)
    env = served.client(rnp.RemoteVectorEnv)
    env.reset(seed=5)
    env.step(np.zeros((3, 2), np.float32))
    frames = []
    for lane in range(3):
        local = DictImageEnv()
        local.reset(seed=5 + lane)
        local.step(np.zeros(2, np.float32))
        frame = env.render(env_index=lane)
        compare(frame, local.render(), f"frame of lane {lane}")
        frames.append(frame.tobytes())
    assert len(set(frames)) > 1  # the lanes differ (their episode lengths), so the index matters
    with pytest.raises(ValueError, match="out of range"):
        env.render(env_index=3)


def test_step_async_step_wait_on_fast_and_sync_endpoints(serve) -> None:
    fast = serve("CartPole-v1", num_envs=2, workers=1).client(rnp.RemoteVectorEnv)
    sync = serve("CartPole-v1", num_envs=2, vectorization_mode="sync").client(rnp.RemoteVectorEnv)
    assert fast.fast_path and not sync.fast_path
    for env in (fast, sync):
        with pytest.raises(ValueError, match="no step in flight"):
            env.step_wait()
        env.reset(seed=1)
        env.step_async(np.array([1, 0]))
        with pytest.raises(ValueError, match="already in flight"):
            env.step_async(np.array([1, 0]))
        obs, rewards, term, trunc, info = env.step_wait(timeout=10)
        assert obs.shape == (2, 4) and rewards.tolist() == [1.0, 1.0] and "episode_ids" in info
    with pytest.raises(NotImplementedError, match="fast path"):
        sync.send(np.array([1, 0]))


def test_one_handle_per_batch_and_nothing_through_the_session(serve) -> None:
    served = serve("CartPole-v1", num_envs=4, workers=2)
    env = served.client(rlmesh.RemoteVectorEnv)  # Tensor leaves: zero-copy views of the batch
    lanes = env._lanes
    rid = env._conn._rid
    env.reset(seed=0)
    held = []
    start, end = lanes.segment.address, lanes.segment.address + lanes.segment.size
    for t in range(10):
        obs, rewards, term, trunc, _ = env.step([1, 0, 1, 0])
        assert isinstance(obs, rlmesh.Tensor) and obs.shape == [4, 4]
        # The observation is the batch buffer itself, inside the session segment, while
        # a leased buffer is free; once all K are held, the step's observations are copied.
        assert (start <= obs.address < end) == (t < lanes.layout.buffers)
        held.append((obs, bytes(memoryview(obs))))
    # No request crossed the session for 11 batches, and each batch was one buffer (one handle).
    assert env._conn._rid == rid
    assert lanes.batches == 11
    # The lease rule: a buffer with a live view is never written again (all K held: copies).
    for obs, data in held:
        assert bytes(memoryview(obs)) == data
    assert len({obs.address for obs, _ in held[: lanes.layout.buffers]}) == lanes.layout.buffers


def test_relay_for_clients_off_the_fast_path_matches(serve) -> None:
    served = serve("CartPole-v1", "tcp-inline", num_envs=3, workers=2)
    remote = served.client(rnp.RemoteVectorEnv)
    assert not remote.fast_path and remote.data_plane == "inline"
    local = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 3)
    try:
        got, want = remote.reset(seed=9), local.reset(seed=9)
        compare(got[0], want[0], "reset")
        for t in range(40):
            actions = np.array([t % 2, 1, 0])
            got, want = remote.step(actions), local.step(actions)
            for x, y in zip(got[:4], want[:4], strict=True):
                compare(x, y, f"step {t}")
    finally:
        local.close()


def test_bad_input_gives_clear_errors(serve) -> None:
    env = serve("CartPole-v1", num_envs=3, workers=1).client(rnp.RemoteVectorEnv)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="expected 3 batched values, got 2"):
        env.step(np.array([0, 1]))
    with pytest.raises(TypeError):
        env.step(np.array([0.5, 1.0, 0.0]))
    with pytest.raises(ValueError, match="out of range"):
        env.send(np.array([0]), env_ids=[3])
    with pytest.raises(ValueError, match="twice"):
        env.send(np.array([0, 1]), env_ids=[1, 1])
    with pytest.raises(ValueError, match="nothing sent"):
        env.recv()
    with pytest.raises(ValueError, match="length must match"):
        env.reset(seed=[1, 2])
    with pytest.raises(TypeError, match="reset_mask"):
        env.reset(options={"reset_mask": np.array([1, 0, 1])})
    with pytest.raises(ValueError, match="at least one True"):
        env.reset(options={"reset_mask": np.zeros(3, dtype=bool)})
    env.send(np.array([1]), env_ids=[2])
    with pytest.raises(ValueError, match="recv"):
        env.step(np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="not received"):
        env.send(np.array([1]), env_ids=[2])
    _, _, _, _, _, ids = env.recv(timeout=10)
    assert ids.tolist() == [2]
    # Still usable after all that.
    obs, *_ = env.step(np.array([0, 1, 0]))
    assert obs.shape == (3, 4)


def test_a_lambda_factory_is_refused_for_async_and_served_sync_by_default(serve) -> None:
    with pytest.raises(TypeError, match="module-level factory"):
        rlmesh.EnvServer(lambda: TinyEnv(), "tcp://127.0.0.1:0", num_envs=2, vectorization_mode="async")
    served = serve(lambda: TinyEnv(), num_envs=2)  # not importable by reference: the sync path
    env = served.client(rlmesh.RemoteEnv)
    assert not hasattr(env, "fast_path")


def test_forged_batch_handles_are_refused() -> None:
    from rlmesh.spaces import Box, Discrete
    from rlmesh.specs import EnvContract

    layout = Layout.build(EnvContract("X-v0", Box(0, 1, (3,), "float32"), Discrete(2), num_envs=4), 2)
    assert layout.check_batch(0, layout.size)[0] == layout.buffer(0)
    for bad in (-1, layout.buffers + 1, 2**32 - 1):
        with pytest.raises(InvalidHandle):
            layout.check_batch(bad, layout.size)
    with pytest.raises(InvalidHandle):
        layout.check_batch(layout.buffers, layout.size - 64)  # the buffer lies past the segment's end
    data = layout.to_dict()
    assert Layout.from_dict(data, layout.size) == layout
    with pytest.raises(ProtocolError):
        Layout.from_dict({**data, "b_info": layout.buffer_size}, layout.size)
    with pytest.raises(ProtocolError):
        Layout.from_dict(data, layout.size - 1)
    with pytest.raises(ProtocolError):
        Layout.from_dict({**data, "groups": [[0, 2], [3, 4]]}, layout.size)


def test_jax_observations_are_the_batch_buffer(serve) -> None:
    jax = pytest.importorskip("jax")
    import rlmesh.jax as rj

    served = serve("CartPole-v1", num_envs=4, workers=2)
    env = served.client(rj.RemoteVectorEnv)
    assert env.fast_path
    env.reset(seed=3)
    obs, rewards, term, _, _ = env.step(np.zeros(4, dtype=np.int64))
    assert isinstance(obs, jax.Array) and obs.shape == (4, 4) and term.dtype == np.bool_
    segment = env._lanes.segment
    pointer = obs.unsafe_buffer_pointer()
    assert segment.address <= pointer < segment.address + segment.size  # zero-copy
    local = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 4)
    local.reset(seed=3)
    want, *_ = local.step(np.zeros(4, dtype=np.int64))
    assert np.asarray(obs).tobytes() == want.tobytes()
    local.close()


def test_disabled_autoreset_refuses_a_done_lane_until_it_is_reset(serve) -> None:
    served = serve(TinyEnv, num_envs=2, workers=1, autoreset_mode="Disabled")  # episodes of 3 steps
    env = served.client(rnp.RemoteVectorEnv)
    env.reset(seed=0)
    for _ in range(3):
        _, _, term, _, _ = env.step(np.array([1, 1]))
    assert term.tolist() == [True, True]
    with pytest.raises(RemoteError, match="lane 0 ended its episode and autoreset is Disabled") as caught:
        env.step(np.array([1, 1]))
    assert caught.value.remote_type == "AssertionError"  # as SyncVectorEnv's assert
    obs, _ = env.reset(options={"reset_mask": np.array([True, True])})
    assert obs.tolist() == [0, 0]
    _, rewards, term, _, _ = env.step(np.array([1, 0]))
    assert rewards.tolist() == [1.0, 1.0] and term.tolist() == [False, False]


def test_make_kwargs_that_are_not_data_stay_in_process(serve) -> None:
    with pytest.raises(TypeError, match="msgpack"):
        rlmesh.EnvServer(
            "CartPole-v1", "tcp://127.0.0.1:0", num_envs=2, vectorization_mode="async", x=object()
        )
    from tests.envs import make_count_env

    served = serve(make_count_env, num_envs=2, make_kwargs={})
    assert served.client(rnp.RemoteVectorEnv).fast_path


def test_nested_actions_reach_each_lanes_env_as_sync_vector_env_hands_them(serve) -> None:
    # A Dict action holding a Tuple: each worker rebuilds every lane's action tree from the batch.
    served = serve(ComboActionEnv, num_envs=4, workers=2)
    env = served.client(rnp.RemoteVectorEnv)
    assert env.fast_path
    local = gym.vector.SyncVectorEnv([ComboActionEnv] * 4)
    env.reset(seed=1)
    local.reset(seed=1)
    local.action_space.seed(7)
    for _ in range(6):  # past the truncation at 4 steps (NextStep autoreset)
        actions = local.action_space.sample()
        got, want = env.step(actions), local.step(actions)
        compare(got[0], want[0], "observations")
        assert got[1].tolist() == want[1].tolist() and got[3].tolist() == want[3].tolist()
    local.close()
