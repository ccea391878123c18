"""Model.serve / ModelServer and RemoteModel: a served policy drives real envs.

The served model runs in a subprocess (a real second process over a Unix
socket, with shared memory) or, where the test inspects what the served
model saw, in this process on the server's session thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rlmesh
import rlmesh.numpy as rnp
from rlmesh.errors import BrokenError, ConnectError, RemoteError, SpecError

gymnasium = pytest.importorskip("gymnasium")

ROOT = Path(__file__).resolve().parents[2]

# The policy both sides run: deterministic in the observation (the pole angle's sign), and
# imperfect, so that every seed gives an episode of its own length.
POLICY = """
def policy(observation):
    return int(observation[2] > 0)
"""

SERVE = (
    POLICY
    + """
import sys
import gymnasium
import rlmesh.numpy as rnp

env = gymnasium.make("CartPole-v1")
rnp.Model(policy).serve(sys.argv[1], observation_space=env.observation_space, action_space=env.action_space)
"""
)

SEEDS = [0, 1, 2, 7]


def _policy() -> Any:
    scope: dict[str, Any] = {}
    exec(POLICY, scope)
    return scope["policy"]


def _spaces() -> tuple[Any, Any]:
    env = gymnasium.make("CartPole-v1")
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def _outcomes(result: rlmesh.RunResult) -> list[tuple[Any, ...]]:
    return [(e.index, e.seed, e.steps, e.reward, e.terminated, e.truncated) for e in result.episodes]


@pytest.fixture
def served_model(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A numpy Model serving the policy in a subprocess, on a Unix socket."""
    address = f"unix://{tmp_path / 'model.sock'}"
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, address],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_served_model_replays_the_in_process_model(served_model: tuple[Any, str]) -> None:
    _, address = served_model
    local = rnp.Model(_policy()).run("CartPole-v1", seeds=SEEDS)
    with rnp.RemoteModel(address, connect_timeout_seconds=30) as remote:
        assert remote.data_plane == "shm"
        assert remote.model_contract.metadata["rlmesh.endpoint"] == "model"
        assert remote.action_space.n == 2
        through_run = rlmesh.run(remote, "CartPole-v1", seeds=SEEDS)
        through_method = remote.run("CartPole-v1", seeds=SEEDS)  # the same client, a second run
    assert _outcomes(through_run) == _outcomes(local)
    assert _outcomes(through_method) == _outcomes(local)
    assert len({e.steps for e in local.episodes}) > 1  # the seeds gave different episodes
    assert through_run.mean_reward == local.mean_reward


def test_served_model_inline_and_plain_backend(served_model: tuple[Any, str]) -> None:
    _, address = served_model
    local = rnp.Model(_policy()).run("CartPole-v1", seeds=SEEDS[:2])
    with rnp.RemoteModel(address, connect_timeout_seconds=30, shared_memory=False) as remote:
        assert remote.data_plane == "inline"
        assert _outcomes(remote.run("CartPole-v1", seeds=SEEDS[:2])) == _outcomes(local)
    with rlmesh.RemoteModel(address, connect_timeout_seconds=30) as plain:
        # The plain backend hands Tensors both ways; the served numpy model sees arrays.
        obs = rnp.from_array(np.array([0.0, 0.0, 0.1, 0.0], dtype=np.float32))
        assert plain.predict(obs) == 1
        assert plain.predict(rnp.from_array(np.array([0.0, 0.0, -0.1, 0.0], dtype=np.float32))) == 0


def test_a_dead_model_server_is_a_typed_error(served_model: tuple[Any, str]) -> None:
    proc, address = served_model
    remote = rnp.RemoteModel(address, connect_timeout_seconds=30, request_timeout_seconds=30)
    try:
        assert remote.predict(np.zeros(4, dtype=np.float32)) in (0, 1)
        proc.kill()
        proc.wait()
        started = time.monotonic()
        with pytest.raises(BrokenError):
            rlmesh.run(remote, "CartPole-v1", seeds=[0])
        assert time.monotonic() - started < 5.0
        with pytest.raises(BrokenError):
            remote.predict(np.zeros(4, dtype=np.float32))
    finally:
        remote.close()


def test_bad_observations_are_clear_errors_and_the_session_goes_on(served_model: tuple[Any, str]) -> None:
    _, address = served_model
    with rnp.RemoteModel(address, connect_timeout_seconds=30) as remote:
        with pytest.raises(SpecError, match=r"invalid observation.*shape \(3,\).*\(4,\)"):
            remote.predict(np.zeros(3, dtype=np.float32))
        with pytest.raises(SpecError, match="invalid observation"):
            remote.predict({"a": np.zeros(4, dtype=np.float32)})
        with pytest.raises(SpecError, match=r"shape \(2, 5\).*\(2, 4\)"):
            remote.predict_batch(np.zeros((2, 5), dtype=np.float32))
        assert remote.predict(np.array([0, 0, 0.2, 0], dtype=np.float32)) == 1


class _Recorder(rnp.Model):
    """A served model that records what its corners see."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, ...]] = []
        self.contexts: list[Any] = []
        self.resets = 0
        self.closes = 0
        super().__init__()

    def predict(self, observation: Any, context: Any = None) -> Any:
        self.contexts.append(context)
        return int(observation[2] > 0)

    def predict_batch(self, observations: Any) -> Any:
        assert isinstance(observations, np.ndarray)
        self.batches.append(observations.shape)
        return (observations[:, 2] > 0).astype(np.int64)

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        self.closes += 1


def test_vector_steps_are_one_batched_predict(tmp_path: Path) -> None:
    obs_space, act_space = _spaces()
    recorder = _Recorder()
    seeds = [3, 4, 5, 6, 8]
    with rlmesh.EnvServer(
        "CartPole-v1", num_envs=3, vectorization_mode="sync", autoreset_mode="NextStep"
    ) as env_server:
        env_server.start()
        local = _Recorder().run(env_server.address, seeds=seeds)
        with recorder.server(
            f"unix://{tmp_path / 'm.sock'}", observation_space=obs_space, action_space=act_space
        ) as model_server:
            model_server.start()
            with rnp.RemoteModel(model_server.address) as remote:
                remote_result = remote.run(env_server.address, seeds=seeds)
            assert recorder.closes == 0  # the served model lives as long as its server
        assert recorder.closes == 1
    assert _outcomes(remote_result) == _outcomes(local)
    assert recorder.batches and set(recorder.batches) == {(3, 4)}
    assert recorder.contexts == []  # every vector step was one batched call, never per lane
    # At least as many batched calls as the longest episode had steps, fewer than all lanes' steps.
    assert max(e.steps for e in remote_result.episodes) <= len(recorder.batches) < remote_result.total_steps


def test_resets_and_context_reach_the_served_model(tmp_path: Path) -> None:
    obs_space, act_space = _spaces()
    recorder = _Recorder()
    with recorder.server(
        f"unix://{tmp_path / 'm.sock'}", observation_space=obs_space, action_space=act_space
    ) as server:
        server.start()
        with rnp.RemoteModel(server.address) as remote:
            result = rlmesh.run(remote, "CartPole-v1", seeds=[11, 12])
    assert recorder.resets == 2
    assert len(recorder.contexts) == result.total_steps
    seeds_seen = [c["episode_seed"] for c in recorder.contexts]
    first = result.episodes[0].steps
    assert seeds_seen == [11] * first + [12] * (result.total_steps - first)
    assert all(isinstance(c["episode_id"], str) for c in recorder.contexts)


def test_model_errors_and_bad_actions_are_remote_errors(tmp_path: Path) -> None:
    obs_space, act_space = _spaces()

    def broken(observation: Any) -> Any:
        if observation[0] > 1.0:
            raise KeyError("no such weights")
        if observation[0] < -1.0:
            return "left"
        return 0

    with rnp.Model(broken).server(
        f"unix://{tmp_path / 'm.sock'}", observation_space=obs_space, action_space=act_space
    ) as server:
        server.start()
        with rnp.RemoteModel(server.address) as remote:
            with pytest.raises(RemoteError, match="served model raised KeyError.*no such weights") as info:
                remote.predict(np.array([2, 0, 0, 0], dtype=np.float32))
            assert "KeyError" in info.value.remote_traceback
            with pytest.raises(RemoteError, match="served model"):
                remote.predict(np.array([-2, 0, 0, 0], dtype=np.float32))
            assert remote.predict(np.zeros(4, dtype=np.float32)) == 0


def test_endpoints_refuse_the_wrong_client(tmp_path: Path) -> None:
    obs_space, act_space = _spaces()
    with rlmesh.EnvServer("CartPole-v1") as env_server:
        env_server.start()
        with pytest.raises(ConnectError, match="serves an env"):
            rnp.RemoteModel(env_server.address)
    with rnp.Model(_policy()).server(
        f"unix://{tmp_path / 'm.sock'}", observation_space=obs_space, action_space=act_space
    ) as server:
        server.start()
        with rnp.RemoteEnv(server.address) as env:
            with pytest.raises(ValueError, match="serves a model"):
                env.reset(seed=0)


def test_a_served_model_declares_its_spaces(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="observation_space and action_space"):
        rnp.Model(_policy()).server(f"unix://{tmp_path / 'm.sock'}")
    assert not (tmp_path / "m.sock").exists()  # nothing was bound

    class Declared(rnp.Model):
        observation_space = rlmesh.spaces.Box(-1.0, 1.0, (2,), "float32")
        action_space = rlmesh.spaces.Discrete(3)

        def predict(self, observation: Any) -> Any:
            return 2

    with Declared().server(f"unix://{tmp_path / 'd.sock'}") as server:
        server.start()
        assert server.contract.action_space.details["n"] == 3
        with rnp.RemoteModel(server.address) as remote:
            assert remote.predict(np.zeros(2, dtype=np.float32)) == 2
    assert os.path.exists(tmp_path) and not (tmp_path / "d.sock").exists()


@pytest.mark.parametrize("shared_memory", [True, False], ids=["tcp-shm", "tcp-inline"])
def test_over_tcp(shared_memory: bool) -> None:
    obs_space, act_space = _spaces()
    local = rnp.Model(_policy()).run("CartPole-v1", seeds=SEEDS[:2])
    with rnp.Model(_policy()).server(
        "tcp://127.0.0.1:0", observation_space=obs_space, action_space=act_space
    ) as server:
        server.start()
        with rnp.RemoteModel(server.address, shared_memory=shared_memory) as remote:
            assert remote.data_plane == ("shm" if shared_memory else "inline")
            assert _outcomes(remote.run("CartPole-v1", seeds=SEEDS[:2])) == _outcomes(local)


def test_jax_remote_model_takes_and_gives_jax_values(tmp_path: Path) -> None:
    jnp = pytest.importorskip("jax.numpy")
    import rlmesh.jax as rj

    obs_space, act_space = _spaces()
    recorder = _Recorder()
    with recorder.server(
        f"unix://{tmp_path / 'm.sock'}", observation_space=obs_space, action_space=act_space
    ) as server:
        server.start()
        with rj.RemoteModel(server.address) as remote:
            assert remote.predict(jnp.array([0.0, 0.0, 0.3, 0.0], dtype=jnp.float32)) == 1
            actions = remote.predict_batch(jnp.array([[0, 0, 0.3, 0], [0, 0, -0.3, 0]], dtype=jnp.float32))
            assert list(np.asarray(actions)) == [1, 0]
            assert not isinstance(actions, np.ndarray)  # a JAX array
    assert recorder.batches == [(2, 4)]


def test_malformed_predicts_are_refused_and_the_session_goes_on(tmp_path: Path) -> None:
    from rlmesh.model_server import MAX_LANES
    from rlmesh.wire.codec import TailBuilder

    obs_space, act_space = _spaces()
    with rnp.Model(_policy()).server(
        f"unix://{tmp_path / 'm.sock'}", observation_space=obs_space, action_space=act_space
    ) as server:
        server.start()
        with rnp.RemoteModel(server.address) as remote:
            conn = remote._conn
            zeros = rnp.from_array(np.zeros(4, dtype=np.float32))
            with pytest.raises(ValueError, match="at most"):
                conn.predict(zeros, TailBuilder(), MAX_LANES + 1, False, None, 5.0)
            with pytest.raises(ValueError, match="episode context"):
                conn.predict(zeros, TailBuilder(), 0, False, {"episode_seed": -3}, 5.0)
            with pytest.raises(SpecError, match="invalid observation"):
                conn.predict("not an observation", TailBuilder(), 0, False, None, 5.0)
            assert conn.predict(zeros, TailBuilder(), 0, True, None, 5.0).action == 0
