"""Model.run on vector endpoints: every episode seeded and counted once, as on a single env.

The reference is always the single-env run of the same deterministic policy:
CartPole's episode length depends on the seed, so a lane that ran an episode
with the wrong seed, or counted a step twice, gives a different result.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import rlmesh
import rlmesh.numpy as rnp
from rlmesh import RunHooks
from rlmesh.errors import RemoteError
from tests.conftest import run_python
from tests.envs import TinyVectorEnv

pytestmark = pytest.mark.timeout(120)

N = 4
MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED]


def lane_policy(observations: np.ndarray) -> np.ndarray:
    """Push towards the pole's lean: CartPole falls after a seed-dependent number of steps."""
    return (observations[:, 2] > 0).astype(np.int64)


def single_policy(observation: np.ndarray) -> int:
    return int(observation[2] > 0)


def outcome(result: rlmesh.RunResult) -> list[tuple[Any, ...]]:
    return [(e.index, e.seed, e.steps, e.reward, e.terminated, e.truncated) for e in result.episodes]


def reference(seeds: list[int], **caps: Any) -> list[tuple[Any, ...]]:
    """The same episodes on one CartPole, one after the other."""
    return outcome(rnp.Model(single_policy).run("CartPole-v1", seeds=seeds, **caps))


class SeedSpy(gym.vector.SyncVectorEnv):
    """A SyncVectorEnv of CartPoles that records what each reset received."""

    def __init__(self, mode: AutoresetMode, num_envs: int = N) -> None:
        super().__init__([lambda: gym.make("CartPole-v1") for _ in range(num_envs)], autoreset_mode=mode)
        self.resets: list[tuple[Any, Any]] = []

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> Any:
        mask = None if options is None else options.get("reset_mask")
        self.resets.append((seed, mask))
        return super().reset(seed=seed, options=options)

    def seeds_used(self) -> list[int | None]:
        """The seed each lane reset received, over every reset (lanes outside a mask excluded)."""
        used: list[int | None] = []
        for seed, mask in self.resets:
            lanes = seed if isinstance(seed, list) else [seed] * self.num_envs
            used += [s for i, s in enumerate(lanes) if mask is None or mask[i]]
        return used


class Hooks(RunHooks):
    def __init__(self) -> None:
        self.started: list[tuple[int, int | None]] = []
        self.ended: list[int] = []

    def on_episode_start(self, *, episode: int, seed: int | None) -> None:
        self.started.append((episode, seed))

    def on_episode_end(self, result: rlmesh.EpisodeResult) -> None:
        self.ended.append(result.index)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_every_seed_runs_once_in_order_as_on_a_single_env(serve, mode: AutoresetMode) -> None:
    seeds = list(range(3 * N))
    expected = reference(seeds)
    assert len({steps for _, _, steps, *_ in expected}) > 4  # the lengths really depend on the seed
    env = SeedSpy(mode)
    address = serve(env).server.address
    hooks = Hooks()
    result = rnp.Model(lane_policy).run(address, seeds=seeds, hooks=hooks)
    assert outcome(result) == expected
    assert hooks.started == [(i, s) for i, s in enumerate(seeds)]
    assert sorted(hooks.ended) == list(range(len(seeds)))
    # Every seed reached a lane's reset exactly once; no other lane was seeded.
    used = env.seeds_used()
    assert sorted(s for s in used if s is not None) == seeds
    masks = [mask for _, mask in env.resets if mask is not None]
    assert masks and all(m.dtype == bool and m.shape == (N,) for m in masks)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_max_episode_steps_cuts_each_lane_as_on_a_single_env(serve, mode: AutoresetMode) -> None:
    seeds = list(range(3 * N))
    expected = reference(seeds, max_episode_steps=30)
    # Some episodes end by themselves, the others are cut (truncated) at 30 steps.
    assert {(term, trunc) for *_, term, trunc in expected} == {(True, False), (False, True)}
    address = serve(SeedSpy(mode)).server.address
    result = rnp.Model(lane_policy).run(address, seeds=seeds, max_episode_steps=30)
    assert outcome(result) == expected


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_the_worker_fast_path_runs_every_seed_as_a_single_env(serve, mode: AutoresetMode) -> None:
    seeds = list(range(3 * N))
    address = serve("CartPole-v1", num_envs=N, workers=2, autoreset_mode=mode.value).server.address
    model = rnp.Model(lane_policy)
    assert outcome(model.run(address, seeds=seeds)) == reference(seeds)
    cut = model.run(address, seeds=seeds, max_episode_steps=30)
    assert outcome(cut) == reference(seeds, max_episode_steps=30)
    mixed = model.run(address, seeds=[5, 6], max_episodes=7)
    assert outcome(mixed)[:2] == reference([5, 6]) and [e.index for e in mixed.episodes] == list(range(7))


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.DISABLED], ids=lambda m: m.value)
def test_counting_rules_of_a_single_env(serve, mode: AutoresetMode) -> None:
    env = SeedSpy(mode)
    address = serve(env).server.address
    model = rnp.Model(lane_policy)
    # max_episodes past the seeds: the seeded ones first, then unseeded episodes.
    result = model.run(address, seeds=[5, 6, 7, 8, 9, 10], max_episodes=10)
    assert outcome(result)[:6] == reference([5, 6, 7, 8, 9, 10])
    assert [e.index for e in result.episodes] == list(range(10))
    assert [e.seed for e in result.episodes[6:]] == [None] * 4
    assert all(e.steps > 0 and e.terminated for e in result.episodes[6:])
    # max_episodes below the seeds overrides them; fewer episodes than lanes.
    assert outcome(model.run(address, seeds=[3, 4, 5], max_episodes=2)) == reference([3, 4])
    assert outcome(model.run(address, seeds=[6, 7])) == reference([6, 7])
    assert model.run(address, seeds=[]).num_episodes == 0
    unseeded = model.run(address, max_episodes=9)
    assert [e.index for e in unseeded.episodes] == list(range(9)) and unseeded.num_episodes == 9
    single = model.run(address)
    assert single.num_episodes == 1 and single.episodes[0].seed is None


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.DISABLED], ids=lambda m: m.value)
def test_lanes_replay_their_chunks_and_drop_them_at_a_masked_reset(serve, mode: AutoresetMode) -> None:
    def chunks(observations: np.ndarray) -> np.ndarray:
        # Each lane's chunk depends on its own observation only, as on a single env.
        first = (observations[:, 2] > 0).astype(np.int64)
        return np.stack([first, 1 - first, first], axis=1)

    class Chunked(rnp.Model):
        def predict_chunk_batch(self, observations: Any) -> Any:
            return chunks(observations)

    class SingleChunked(rnp.Model):
        def predict_chunk(self, observation: Any) -> Any:
            return chunks(observation[None])[0]

    seeds = list(range(20, 20 + 3 * N))
    expected = outcome(SingleChunked().run("CartPole-v1", seeds=seeds, execution_horizon=3))
    address = serve(SeedSpy(mode)).server.address
    assert outcome(Chunked().run(address, seeds=seeds, execution_horizon=3)) == expected


class DictCartPole(gym.ObservationWrapper[dict[str, Any], np.int64, np.ndarray]):
    """CartPole whose observation is a Dict: the state, and the side the pole leans to."""

    def __init__(self) -> None:
        super().__init__(gym.make("CartPole-v1"))
        self.observation_space = gym.spaces.Dict(
            {"state": self.env.observation_space, "lean": gym.spaces.Discrete(2)}
        )

    def observation(self, observation: np.ndarray) -> dict[str, Any]:
        return {"state": observation, "lean": int(observation[2] > 0)}


def lean_policies(backend: str) -> tuple[Any, Callable[[Any], Any]]:
    """The model class of a backend and a batched policy acting on the ``lean`` leaf."""
    if backend == "plain":
        return rlmesh.Model, lambda obs: [int(v) for v in obs["lean"]]
    if backend == "numpy":
        return rnp.Model, lambda obs: np.asarray(obs["lean"])
    pytest.importorskip("jax")
    import rlmesh.jax as rjax

    return rjax.Model, lambda obs: obs["lean"]


@pytest.mark.parametrize("backend", ["plain", "numpy", "jax"])
def test_every_backend_and_a_dict_space(serve, backend: str) -> None:
    # Disabled autoreset: every episode after the first N starts with a masked reset,
    # whose check compares the untouched lanes' Dict observations in this backend.
    seeds = list(range(40, 40 + 3 * N))
    expected = outcome(rnp.Model(lambda obs: int(obs["lean"])).run(DictCartPole, seeds=seeds))
    served = serve(gym.vector.SyncVectorEnv([DictCartPole] * N, autoreset_mode=AutoresetMode.DISABLED))
    model_class, policy = lean_policies(backend)
    assert outcome(model_class(policy).run(served.server.address, seeds=seeds)) == expected


ASYNC_RUN = """
import json, sys, tempfile
import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
import rlmesh, rlmesh.numpy as rnp
from tests.integration.test_model_vector_seeds import lane_policy, outcome

def factory():
    return gym.make_vec(
        "CartPole-v1", num_envs=2, vectorization_mode="async",
        vector_kwargs={"shared_memory": False, "autoreset_mode": AutoresetMode.NEXT_STEP},
    )

with tempfile.TemporaryDirectory() as tmp, rlmesh.EnvServer(factory, f"unix://{tmp}/env.sock") as server:
    server.start()
    print(json.dumps(outcome(rnp.Model(lane_policy).run(server.address, seeds=json.loads(sys.argv[1])))))
"""


def test_a_seeded_lane_waits_for_its_autoreset_step() -> None:
    # Gymnasium 1.4's AsyncVectorEnv without shared memory keeps a lane's pending
    # NextStep autoreset through a masked reset; the runtime resets a seeded lane
    # only after that step, so its episode is still the single env's. (A fresh
    # interpreter: AsyncVectorEnv forks, and a fork after JAX's import warns.)
    seeds = [11, 12, 13, 14, 15, 16]
    code = ASYNC_RUN.replace("sys.argv[1]", repr(json.dumps(seeds)))
    got = [tuple(row) for row in json.loads(run_python(code, timeout=90))]
    assert got == reference(seeds)


class Endless(gym.Env[np.ndarray, np.int64]):
    """Never ends by itself."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action: Any) -> Any:
        return np.zeros(2, np.float32), 1.0, False, False, {}


def test_max_episode_seconds_cuts_each_lane(serve) -> None:
    def factory() -> gym.vector.VectorEnv:
        return gym.vector.SyncVectorEnv([Endless for _ in range(3)], autoreset_mode=AutoresetMode.NEXT_STEP)

    address = serve(factory).server.address
    result = rnp.Model(lambda obs: np.zeros(len(obs), np.int64)).run(
        address, seeds=[1, 2, 3, 4, 5], max_episode_seconds=0.1
    )
    assert [e.seed for e in result.episodes] == [1, 2, 3, 4, 5]
    for episode in result.episodes:
        assert episode.truncated and not episode.terminated and episode.steps > 1
        assert 0.1 <= episode.duration_s < 5


# -- endpoints that cannot reset single lanes ------------------------------------------------------


class RejectsMask(gym.vector.SyncVectorEnv):
    """A vector env that refuses per-lane resets."""

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> Any:
        if options and "reset_mask" in options:
            raise ValueError("this env resets every lane or none")
        return super().reset(seed=seed, options=options)


class NoOptions(gym.vector.SyncVectorEnv):
    """A vector env whose reset takes no options at all."""

    def reset(self, *, seed: Any = None) -> Any:  # type: ignore[override]
        return super().reset(seed=seed)


def cartpoles(cls: type, mode: AutoresetMode = AutoresetMode.NEXT_STEP) -> Any:
    return lambda: cls([lambda: gym.make("CartPole-v1") for _ in range(N)], autoreset_mode=mode)


@pytest.mark.parametrize("cls", [RejectsMask, NoOptions])
def test_an_endpoint_without_masked_resets_gives_a_clear_error(serve, cls: type) -> None:
    address = serve(cartpoles(cls)).server.address
    model = rnp.Model(lane_policy)
    # Seeding only the first episode of each lane needs no masked reset, nor do fewer seeds than lanes.
    assert outcome(model.run(address, seeds=[0, 1, 2, 3])) == reference([0, 1, 2, 3])
    assert outcome(model.run(address, seeds=[7, 8])) == reference([7, 8])
    with pytest.raises(ValueError, match="cannot reset single lanes") as caught:
        model.run(address, seeds=list(range(2 * N)))
    assert "seed every episode" in str(caught.value)
    assert isinstance(caught.value.__cause__, (RemoteError, ValueError))
    assert 0 < caught.value.partial_result.num_episodes < 2 * N  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="max_episode_steps"):
        model.run(address, seeds=list(range(N)), max_episode_steps=10, max_episodes=N + 1)


def test_an_endpoint_ignoring_the_mask_gives_a_clear_error(serve) -> None:
    # TinyVectorEnv resets every lane whatever the mask says.
    address = serve(TinyVectorEnv(num_envs=3, limit=2)).server.address
    model = rnp.Model(lambda obs: np.full(3, 2))
    with pytest.raises(ValueError, match=r"ignored options\['reset_mask'\]"):
        model.run(address, seeds=[1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"ignored options\['reset_mask'\]"):
        model.run(address, max_episodes=4, max_episode_steps=1)
    # Lanes that all end together reset together, without a mask: that still works.
    result = model.run(address, seeds=[1, 2, 3, 4, 5, 6])
    assert [(e.seed, e.steps) for e in result.episodes] == [(seed, 2) for seed in range(1, 7)]


def test_bad_arguments_fail_before_the_run(serve) -> None:
    address = serve(SeedSpy(AutoresetMode.NEXT_STEP)).server.address
    model = rnp.Model(lane_policy)
    for kwargs in ({"seeds": [-1]}, {"seeds": [1.5]}, {"max_episodes": -1}, {"max_episode_steps": 0}):
        with pytest.raises(ValueError):
            model.run(address, **kwargs)


# -- the mask on the wire -----------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["unix-shm", "tcp-inline"])
def test_the_reset_mask_reaches_a_served_vector_env_as_a_numpy_bool_array(serve, transport: str) -> None:
    env = SeedSpy(AutoresetMode.DISABLED)
    served = serve(env, transport)
    client = served.client(rnp.RemoteVectorEnv)
    first, _ = client.reset(seed=[1, 2, 3, 4])
    obs, _ = client.reset(seed=[9, 0, 0, 9], options={"reset_mask": np.array([True, False, False, True])})
    seed, mask = env.resets[-1]
    assert seed == [9, 0, 0, 9]
    assert type(mask) is np.ndarray and mask.dtype == np.bool_ and mask.tolist() == [True, False, False, True]
    np.testing.assert_array_equal(obs[1:3], first[1:3])  # lanes outside the mask kept their state
    assert not np.array_equal(obs[0], first[0])
    for bad in ([True, False], [1, 0, 0, 1], "yes"):
        with pytest.raises(RemoteError, match="reset_mask"):
            client.reset(options={"reset_mask": bad})
