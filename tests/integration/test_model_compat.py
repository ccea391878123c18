"""Model runtime parity with the published API (compat-gaps G6), against real servers.

* 6a: a corner gets ``context`` only when it declares a parameter named ``context``;
* 6b: ``load()`` runs once, at construction;
* 6c: the four corners, derived downward, and ``execution_horizon`` chunk replay;
* 6d: a vector env hands its whole batch to one call per step;
* 6e: ``StepEvent.step`` is 0-based and ``StepEvent.observation`` the pre-step one.
"""

from __future__ import annotations

import inspect
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import rlmesh
import rlmesh.numpy as rnp
from rlmesh import RunHooks, StepEvent, spaces
from tests.envs import TinyEnv, TinyVectorEnv

pytestmark = pytest.mark.timeout(90)

CHUNK = [1, 0, 1, 1, 0]
NOWHERE = "unix:///nonexistent-rlmesh-dir/env.sock"


# -- envs that remember what they were given -----------------------------------------


class RecordingEnv(TinyEnv):
    """TinyEnv (its observation is the last action) that records every action it steps with."""

    def __init__(self, limit: int = 4) -> None:
        super().__init__(limit=limit)
        self.actions: list[int] = []

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        self.actions.append(int(action))
        return super().step(action)


class ArmEnv:
    """Dict actions ``{"arm": Box((2,))}``; records them; ends after ``limit`` steps."""

    metadata: dict[str, Any] = {}
    render_mode = None

    def __init__(self, limit: int = 4) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, (3,), "float32")
        self.action_space = spaces.Dict({"arm": spaces.Box(-100.0, 100.0, (2,), "float32")})
        self.limit = limit
        self.t = 0
        self.actions: list[list[float]] = []

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action: dict[str, Any]) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.actions.append(np.asarray(action["arm"]).tolist())
        self.t += 1
        return np.zeros(3, np.float32), 0.0, self.t >= self.limit, False, {}

    def close(self) -> None:
        pass


class StaggeredVectorEnv(TinyVectorEnv):
    """TinyVectorEnv (NextStep; observation ``[lane, t, action]``) whose lanes end after their own limit."""

    def __init__(self, limits: list[int]) -> None:
        super().__init__(num_envs=len(limits))
        self.limits = np.asarray(limits)
        self.seen: list[list[int]] = []

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = np.asarray(actions)
        self.seen.append(actions.tolist())
        self.t[self.done] = 0
        self.t[~self.done] += 1
        terminated = self.t >= self.limits
        self.done = terminated.copy()
        zeros = np.zeros(self.num_envs, bool)
        return self._obs(actions), np.ones(self.num_envs), terminated, zeros, {}


class Steps(RunHooks):
    """Collects the StepEvents of a run."""

    def __init__(self) -> None:
        self.events: list[StepEvent] = []

    def on_step(self, event: StepEvent) -> None:
        self.events.append(event)


def chunker(chunk: Any, log: list[Any] | None = None) -> type[rnp.Model]:
    """A NumPy model class whose only corner, predict_chunk, returns ``chunk`` (and logs observations)."""

    class Chunker(rnp.Model):
        def predict_chunk(self, observation: Any) -> Any:
            if log is not None:
                log.append(observation)
            return np.asarray(chunk) if isinstance(chunk, list) else chunk

    return Chunker


# -- 6a: context ------------------------------------------------------------------------


def test_a_predict_override_without_context_runs(serve) -> None:
    env = RecordingEnv(limit=3)
    address = serve(env).server.address

    class Policy(rnp.Model):
        def predict(self, observation: Any) -> int:
            return 1

    result = Policy().run(address, seeds=[1, 2])
    assert [e.steps for e in result.episodes] == [3, 3] and env.actions == [1] * 6
    with Policy().session(address) as session:
        obs, _ = session.reset(seed=3)
        assert session.predict(obs) == 1


def test_context_goes_only_to_a_parameter_named_context(serve) -> None:
    address = serve(TinyEnv(limit=2)).server.address
    extras: list[Any] = []

    def with_extra(observation: Any, extra: str = "untouched") -> int:
        extras.append(extra)
        return 0

    rlmesh.run(with_extra, address, seeds=[4])
    assert extras == ["untouched", "untouched"]  # an unrelated optional parameter is left alone

    contexts: list[dict[str, Any]] = []

    def positional(observation: Any, context: dict[str, Any]) -> int:
        contexts.append(context)
        return 0

    def keyword_only(observation: Any, *, context: dict[str, Any]) -> int:
        contexts.append(context)
        return 0

    rlmesh.run(positional, address, seeds=[5])
    rlmesh.run(keyword_only, address, seeds=[6])
    assert [c["episode_seed"] for c in contexts] == [5, 5, 6, 6]
    assert all(isinstance(c["episode_id"], str) and c["episode_id"] for c in contexts)
    assert contexts[0]["episode_id"] == contexts[1]["episode_id"] != contexts[2]["episode_id"]
    with pytest.raises(TypeError, match="ctx"):
        # The second parameter is not called `context`, so nothing fills it.
        rlmesh.run(lambda observation, ctx: 0, address)


def test_a_subclass_context_matches_the_episode(serve) -> None:
    address = serve(TinyEnv(limit=2)).server.address
    seen: list[dict[str, Any]] = []

    class Policy(rlmesh.Model):
        def predict(self, observation: Any, context: dict[str, Any]) -> int:
            seen.append(dict(context))
            return 0

    with Policy().session(address) as session:
        obs, info = session.reset(seed=11)
        session.step(session.predict(obs))
        assert seen == [{"episode_id": info["episode_ids"][0], "episode_seed": 11}]
        obs, info = session.reset()
        session.predict(obs)
        assert seen[1] == {"episode_id": info["episode_ids"][0], "episode_seed": None}
    assert seen[0]["episode_id"] != seen[1]["episode_id"]


def test_chunk_corners_tell_the_horizon_from_the_context(serve) -> None:
    address = serve(TinyEnv(limit=1)).server.address
    calls: list[tuple[Any, ...]] = []

    class ContextOnly(rnp.Model):
        def predict_chunk(self, observation: Any, context: Any = None) -> Any:
            calls.append(("context-only", context["episode_seed"]))
            return np.array([1, 1, 1])

    class Both(rnp.Model):
        def predict_chunk(self, observation: Any, execution_horizon: int = 1, context: Any = None) -> Any:
            calls.append(("both", execution_horizon, context["episode_seed"]))
            return np.ones(execution_horizon, np.int64)

    class KeywordHorizon(rnp.Model):
        def predict_chunk(self, observation: Any, *, execution_horizon: int = 1) -> Any:
            calls.append(("keyword", execution_horizon))
            return np.ones(execution_horizon, np.int64)

    ContextOnly().run(address, seeds=[1], execution_horizon=3)
    Both().run(address, seeds=[2], execution_horizon=3)
    KeywordHorizon().run(address, seeds=[3], execution_horizon=4)
    Both().run(address, seeds=[4])  # horizon 1: the derived predict still hands its context on
    assert calls == [("context-only", 1), ("both", 3, 2), ("keyword", 4), ("both", 1, 4)]


# -- 6b: load ---------------------------------------------------------------------------


def test_load_runs_once_at_construction(serve) -> None:
    address = serve(TinyEnv(limit=2)).server.address
    loads: list[str] = []

    class Policy(rnp.Model):
        def load(self) -> None:
            loads.append("load")
            self.bias = np.array([0.0, 1.0])

        def predict(self, observation: Any) -> int:
            return int(np.argmax(self.bias))

    policy = Policy()
    assert loads == ["load"] and policy.bias.tolist() == [0.0, 1.0]
    assert policy.predict(np.zeros(2)) == 1  # usable directly, before any run
    policy.run(address, max_episodes=2)
    with policy.session(address) as session:
        session.run()
    assert loads == ["load"]
    rlmesh.run(Policy, address)  # a class is built once, and loads once
    assert loads == ["load", "load"]


def test_bad_weights_fail_at_construction(tmp_path: Path) -> None:
    class Policy(rnp.Model):
        path = tmp_path / "missing-weights.npy"

        def load(self) -> None:
            self.weights = np.load(self.path)

        def predict(self, observation: Any) -> Any:
            return self.weights @ observation

    with pytest.raises(FileNotFoundError, match="missing-weights"):
        Policy()
    np.save(tmp_path / "missing-weights.npy", np.eye(2))
    assert Policy().predict(np.array([3.0, 4.0])).tolist() == [3.0, 4.0]


# -- 6c: corners and execution_horizon -----------------------------------------------------


def test_a_chunk_is_replayed_for_the_execution_horizon(serve) -> None:
    env = RecordingEnv(limit=4)
    address = serve(env).server.address
    planned: list[Any] = []
    hooks = Steps()
    chunker(CHUNK, planned)().run(address, execution_horizon=3, hooks=hooks)
    assert env.actions == [1, 0, 1, 1]  # three of the first chunk, then a new plan
    assert [int(obs) for obs in planned] == [0, 1]  # planned at the reset and after the 3rd step
    assert [int(e.action) for e in hooks.events] == [1, 0, 1, 1]

    env.actions.clear()
    planned.clear()
    chunker(CHUNK, planned)().run(address, execution_horizon=1)
    assert env.actions == [1, 1, 1, 1] and len(planned) == 4
    env.actions.clear()
    chunker(CHUNK)().run(address)  # the default horizon is 1
    assert env.actions == [1, 1, 1, 1]


def test_a_short_chunk_replans_early_and_an_empty_one_is_an_error(serve) -> None:
    env = RecordingEnv(limit=6)
    address = serve(env).server.address
    planned: list[Any] = []
    chunker(CHUNK, planned)().run(address, execution_horizon=8)
    assert env.actions == [1, 0, 1, 1, 0, 1] and len(planned) == 2
    with pytest.raises(ValueError, match="empty action chunk"):
        chunker(np.zeros(0, np.int64))().run(address, execution_horizon=2)


def test_a_dict_chunk_replays_rows_of_every_leaf(serve) -> None:
    env = ArmEnv(limit=4)
    address = serve(env).server.address
    rows = np.arange(10, dtype=np.float32).reshape(5, 2)
    chunker({"arm": rows})().run(address, execution_horizon=3)
    assert env.actions == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [0.0, 1.0]]
    env.actions.clear()
    with pytest.raises(ValueError, match="disagree"):
        chunker({"arm": rows, "grip": np.zeros((4, 1))})().run(address, execution_horizon=3)


def test_the_replay_is_dropped_at_every_new_episode(serve) -> None:
    env = RecordingEnv(limit=2)
    address = serve(env).server.address
    planned: list[Any] = []
    chunker(CHUNK, planned)().run(address, max_episodes=2, execution_horizon=5)
    # Without the reset, the second episode would go on with the chunk's 1, 1.
    assert env.actions == [1, 0, 1, 0] and len(planned) == 2

    planned.clear()
    with chunker(CHUNK, planned)().session(address, execution_horizon=3) as session:
        assert session.execution_horizon == 3
        obs, _ = session.reset()
        assert [int(session.predict(obs)) for _ in range(4)] == [1, 0, 1, 1]
        assert len(planned) == 2
        obs, _ = session.reset()
        assert int(session.predict(obs)) == 1 and len(planned) == 3  # a fresh plan, not the leftover 0


def test_derived_corners(serve) -> None:
    """predict_chunk_batch alone gives all four; predict prefers predict_batch over predict_chunk."""
    env = RecordingEnv(limit=3)
    address = serve(env).server.address
    batches: list[tuple[int, ...]] = []

    class ChunkBatch(rnp.Model):
        def predict_chunk_batch(self, observations: Any) -> Any:
            batches.append(np.shape(observations))
            return np.tile(np.array([[1, 0, 1, 1, 0]]), (len(observations), 1))

    model = ChunkBatch()
    assert model.predict(np.int64(0)) == 1
    assert model.predict_chunk(np.int64(0)).tolist() == CHUNK
    assert model.predict_batch(np.zeros(3, np.int64)).tolist() == [1, 1, 1]
    batches.clear()
    model.run(address)
    assert env.actions == [1, 1, 1] and batches == [(1,)] * 3  # every step a 1-lane batch
    env.actions.clear()
    model.run(address, execution_horizon=2)
    assert env.actions == [1, 0, 1]

    calls: list[str] = []

    class BatchAndChunk(rnp.Model):
        def predict_batch(self, observations: Any) -> Any:
            calls.append(f"batch {np.shape(observations)}")
            return np.zeros(len(observations), np.int64)

        def predict_chunk(self, observation: Any) -> Any:
            calls.append("chunk")
            return np.array(CHUNK)

    BatchAndChunk().run(address)
    assert calls == ["batch (1,)"] * 3  # un-chunked: never pays for a chunk it would discard
    calls.clear()
    BatchAndChunk().run(address, execution_horizon=3)
    assert calls == ["chunk"]


def test_a_model_needs_a_corner() -> None:
    class Nothing(rnp.Model):
        def load(self) -> None:
            raise AssertionError("load must not run for a model that cannot be built")

    with pytest.raises(TypeError, match="predict_chunk_batch"):
        Nothing()
    with pytest.raises(TypeError, match="predict"):
        rlmesh.Model()
    with pytest.raises(TypeError, match="callable"):
        rlmesh.Model(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot wrap another Model"):
        rlmesh.Model(rlmesh.Model(lambda obs: 0))

    class Calls(rnp.Model):
        def predict(self, observation: Any) -> Any:
            return super().predict(observation)

    with pytest.raises(NotImplementedError, match="no inherited implementation"):
        Calls().predict(0)
    with pytest.raises(NotImplementedError, match="chunk"):
        rnp.Model(lambda obs: 0).predict_chunk(0)


def test_a_chunk_only_plain_model_dechunks(serve) -> None:
    """Unlike the published plain backend, rlmesh.Model can index its Tensors, so chunk-only models work."""
    env = RecordingEnv(limit=4)
    address = serve(env).server.address

    class ListChunk(rlmesh.Model):
        def predict_chunk(self, observation: Any) -> list[int]:
            return list(CHUNK)

    class TensorChunk(rlmesh.Model):
        def predict_chunk(self, observation: Any) -> rlmesh.Tensor:
            return rlmesh.Tensor(struct.pack("<5q", *CHUNK), [5], "int64")

    ListChunk().run(address)
    assert env.actions == [1, 1, 1, 1]
    env.actions.clear()
    TensorChunk().run(address, execution_horizon=3)
    assert env.actions == [1, 0, 1, 1]
    assert TensorChunk().predict(0).item() == 1


def test_execution_horizon_is_keyword_only_everywhere() -> None:
    for fn in (rlmesh.run, rlmesh.Model.run, rlmesh.session, rlmesh.Model.session):
        parameter = inspect.signature(fn).parameters["execution_horizon"]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default == 1, fn


@pytest.mark.parametrize("horizon", [0, -2, True, 2.5])
def test_a_bad_horizon_is_refused_before_connecting(horizon: Any) -> None:
    model = chunker(CHUNK)()
    entries: list[Callable[[], Any]] = [
        lambda: rlmesh.run(model, NOWHERE, execution_horizon=horizon),
        lambda: model.run(NOWHERE, execution_horizon=horizon),
        lambda: rlmesh.session(model, NOWHERE, execution_horizon=horizon),
        lambda: model.session(NOWHERE, execution_horizon=horizon),
    ]
    for entry in entries:
        # A ValueError, not the ConnectError that dialing nowhere would raise.
        with pytest.raises(ValueError, match="execution_horizon must be an int >= 1"):
            entry()


def test_a_horizon_without_a_chunk_corner_warns_once_and_runs_unchunked(serve) -> None:
    env = RecordingEnv(limit=3)
    address = serve(env).server.address
    predicted: list[Any] = []
    model = rnp.Model(lambda obs: predicted.append(obs) or 1)
    entries: list[Callable[[], Any]] = [
        lambda: rlmesh.run(model, address, execution_horizon=3),
        lambda: model.run(address, execution_horizon=3),
        lambda: rlmesh.session(model, address, execution_horizon=3).close(),
        lambda: model.session(address, execution_horizon=3).close(),
        lambda: rlmesh.run(rlmesh.RANDOM_SAMPLE, address, execution_horizon=2),
    ]
    for entry in entries:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            entry()
        assert [str(w.message) for w in caught if "un-chunked" in str(w.message)] == [str(caught[0].message)]
        assert len(caught) == 1 and caught[0].category is UserWarning
        assert caught[0].filename == __file__  # it points at the caller
    assert len(predicted) == 6  # two runs of three steps: predict on every step
    with rlmesh.session(chunker(CHUNK)(), address, execution_horizon=1) as quiet, warnings.catch_warnings():
        warnings.simplefilter("error")
        assert quiet.execution_horizon == 1


def test_vector_lanes_replay_their_own_chunks(serve) -> None:
    env = StaggeredVectorEnv([2, 4])
    address = serve(env).server.address
    planned: list[list[int]] = []

    class ChunkBatch(rnp.Model):
        def predict_chunk_batch(self, observations: Any) -> Any:
            planned.append(observations[:, 1].astype(int).tolist())  # each lane's t
            return np.tile(np.array([[1, 0, 1, 1, 0]]), (len(observations), 1))

    result = ChunkBatch().run(address, max_episodes=3, execution_horizon=3)
    assert sorted(e.steps for e in result.episodes) == [2, 2, 4]
    # Lane 0 ends after 2 steps: the rest of its chunk is dropped, its NextStep
    # autoreset step repeats its last action, and it re-plans from the new
    # episode's first observation, together with lane 1, whose chunk ran out.
    assert [lanes[0] for lanes in env.seen] == [1, 0, 0, 1, 0]
    assert [lanes[1] for lanes in env.seen] == [1, 0, 1, 1, 1]
    assert planned == [[0, 0], [0, 3]]


def test_vector_chunks_without_a_batched_corner_treat_the_batch_as_one_observation(serve) -> None:
    env = StaggeredVectorEnv([4, 4])
    address = serve(env).server.address
    shapes: list[tuple[int, ...]] = []

    class Chunk(rnp.Model):
        def predict_chunk(self, observation: Any) -> Any:
            shapes.append(observation.shape)
            return np.array([[1, 0], [0, 1], [1, 1], [0, 0]])  # (H, N): every frame a batched action

    Chunk().run(address, max_episodes=2, execution_horizon=3)
    assert env.seen == [[1, 0], [0, 1], [1, 1], [1, 0]] and shapes == [(2, 3), (2, 3)]


# -- 6d: vector envs ----------------------------------------------------------------------


def test_a_plain_callable_gets_the_whole_batch_of_a_gymnasium_vector_env(serve) -> None:
    def factory() -> gym.vector.VectorEnv:
        return gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")

    address = serve(factory).server.address
    shapes: list[tuple[int, ...]] = []

    def policy(observations: np.ndarray) -> np.ndarray:
        shapes.append(observations.shape)
        return (observations[:, 2] + 0.5 * observations[:, 3] > 0).astype(np.int64)

    result = rnp.Model(policy).run(address, seeds=[0, 1, 2])
    assert result.num_episodes == 3 and all(e.steps > 100 for e in result.episodes)
    assert set(shapes) == {(3, 4)}
    # One call per step; the lanes start together and the run ends with the longest episode.
    assert len(shapes) == max(e.steps for e in result.episodes)


def test_plain_models_and_predict_overrides_get_the_batch(serve) -> None:
    env = StaggeredVectorEnv([2, 2, 2])
    address = serve(env).server.address
    seen: list[Any] = []

    def tensors(observations: Any) -> list[int]:
        seen.append((type(observations).__name__, list(observations.shape)))
        return [2, 1, 0]

    rlmesh.Model(tensors).run(address, max_episodes=3)
    assert seen == [("Tensor", [3, 3])] * 2 and env.seen == [[2, 1, 0]] * 2

    class Override(rnp.Model):
        def predict(self, observation: Any) -> Any:
            seen.append(observation.shape)
            return observation[:, 0].astype(np.int64)  # each lane's index

    env.seen.clear()
    Override().run(address, max_episodes=3)
    assert seen[2:] == [(3, 3)] * 2 and env.seen == [[0, 1, 2]] * 2


def test_vector_steps_use_the_batched_corner_defined_or_derived(serve) -> None:
    env = StaggeredVectorEnv([2, 2])
    address = serve(env).server.address
    calls: list[str] = []

    class Both(rnp.Model):
        def predict(self, observation: Any) -> int:
            calls.append("predict")
            return 0

        def predict_batch(self, observations: Any) -> Any:
            calls.append(f"batch {observations.shape}")
            return np.ones(len(observations), np.int64)

    Both().run(address, max_episodes=2)
    assert calls == ["batch (2, 3)"] * 2 and env.seen == [[1, 1]] * 2

    class ChunkBatch(rnp.Model):
        def predict_chunk_batch(self, observations: Any) -> Any:
            calls.append(f"chunk batch {observations.shape}")
            return np.array([[2, 0, 0], [1, 0, 0]])

    calls.clear()
    env.seen.clear()
    ChunkBatch().run(address, max_episodes=2)  # horizon 1: frame 0 of every lane
    assert calls == ["chunk batch (2, 3)"] * 2 and env.seen == [[2, 1]] * 2


def test_a_whole_batch_predict_gets_a_batched_context(serve) -> None:
    address = serve(TinyVectorEnv(num_envs=2, limit=2)).server.address
    contexts: list[dict[str, Any]] = []

    def policy(observations: Any, context: dict[str, Any]) -> Any:
        contexts.append(context)
        return np.zeros(len(observations), np.int64)

    rnp.Model(policy).run(address, seeds=[7, 8])
    assert [c["episode_seed"] for c in contexts] == [[7, 8], [7, 8]]
    for context in contexts:
        assert len(context["episode_id"]) == 2 and all(isinstance(i, str) for i in context["episode_id"])


# -- 6e: StepEvent ------------------------------------------------------------------------


def test_step_events_count_from_zero_and_carry_the_observation_acted_on() -> None:
    predicted: list[Any] = []

    def policy(observation: np.ndarray) -> int:
        predicted.append(observation)
        return int(observation[2] + 0.5 * observation[3] > 0)

    hooks = Steps()
    result = rnp.Model(policy).run("CartPole-v1", seeds=[0, 1], hooks=hooks)
    per_episode = [[e for e in hooks.events if e.episode == i] for i in range(2)]
    for events, episode in zip(per_episode, result.episodes, strict=True):
        assert [e.step for e in events] == list(range(episode.steps))
        assert events[-1].terminated or events[-1].truncated
    assert len(hooks.events) == len(predicted)
    for event, observation in zip(hooks.events, predicted, strict=True):
        assert event.observation is observation  # the pre-step observation, the very object
        assert event.action == int(observation[2] + 0.5 * observation[3] > 0)
    # A transition's observation is not the one the step returned.
    assert not np.array_equal(hooks.events[1].observation, hooks.events[0].observation)
