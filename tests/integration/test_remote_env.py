"""The served-env round trip: EnvServer + RemoteEnv/RemoteVectorEnv, over every transport."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np
import pytest

import rlmesh
import rlmesh.numpy as rnp
from rlmesh import Tensor
from tests.conftest import TRANSPORTS
from tests.envs import BoxActionEnv, CountEnv, FailingEnv, LegacyEnv, SlowEnv, TinyEnv, TinyVectorEnv

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reset_step_render_over_every_transport(serve, transport: str) -> None:
    served = serve(CountEnv(limit=3), transport)
    env = served.client(rnp.RemoteEnv)
    assert env.data_plane == ("shm" if served.shm else "inline")
    obs, info = env.reset(seed=5)
    assert isinstance(obs, np.ndarray) and obs.dtype == np.float32 and obs.flags.writeable
    assert obs.tolist()[:3] == [0.0, 0.0, 5.0]
    # The env's own info keys are kept; arrays in info become lists.
    assert info["episode_ids"] == "env-owned" and info["custom"] == [0, 1, 2]
    obs, reward, terminated, truncated, info = env.step(2)
    assert obs.tolist()[:3] == [1.0, 2.0, 5.0]
    assert (reward, terminated, truncated) == (1.0, False, False)
    assert type(reward) is float and type(terminated) is bool
    assert info["t"] == 1 and len(info["episode_ids"]) == 1 and "completed_episodes" not in info
    env.step(0)
    _, _, _, truncated, info = env.step(0)
    assert truncated and info["completed_episodes"] == 1
    frame = env.render()
    assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.shape == (6, 8, 3)
    assert frame[0, 0].tolist() == [1, 2, 3] and frame[1, 1, 0] == 3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_plain_client_returns_tensors_and_primitives(serve, transport: str) -> None:
    served = serve(BoxActionEnv(), transport)
    env = served.client()
    obs, _ = env.reset()
    assert list(obs) == ["pos", "pair", "image"]
    assert isinstance(obs["pos"], Tensor) and obs["pos"].dtype == "float32"
    assert obs["pair"] == (2, "hi") and isinstance(obs["pair"], tuple)
    assert obs["image"].shape == (32, 32, 3) and obs["image"].tolist()[0][0] == [7, 7, 7]
    action = Tensor(np.array([0.25, -0.5], np.float32).tobytes(), (2,), "float32")
    obs, reward, *_ = env.step(action)
    assert obs["pos"].tolist() == [0.25, -0.5] and reward == -0.25


@pytest.mark.parametrize("transport", ["unix-shm", "tcp-inline"])
def test_numpy_client_actions_and_spaces(serve, transport: str) -> None:
    served = serve(BoxActionEnv(), transport)
    env = served.client(rnp.RemoteEnv)
    obs, _ = env.reset()
    assert isinstance(obs["image"], np.ndarray) and obs["image"].flags.writeable
    obs["image"] += 1  # writable copies, as Gymnasium's
    # float64 actions for a float32 space are cast on the server.
    obs, reward, *_ = env.step(np.array([0.5, 0.25]))
    assert obs["pos"].tolist() == [0.5, 0.25] and reward == 0.75
    sample = env.action_space.sample()
    assert isinstance(sample, np.ndarray) and sample.shape == (2,)
    assert env.action_space.contains(sample)
    assert env.observation_space.spec == BoxActionEnv().observation_space.spec
    assert env.action_space_spec.kind == "box"


@pytest.mark.parametrize("transport", ["unix-shm", "tcp-inline"])
def test_invalid_action_is_a_value_error_and_the_session_survives(serve, transport: str) -> None:
    served = serve(BoxActionEnv(), transport)
    env = served.client(rnp.RemoteEnv)
    env.reset()
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3, np.float32))
    with pytest.raises(rlmesh.InvalidActionError, match="NaN"):
        env.step(np.array([np.nan, 0.0], np.float32))
    obs, *_ = env.step(np.array([0.1, 0.2], np.float32))
    assert obs["pos"] == pytest.approx([0.1, 0.2])
    tiny = serve(TinyEnv(), transport).client()
    tiny.reset()
    with pytest.raises(ValueError, match="outside Discrete"):
        tiny.step(5)
    with pytest.raises(ValueError):
        tiny.step("a")
    assert tiny.step(1)[0] == 1


@pytest.mark.parametrize("transport", ["unix-shm", "tcp-inline"])
def test_env_exception_reaches_the_client_with_its_traceback(serve, transport: str) -> None:
    served = serve(FailingEnv(), transport)
    env = served.client()
    env.reset()
    with pytest.raises(rlmesh.RemoteError) as caught:
        env.step(1)
    error = caught.value
    assert isinstance(error, RuntimeError)
    assert error.remote_type == "ZeroDivisionError"
    assert "division by zero in the env" in str(error)
    assert "raise ZeroDivisionError" in error.remote_traceback and "tests/envs.py" in error.remote_traceback
    with pytest.raises(rlmesh.RemoteError, match="KeyError"):
        env.reset(options={"fail": True})
    # The session and the server keep serving.
    assert env.reset()[0] == 0 and env.step(0)[0] == 0
    env.close()
    assert served.client().reset()[0] == 0


def test_single_env_object_rejects_a_second_concurrent_client(serve) -> None:
    served = serve(TinyEnv())
    first = served.client()
    with pytest.raises(rlmesh.BusyError, match="only one client"):
        served.client()
    first.close()
    # Sequential clients are fine.
    second = served.client()
    assert second.reset()[0] == 0


@pytest.mark.parametrize("source", ["factory", "id"])
def test_factory_and_id_give_each_client_its_own_env(serve, source: str) -> None:
    env = CountEnv if source == "factory" else "CartPole-v1"
    served = serve(env)
    a, b = served.client(rnp.RemoteEnv), served.client(rnp.RemoteEnv)
    a.reset(seed=1)
    b.reset(seed=2)
    for _ in range(3):
        a.step(0)
    obs_b, *_ = b.step(0)
    if source == "factory":
        assert obs_b[0] == 1.0  # b's env saw one step, a's three
        assert a.step(0)[0][0] == 4.0
    else:
        local = __import__("gymnasium").make("CartPole-v1")
        local.reset(seed=2)
        assert np.array_equal(obs_b, local.step(0)[0])


def test_close_detaches_and_the_server_keeps_serving(serve) -> None:
    env_obj = TinyEnv()
    served = serve(env_obj)
    client = served.client()
    client.reset()
    client.close()
    client.close()  # idempotent
    assert env_obj.close_calls == 0
    with pytest.raises(rlmesh.ClosedError):
        client.step(0)
    again = served.client()
    assert again.reset()[0] == 0


def test_info_keys_are_injected_without_overwriting(serve) -> None:
    served = serve(TinyEnv(limit=2))
    env = served.client()
    _, info = env.reset(seed=3)
    assert info["seed"] == 3 and info["options"] is None
    ids = info["episode_ids"]
    assert len(ids) == 1 and len(ids[0]) == 36 and ids[0][14] == "7"  # a UUIDv7
    _, _, _, _, info = env.step(1)
    assert info["episode_ids"] == ids and info["action"] == 1
    _, _, terminated, _, info = env.step(0)
    assert terminated and info["completed_episodes"] == 1
    _, info = env.reset()
    assert info["episode_ids"] != ids


def test_reset_options_travel_as_metadata(serve) -> None:
    env_obj = TinyEnv()
    served = serve(env_obj)
    env = served.client()
    env.reset(seed=9, options={"level": (1, 2), "name": "x", "flag": np.bool_(True)})
    assert env_obj.seen_options[-1] == {"level": [1, 2], "name": "x", "flag": True}
    with pytest.raises(TypeError, match="sanitize_metadata"):
        env.reset(options={"bad": object()})
    with pytest.raises(ValueError):
        env.reset(seed=-1)


def test_legacy_gym_env_is_normalised(serve) -> None:
    served = serve(LegacyEnv(limit=2))
    env = served.client()
    obs, info = env.reset(seed=1)
    assert obs == 0 and "episode_ids" in info
    assert env.step(0)[1:4] == (0.5, False, False)
    _, _, terminated, truncated, _ = env.step(0)
    assert (terminated, truncated) == (False, True)
    plain = serve(LegacyEnv(limit=1, time_limit=False)).client()
    plain.reset()
    assert plain.step(0)[2:4] == (True, False)


class BadInfoEnv(CountEnv):
    """Action 2 puts an object in info that no wire can carry; the observation was encoded already."""

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)
        if action == 2:
            info["handle"] = object()
        return obs, reward, terminated, truncated, info


@pytest.mark.parametrize("transport", ["unix-shm", "tcp-inline"])
def test_a_response_that_cannot_be_built_gives_back_its_memory(serve, transport: str) -> None:
    # 16 KiB observations: over shared memory they travel in slab blocks (smaller ones inline).
    served = serve(BadInfoEnv(limit=10_000, width=4096), transport)
    env = served.client()
    env.reset(seed=1)
    for _ in range(3 * 64):  # far more than the slot rings' depth
        with pytest.raises(rlmesh.RemoteError, match="sanitize_metadata"):
            env.step(2)
    obs = env.step(1)[0]
    assert np.asarray(obs).tolist()[:3] == [3 * 64 + 1, 1, 1]
    (session,) = served.server._sessions
    if served.shm:
        # Only the observation the client holds is leased; the failed steps' blocks came back.
        assert len(session.data._owner) <= 1
        assert len(session.data.slab.segments) == 1  # and the slab never had to grow


def test_running_out_of_shared_memory_mid_session_blames_the_server_not_the_env(serve) -> None:
    served = serve(CountEnv(width=4096))  # 16 KiB: the observation needs a slab block
    env = served.client()
    env.reset(seed=1)
    (session,) = served.server._sessions
    acquire = session.handler.sink._acquire

    def full(nbytes: int) -> Any:
        raise rlmesh.errors.ShmCapacityError("/dev/shm is full (test)")

    session.handler.sink._acquire = full
    with pytest.raises(rlmesh.RemoteError, match="the server failed in step: ShmCapacityError") as caught:
        env.step(1)
    assert "served env raised" not in str(caught.value)
    session.handler.sink._acquire = acquire
    assert np.asarray(env.step(1)[0]).tolist()[:2] == [2, 1]


class ArrayRewardEnv(TinyEnv):
    """Returns its rewards as NumPy arrays: shape (1,) is one number, shape (2,) is not."""

    def step(self, action: int) -> tuple[int, Any, bool, bool, dict[str, Any]]:
        obs, _, terminated, truncated, info = super().step(action)
        reward = np.array([1.5]) if action == 0 else np.array([1.0, 2.0])
        return obs, reward, terminated, truncated, info


def test_a_one_element_array_reward_is_a_number_and_a_longer_one_a_clear_error(serve) -> None:
    env = serve(ArrayRewardEnv(limit=10)).client()
    env.reset()
    reward = env.step(0)[1]
    assert reward == 1.5 and type(reward) is float
    with pytest.raises(rlmesh.RemoteError, match=r"reward of shape \(2,\); a single env's reward"):
        env.step(1)
    assert env.step(0)[1] == 1.5  # the session stays usable


@pytest.mark.parametrize("transport", ["unix-shm", "tcp-inline"])
def test_vector_env_round_trip(serve, transport: str) -> None:
    vec = TinyVectorEnv(num_envs=3, limit=2)
    served = serve(vec, transport)
    with pytest.raises(ValueError, match="serves 3 environments"):
        served.client()
    env = served.client(rnp.RemoteVectorEnv)
    assert env.num_envs == 3 and env.autoreset_mode == "NextStep"
    assert env.observation_space is env.single_observation_space
    assert str(env.metadata["autoreset_mode"]) in ("AutoresetMode.NEXT_STEP", "NextStep")
    obs, info = env.reset(seed=[1, 2, 3])
    assert vec.last_seed == [1, 2, 3] and info["seed"] == [1, 2, 3]
    assert obs.shape == (3, 3) and obs[:, 0].tolist() == [0, 1, 2]
    obs, rewards, terms, truncs, info = env.step(np.array([0, 1, 2]))
    assert rewards.dtype == np.float64 and terms.dtype == np.bool_ and rewards.tolist() == [1.0, 1.0, 1.0]
    assert obs[:, 2].tolist() == [0, 1, 2] and info["actions"] == [0, 1, 2]
    assert info["completed_episodes"] == 0 and len(info["episode_ids"]) == 3
    ids = info["episode_ids"]
    _, _, terms, _, info = env.step([2, 2, 2])
    assert terms.tolist() == [True, True, True] and info["completed_episodes"] == 3
    _, _, terms, _, info = env.step([0, 0, 0])  # NextStep: the lanes were reset by this step
    assert not terms.any() and all(a != b for a, b in zip(info["episode_ids"], ids, strict=True))
    with pytest.raises(ValueError, match="expected 3 batched values, got 2"):
        env.step([0, 1])
    frame = env.render(env_index=2)
    assert frame.shape == (2, 2, 3) and frame[0, 0, 0] == 2
    with pytest.raises(ValueError, match="out of range"):
        env.render(env_index=3)
    env.close()
    plain = served.client(rlmesh.RemoteVectorEnv)
    obs, _ = plain.reset(seed=4)
    assert isinstance(obs, Tensor) and obs.shape == (3, 3)
    _, rewards, terms, _, _ = plain.step([1, 1, 1])
    assert isinstance(rewards, Tensor) and rewards.dtype == "float64" and terms.dtype == "bool"


def test_remote_vector_env_rejects_a_single_env_endpoint(serve) -> None:
    served = serve(TinyEnv())
    with pytest.raises(ValueError, match="single environment"):
        served.client(rlmesh.RemoteVectorEnv)


def test_gymnasium_vector_env_served_by_id(serve) -> None:
    # The in-process path with gymnasium.make_vec's own choice (CartPole's native vector env),
    # which the fast path's per-lane gymnasium.make does not reproduce.
    served = serve("CartPole-v1", num_envs=2, vectorization_mode="vector_entry_point")
    assert served.server.env_contract.num_envs == 2
    env = served.client(rnp.RemoteVectorEnv)
    obs, _ = env.reset(seed=0)
    gym = pytest.importorskip("gymnasium")
    local = gym.make_vec("CartPole-v1", num_envs=2)
    lobs, _ = local.reset(seed=0)
    assert np.array_equal(obs, lobs)
    for i in range(30):
        actions = np.array([i % 2, (i + 1) % 2])
        got = env.step(actions)
        want = local.step(actions)
        for a, b in zip(got[:4], want[:4], strict=True):
            assert np.array_equal(a, b)
    local.close()


@pytest.mark.parametrize("transport", ["unix-shm", "tcp-inline"])
def test_request_timeout_and_per_call_timeout(serve, transport: str) -> None:
    slow = SlowEnv(delay=1.0)
    served = serve(slow, transport)
    env = served.client(request_timeout_seconds=0.2)
    env.reset()
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out after 0.2"):
        env.step(0)
    assert 0.15 < time.monotonic() - start < 0.9
    with pytest.raises(rlmesh.OperationTimeout):
        env.step(0, timeout=0.1)
    # A generous per-call timeout wins over the constructor's; the late answers are skipped.
    obs, *_ = env.step(1, timeout=10)
    assert obs == 1
    with pytest.raises(ValueError):
        env.step(0, timeout=-1)
    with pytest.raises(ValueError):
        served.client(request_timeout_seconds=float("nan"))


def test_connect_timeout_retries_until_the_server_appears(tmp_path) -> None:
    address = f"unix://{tmp_path}/late.sock"
    servers: list[rlmesh.EnvServer] = []

    def start_later() -> None:
        time.sleep(0.4)
        servers.append(rlmesh.EnvServer(TinyEnv(), address).start())

    thread = threading.Thread(target=start_later)
    thread.start()
    try:
        start = time.monotonic()
        env = rlmesh.RemoteEnv(address, connect_timeout_seconds=10)
        assert time.monotonic() - start >= 0.3
        assert env.reset()[0] == 0
        env.close()
    finally:
        thread.join()
        for server in servers:
            server.shutdown()


def test_unreachable_addresses_raise_connection_error(tmp_path) -> None:
    with pytest.raises(ConnectionError, match="is the EnvServer running"):
        rlmesh.RemoteEnv(f"unix://{tmp_path}/nobody.sock")
    with pytest.raises(ConnectionError):
        rlmesh.RemoteEnv("tcp://127.0.0.1:1")
    start = time.monotonic()
    with pytest.raises(ConnectionError):
        rlmesh.RemoteEnv(f"unix://{tmp_path}/nobody.sock", connect_timeout_seconds=0.3)
    assert 0.25 < time.monotonic() - start < 3


def test_address_helpers_and_errors(serve, tmp_path) -> None:
    served = serve(TinyEnv(), "tcp-inline")
    port = int(served.server.address.rsplit(":", 1)[1])
    env = rlmesh.RemoteEnv(host="127.0.0.1", port=port)
    assert env.address == f"tcp://127.0.0.1:{port}"
    env.close()
    with pytest.raises(ValueError, match="cannot be combined"):
        rlmesh.RemoteEnv(served.server.address, port=port)
    with pytest.raises(TypeError):
        rlmesh.RemoteEnv(host="127.0.0.1", port="80")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rlmesh.RemoteEnv("")


def test_remote_shutdown_needs_permission(serve) -> None:
    env_obj = TinyEnv()
    denied = serve(env_obj)
    assert denied.client().shutdown("please") is False
    assert not denied.server.wait(0.05)
    allowed = serve(TinyEnv(), options=rlmesh.ServeOptions(allow_remote_shutdown=True))
    client = allowed.client()
    assert client.shutdown("done") is True
    assert allowed.server.wait(5.0) is True
    with pytest.raises(ConnectionError):
        client.step(0)


@pytest.mark.parametrize("transport", ["unix-shm", "tcp-shm"])
def test_a_client_that_cannot_map_the_servers_memory_falls_back_to_inline(
    serve, transport, monkeypatch, caplog
) -> None:
    from rlmesh import errors
    from rlmesh.shm import Segment

    served = serve(CountEnv, transport)

    def refuse(*args, **kwargs):
        raise errors.ShmError("no shared /dev/shm here")

    monkeypatch.setattr(Segment, "attach", classmethod(lambda cls, *a, **k: refuse()))

    def refuse_fd(cls, fd, *args, **kwargs):
        os.close(fd)  # attach_memfd consumes its descriptor, refused or not
        refuse()

    # Over a Unix socket the segments come as memfds.
    monkeypatch.setattr(Segment, "attach_memfd", classmethod(refuse_fd))
    with caplog.at_level("INFO", logger="rlmesh.server"):
        env = served.client(rnp.RemoteEnv)
    assert env.data_plane == "inline"
    obs, _ = env.reset(seed=6)
    assert obs[2] == 6.0 and env.step(1)[0][1] == 1.0
    assert any("could not map our shared memory" in r.message for r in caplog.records)


def test_sync_mode_serves_a_sync_vector_env_that_takes_per_lane_seeds(serve) -> None:
    gym = pytest.importorskip("gymnasium")
    served = serve("CartPole-v1", num_envs=3, vectorization_mode="sync")
    env = served.client(rnp.RemoteVectorEnv)
    obs, _ = env.reset(seed=[5, 6, 7])
    local = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 3)
    lobs, _ = local.reset(seed=[5, 6, 7])
    assert np.array_equal(obs, lobs)
    mask = np.array([False, True, False])
    obs, _ = env.reset(seed=[0, 9, 0], options={"reset_mask": mask})
    lobs, _ = local.reset(seed=[0, 9, 0], options={"reset_mask": mask})
    assert np.array_equal(obs, lobs)
    local.close()
