"""rlmesh.gymnasium: served envs as true Gymnasium envs, checked against local twins.

Every test serves a real Gymnasium env with an in-process ``EnvServer`` on a
Unix socket (shared memory) and drives the remote face next to the same env
built locally: the env checker must say no more about the remote env than about
the local one, Gymnasium's wrappers and vector envs must accept it, and for
fixed seeds every observation, reward, flag and info must be bit-identical to
the local run, single and vector, in every autoreset mode.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import rlmesh
import rlmesh.gymnasium as rg
import rlmesh.numpy as rnp
from rlmesh.errors import ClosedError
from tests.conftest import run_python

pytestmark = pytest.mark.timeout(120)


class DictObsEnv(gym.Env[dict[str, Any], int]):
    """A small env with Dict observations (a Box, a Discrete and a MultiBinary), seeded by reset.

    It renders ``rgb_array`` frames drawn from its state (CartPole's need pygame).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 12}

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Dict(
            {
                "pos": gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
                "mode": gym.spaces.Discrete(4),
                "bits": gym.spaces.MultiBinary(5),
            }
        )
        self.action_space = gym.spaces.Discrete(3)
        self._t = 0

    def _obs(self) -> dict[str, Any]:
        self._last = {
            "pos": self.np_random.uniform(-1, 1, 3).astype(np.float32),
            "mode": int(self.np_random.integers(4)),
            "bits": self.np_random.integers(0, 2, 5).astype(np.int8),
        }
        return self._last

    def render(self) -> Any:
        if self.render_mode != "rgb_array":
            return None
        frame = np.zeros((16, 24, 3), dtype=np.uint8)
        frame[..., 0] = np.uint8(127 * (self._last["pos"][0] + 1))
        frame[:, : 4 * self._last["mode"] + 1, 1] = 200
        frame[: self._t + 1, :, 2] = 255
        return frame

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        self._t += 1
        return self._obs(), float(action) * 0.5, self._t >= 8, False, {"t": self._t}


PAINT_ID = "RlmeshTest/Paint-v0"
if PAINT_ID not in gym.registry:
    gym.register(PAINT_ID, entry_point=DictObsEnv, max_episode_steps=6, reward_threshold=3.0)


def same(a: Any, b: Any) -> bool:
    """Deep equality that tells dtypes, shapes and bits apart (object arrays element by element)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return False
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.dtype == object:
            return all(same(x, y) for x, y in zip(a.ravel(), b.ravel(), strict=True))
        return a.tobytes() == b.tobytes()
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        # A reward a wrapper computed with numpy (np.float64, a float subclass)
        # crosses as a Python float: the same 64 bits.
        return np.float64(a).tobytes() == np.float64(b).tobytes()
    if isinstance(a, np.generic) or isinstance(b, np.generic):
        return type(a) is type(b) and np.asarray(a).tobytes() == np.asarray(b).tobytes()
    return type(a) is type(b) and a == b


@pytest.fixture
def served(tmp_path: Path) -> Any:
    """served(factory) -> address of an in-process EnvServer over a Unix socket; shut down after."""
    servers: list[rlmesh.EnvServer] = []

    def make(factory: Callable[[], Any]) -> str:
        server = rlmesh.EnvServer(factory, f"unix://{tmp_path}/env{len(servers)}.sock").start()
        servers.append(server)
        return server.address

    yield make
    for server in servers:
        server.shutdown()


def checker_warnings(env: Any, **kwargs: bool) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, **kwargs)
    return sorted({str(w.message) for w in caught})


@pytest.mark.parametrize(
    ("name", "factory"),
    [
        ("CartPole", lambda: gym.make("CartPole-v1").unwrapped),
        ("Pendulum", lambda: gym.make("Pendulum-v1").unwrapped),
        ("Dict", lambda: DictObsEnv(render_mode="rgb_array")),
    ],
)
def test_check_env_says_no_more_than_about_the_local_env(served: Any, name: str, factory: Any) -> None:
    """The remote env passes the whole check (render and close checks included) with no more warnings.

    The local twin skips the render check: CartPole's and Pendulum's declared
    modes need pygame, and its spec would make them. Their inherent warnings
    (infinite bounds, an unnormalised action Box) are the expected ones.
    """
    address = served(factory)
    local = factory()
    expected = checker_warnings(local, skip_render_check=True)
    local.close()
    env = rg.RemoteEnv(address)
    try:
        assert isinstance(env, gym.Env)
        assert env.client.data_plane == "shm"
        assert checker_warnings(env) == expected
        made = gym.make(rg.ENV_ID, address=address)
        assert checker_warnings(made.unwrapped) == expected
        made.close()
    finally:
        env.close()


def rollout(env: Any, seed: int, steps: int, action_seed: int = 3) -> list[Any]:
    """Reset with ``seed``, step seeded actions, reset again after each episode; record everything."""
    env.action_space.seed(action_seed)
    records: list[Any] = [env.reset(seed=seed)]
    for _ in range(steps):
        step = env.step(env.action_space.sample())
        records.append(step)
        if np.ndim(step[2]) == 0 and (step[2] or step[3]):  # vector envs reset themselves
            records.append(env.reset())
    return records


WRAPPERS: dict[str, Callable[[Any], Any]] = {
    "none": lambda env: env,
    "TimeLimit": lambda env: gym.wrappers.TimeLimit(env, max_episode_steps=7),
    "NormalizeObservation": gym.wrappers.NormalizeObservation,
    "RecordEpisodeStatistics": gym.wrappers.RecordEpisodeStatistics,
    "FrameStackObservation": lambda env: gym.wrappers.FrameStackObservation(env, stack_size=3),
}


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_wrappers_on_the_remote_env_replay_the_local_env(served: Any, wrapper: str) -> None:
    address = served(lambda: gym.make("CartPole-v1"))
    wrap = WRAPPERS[wrapper]
    local = wrap(gym.make("CartPole-v1"))
    remote = wrap(rg.RemoteEnv(address))
    try:
        expected = rollout(local, seed=11, steps=60)
        got = rollout(remote, seed=11, steps=60)
        for want, have in zip(expected, got, strict=True):
            if wrapper == "RecordEpisodeStatistics" and "episode" in want[-1]:
                # Episode time is wall clock; everything else must match.
                want[-1]["episode"].pop("t")
                have[-1]["episode"].pop("t")
            assert same(want, have)
        if wrapper == "RecordEpisodeStatistics":
            assert len(remote.return_queue) == len(local.return_queue) > 0
    finally:
        local.close()
        remote.close()


def test_dict_observations_replay_the_local_env(served: Any) -> None:
    address = served(DictObsEnv)
    local, remote = DictObsEnv(), rg.RemoteEnv(address)
    try:
        assert same(rollout(local, seed=5, steps=20), rollout(remote, seed=5, steps=20))
    finally:
        remote.close()


def test_sync_vector_env_of_remote_envs_replays_a_local_one(served: Any) -> None:
    address = served(lambda: gym.make("CartPole-v1", max_episode_steps=15))
    local = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1", max_episode_steps=15)] * 3)
    sync = gym.vector.SyncVectorEnv([lambda: rg.RemoteEnv(address)] * 3)
    try:
        assert same(rollout(sync, seed=2, steps=40), rollout(local, seed=2, steps=40))
    finally:
        local.close()
        sync.close()


def test_async_vector_env_of_remote_envs_replays_a_local_one(tmp_path: Path) -> None:
    # In a fresh interpreter: AsyncVectorEnv starts worker processes (and, with
    # spawn, multiprocessing's resource tracker, which outlives the env).
    out = run_python(
        f"""
import functools, gymnasium as gym, numpy as np, rlmesh, rlmesh.gymnasium as rg
from tests.integration.test_gymnasium_face import rollout, same
server = rlmesh.EnvServer(lambda: gym.make("CartPole-v1", max_episode_steps=15),
                          "unix://{tmp_path}/a.sock").start()
local = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1", max_episode_steps=15)] * 3)
remote = gym.vector.AsyncVectorEnv([functools.partial(rg.RemoteEnv, server.address)] * 3, context="spawn")
print(same(rollout(remote, seed=2, steps=40), rollout(local, seed=2, steps=40)))
remote.close(); local.close(); server.shutdown()
"""
    )
    assert out.split() == ["True"]


def vector_factory(mode: AutoresetMode) -> Callable[[], Any]:
    return lambda: gym.vector.SyncVectorEnv(
        [lambda: gym.make("CartPole-v1", max_episode_steps=9)] * 3, autoreset_mode=mode
    )


def vector_rollout(env: Any, mode: AutoresetMode, steps: int, split: bool) -> list[Any]:
    """Seeded actions; with autoreset disabled, every lane is reset once one ends."""
    rng = np.random.default_rng(4)
    records: list[Any] = [env.reset(seed=[3, 4, 5])]
    for _ in range(steps):
        actions = rng.integers(0, 2, size=3)
        if split:
            env.step_async(actions)
            step = env.step_wait()
        else:
            step = env.step(actions)
        records.append(step)
        if mode == AutoresetMode.DISABLED and (step[2] | step[3]).any():
            records.append(env.reset())
    return records


@pytest.mark.parametrize("mode", list(AutoresetMode), ids=lambda m: m.value)
def test_remote_vector_env_replays_the_local_vector_env(served: Any, mode: AutoresetMode) -> None:
    address = served(vector_factory(mode))
    local = vector_factory(mode)()
    expected = vector_rollout(local, mode, 40, split=False)
    local.close()
    with rg.RemoteVectorEnv(address) as remote:
        assert isinstance(remote, gym.vector.VectorEnv)
        assert remote.metadata["autoreset_mode"] is mode
        assert remote.single_observation_space == local.single_observation_space
        assert remote.observation_space == local.observation_space
        assert remote.action_space == local.action_space
        assert same(vector_rollout(remote, mode, 40, split=False), expected)
        assert same(vector_rollout(remote, mode, 40, split=True), expected)
        if mode == AutoresetMode.SAME_STEP:
            finals = [r[-1] for r in expected if "final_obs" in r[-1]]
            assert finals, "the rollout must cross an autoreset"


@pytest.mark.parametrize("mode", list(AutoresetMode), ids=lambda m: m.value)
def test_remote_vector_env_over_the_fast_path_replays_the_local_vector_env(
    tmp_path: Path, mode: AutoresetMode
) -> None:
    local = vector_factory(mode)()
    expected = vector_rollout(local, mode, 40, split=False)
    local.close()
    server = rlmesh.EnvServer(
        "CartPole-v1",
        f"unix://{tmp_path}/fast.sock",
        num_envs=3,
        vectorization_mode="async",
        workers=2,
        autoreset_mode=mode.value,
        max_episode_steps=9,
    ).start()
    try:
        with rg.RemoteVectorEnv(server.address) as remote:
            assert remote.metadata["autoreset_mode"] is mode
            assert same(vector_rollout(remote, mode, 40, split=False), expected)
            assert same(vector_rollout(remote, mode, 40, split=True), expected)
    finally:
        server.shutdown()


def test_step_async_and_step_wait_enforce_their_order(served: Any) -> None:
    address = served(vector_factory(AutoresetMode.NEXT_STEP))
    with rg.RemoteVectorEnv(address) as env:
        env.reset(seed=0)
        with pytest.raises(gym.error.NoAsyncCallError):
            env.step_wait()
        env.step_async(np.zeros(3, dtype=np.int64))
        with pytest.raises(gym.error.AlreadyPendingCallError):
            env.step_async(np.zeros(3, dtype=np.int64))
        with pytest.raises(gym.error.AlreadyPendingCallError):
            env.step(np.zeros(3, dtype=np.int64))
        obs, *_ = env.step_wait()
        assert obs.shape == (3, 4)


def test_vector_wrappers_count_and_normalize(served: Any) -> None:
    address = served(vector_factory(AutoresetMode.NEXT_STEP))
    local = gym.wrappers.vector.RecordEpisodeStatistics(
        gym.wrappers.vector.NormalizeObservation(vector_factory(AutoresetMode.NEXT_STEP)())
    )
    remote = gym.wrappers.vector.RecordEpisodeStatistics(
        gym.wrappers.vector.NormalizeObservation(rg.RemoteVectorEnv(address))
    )
    try:
        for env in (local, remote):
            env.reset(seed=1)
            for _ in range(60):
                env.step(np.ones(3, dtype=np.int64))
        assert len(remote.return_queue) == len(local.return_queue) > 3
        assert list(remote.return_queue) == list(local.return_queue)
        assert np.array_equal(remote.env.obs_rms.mean, local.env.obs_rms.mean)
    finally:
        local.close()
        remote.close()


def test_a_served_make_stack_keeps_its_spec_metadata_and_frames(served: Any) -> None:
    def stack() -> Any:
        env = gym.make(PAINT_ID, render_mode="rgb_array")
        return gym.wrappers.ClipReward(gym.wrappers.RecordEpisodeStatistics(env), 0.0, 0.6)

    address = served(stack)
    local = stack()
    remote = rg.RemoteEnv(address)
    try:
        assert remote.spec is not None
        assert remote.spec.id == local.spec.id == PAINT_ID
        assert remote.spec.reward_threshold == local.spec.reward_threshold == 3.0
        assert remote.render_mode == local.render_mode == "rgb_array"
        assert remote.metadata == local.metadata == {"render_modes": ["rgb_array"], "render_fps": 12}
        for env in (local, remote):
            env.reset(seed=9)
        frames = 0
        for action in [0, 1, 2, 2, 1, 0, 2]:
            want_step, got_step = local.step(action), remote.step(action)
            want_step[-1].pop("episode", None)  # wall-clock time inside
            got_step[-1].pop("episode", None)
            assert same(got_step, want_step)
            want, got = local.render(), remote.render()
            assert got.dtype == np.uint8 and got.shape == want.shape == (16, 24, 3)
            assert np.array_equal(got, want)
            frames += 1
            if want_step[2] or want_step[3]:
                assert want_step[3]  # the served TimeLimit cut the episode at 6 steps
                break
        assert frames == 6
        # The spec recreates a connection to the same endpoint.
        again = remote.spec.make()
        assert again.unwrapped.env_contract.id == PAINT_ID
        again.close()
        with pytest.raises(ValueError, match="render_mode='rgb_array'"):
            rg.RemoteEnv(address, render_mode="human")
    finally:
        local.close()
        remote.close()


def test_registered_id_makes_single_and_vector_envs_with_wrappers(served: Any) -> None:
    single = served(lambda: gym.make("CartPole-v1"))
    vector = served(vector_factory(AutoresetMode.NEXT_STEP))
    env = gym.make(rg.ENV_ID, address=single, max_episode_steps=4)
    try:
        assert isinstance(env.unwrapped, rg.RemoteEnv)
        env.reset(seed=0)
        flags = [env.step(0)[3] for _ in range(4)]
        assert flags == [False, False, False, True]  # make's TimeLimit applies
    finally:
        env.close()
    envs = gym.make_vec(rg.ENV_ID, num_envs=3, address=vector)
    try:
        assert isinstance(envs, rg.RemoteVectorEnv) and envs.spec.id == rg.ENV_ID
        assert envs.reset(seed=0)[0].shape == (3, 4)
    finally:
        envs.close()
    with pytest.raises(ValueError, match="serves 3 envs; pass num_envs=3"):
        gym.make_vec(rg.ENV_ID, num_envs=2, address=vector)
    # A single-env endpoint gives each lane its own connection (and env).
    envs = gym.make_vec(rg.ENV_ID, num_envs=2, address=single)
    try:
        assert isinstance(envs, gym.vector.SyncVectorEnv)
        assert envs.reset(seed=0)[0].shape == (2, 4)
    finally:
        envs.close()
    envs = gym.make_vec(
        rg.ENV_ID,
        num_envs=2,
        vectorization_mode="sync",
        wrappers=[gym.wrappers.RecordEpisodeStatistics],
        address=single,
    )
    try:
        assert isinstance(envs.envs[0], gym.wrappers.RecordEpisodeStatistics)
    finally:
        envs.close()


def test_the_module_colon_id_form_imports_rlmesh_gymnasium(tmp_path: Path) -> None:
    out = run_python(
        f"""
import sys, gymnasium, rlmesh
server = rlmesh.EnvServer("CartPole-v1", "unix://{tmp_path}/c.sock").start()
assert "rlmesh.gymnasium" not in sys.modules
env = gymnasium.make("rlmesh.gymnasium:rlmesh/Remote-v0", address=server.address)
obs, info = env.reset(seed=0)
print(type(env.unwrapped).__module__, obs.dtype, env.unwrapped.client.data_plane)
env.close()
server.shutdown()
"""
    )
    assert out.split() == ["rlmesh.gymnasium", "float32", "shm"]


def test_close_is_idempotent_and_use_after_close_raises(served: Any) -> None:
    address = served(lambda: gym.make("CartPole-v1"))
    env = rg.RemoteEnv(address)
    env.reset(seed=0)
    env.close()
    env.close()
    with pytest.raises(ClosedError):
        env.step(0)
    venv = rg.RemoteVectorEnv(served(vector_factory(AutoresetMode.NEXT_STEP)))
    venv.close()
    venv.close()
    assert venv.closed
    with pytest.raises(ClosedError):
        venv.reset()


def test_an_env_never_closed_detaches_with_a_resource_warning(served: Any) -> None:
    address = served(lambda: gym.make("CartPole-v1"))
    env = rg.RemoteEnv(address)
    env.reset(seed=0)
    with pytest.warns(ResourceWarning, match="never closed"):
        del env
        gc.collect()
    # The server took the detach: a new client is served at once.
    with rnp.RemoteEnv(address) as client:
        client.reset(seed=0)


def test_infos_lose_the_clients_keys_but_keep_an_envs_own(served: Any) -> None:
    from tests.envs import CountEnv

    address = served(lambda: CountEnv(limit=2))
    with rg.RemoteEnv(address) as env:
        _, info = env.reset(seed=1)
        assert info["episode_ids"] == "env-owned"  # the env's own key of that name stays
        assert info["custom"] == [0, 1, 2]  # a NumPy array in an info arrives as a list
        assert env.step(0)[-1] == {"t": 1}
        assert env.step(0)[-1] == {"t": 2}  # the episode ended: no completed_episodes either
    with rnp.RemoteEnv(address) as client:
        client.reset(seed=1)
        client.step(0)
        assert client.step(0)[-1]["completed_episodes"] == 1  # the NumPy client keeps them


@pytest.mark.parametrize(
    ("face", "numpy_client"), [(rg.RemoteEnv, rnp.RemoteEnv), (rg.RemoteVectorEnv, rnp.RemoteVectorEnv)]
)
def test_the_faces_take_the_numpy_clients_keywords(face: Any, numpy_client: Any) -> None:
    import inspect

    def keywords(cls: Any) -> dict[str, Any]:
        params = inspect.signature(cls.__init__).parameters
        return {name: p.default for name, p in params.items() if name not in ("self", "render_mode")}

    assert keywords(face) == keywords(numpy_client)
