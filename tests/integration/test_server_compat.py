"""Server side of the published API: framework=, device=, keyword-only ServeOptions, legacy vector envs."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import rlmesh
import rlmesh.numpy as rnp
from rlmesh.errors import RemoteError
from tests.conftest import ROOT, TRANSPORTS, import_or_skip, run_python, serve_subprocess
from tests.envs import JaxEnv, JaxVectorEnv, LegacyVectorEnv, TinyEnv

pytestmark = pytest.mark.timeout(120)


# -- framework= and device= ------------------------------------------------------------


class CountingFactory:
    """A factory that counts the envs it made."""

    def __init__(self) -> None:
        self.made = 0

    def __call__(self) -> TinyEnv:
        self.made += 1
        return TinyEnv()


@pytest.mark.parametrize("framework", [None, "numpy"])
def test_device_without_a_framework_with_devices_is_a_value_error(framework: str | None) -> None:
    factory = CountingFactory()
    with pytest.raises(ValueError, match="device=.*framework='jax' or 'torch'"):
        rlmesh.EnvServer(factory, framework=framework, device="cpu")
    assert factory.made == 0  # refused before any env was made


def test_unknown_framework_and_bad_types() -> None:
    with pytest.raises(ValueError, match="unknown framework 'tensorflow'"):
        rlmesh.EnvServer(TinyEnv(), framework="tensorflow")
    with pytest.raises(TypeError, match="framework must be a str"):
        rlmesh.EnvServer(TinyEnv(), framework=3)  # type: ignore[arg-type]


def test_torch_framework_checks_its_device_before_any_env_is_made() -> None:
    import_or_skip("torch")
    factory = CountingFactory()
    with pytest.raises(ValueError, match="invalid torch device 'abacus'"):
        rlmesh.EnvServer(factory, framework="torch", device="abacus")
    with pytest.raises(TypeError, match="torch.device"):
        rlmesh.EnvServer(factory, framework="torch", device=3)
    assert factory.made == 0


def test_framework_and_device_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        rlmesh.EnvServer(TinyEnv(), None, None, None, None, None, None, None, None, True, "jax")  # type: ignore[call-arg]


def test_the_default_server_never_imports_jax() -> None:
    out = run_python(
        "import sys, rlmesh\n"
        "from tests.envs import TinyEnv\n"
        "with rlmesh.EnvServer(TinyEnv()) as server:\n"
        "    server.start()\n"
        "    with rlmesh.RemoteEnv(server.address) as env:\n"
        "        env.reset(); env.step(1)\n"
        "print('jax' in sys.modules)\n"
    )
    assert out.strip() == "False"


jax_only = pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import jax"], capture_output=True).returncode != 0,
    reason="jax is not installed",
)


@jax_only
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_jax_env_gets_jax_actions_from_a_numpy_client(serve, transport: str) -> None:
    import jax

    env = JaxEnv()
    served = serve(env, transport, framework="jax", device="cpu")
    client = served.client(rnp.RemoteEnv)
    obs, info = client.reset(seed=2)
    # The env's jax.Array observation arrives as the client's NumPy array.
    assert isinstance(obs, np.ndarray) and obs.dtype == np.float32 and obs.tolist() == [2.0, 2.0, 2.0]
    obs, reward, terminated, truncated, info = client.step(
        {"move": np.array([0.5, -0.25, 1.0], np.float32), "mode": 1}
    )
    assert obs.tolist() == [3.0, 1.5, 4.0]
    assert type(reward) is float and reward == 1.25
    assert terminated is False and truncated is False
    assert info["norm"] == pytest.approx(8.5)
    # float64 actions from the client are cast to the space's float32 before JAX sees them.
    obs, *_ = client.step({"move": np.array([0.25, 0.25, 0.25]), "mode": 0})
    assert obs.tolist() == [3.25, 1.75, 4.25]
    assert env.devices == [{jax.devices("cpu")[0]}] * 2


@jax_only
@pytest.mark.parametrize("transport", ["unix-shm", "tcp-inline"])
def test_a_jax_env_driven_by_a_jax_client(serve, transport: str) -> None:
    import jax
    import jax.numpy as jnp

    import rlmesh.jax as rjax

    env = JaxEnv()
    served = serve(env, transport, framework="jax", device=jax.devices("cpu")[0])
    client = served.client(rjax.RemoteEnv)
    obs, _ = client.reset()
    assert isinstance(obs, jax.Array) and obs.tolist() == [0.0, 0.0, 0.0]
    for _ in range(3):
        obs, reward, *_ = client.step({"move": jnp.array([1.0, 0.5, -1.0], jnp.float32), "mode": 0})
    assert isinstance(obs, jax.Array) and obs.tolist() == [3.0, 1.5, -3.0]
    assert reward == 0.5
    assert len(env.devices) == 3


@jax_only
def test_without_the_framework_a_jax_env_sees_numpy_actions(serve) -> None:
    # What framework="jax" is for: the same env served plainly refuses its actions.
    served = serve(JaxEnv())
    client = served.client(rnp.RemoteEnv)
    client.reset()
    with pytest.raises(RemoteError, match="wants jax.Array actions, got ndarray"):
        client.step({"move": np.zeros(3, np.float32), "mode": 0})


@jax_only
def test_a_jax_vector_env(serve) -> None:
    served = serve(JaxVectorEnv(), framework="jax")  # no device: JAX's default device
    client = served.client(rnp.RemoteVectorEnv)
    obs, _ = client.reset()
    assert obs.shape == (2, 2)
    obs, rewards, terminations, truncations, _ = client.step(np.array([[0.5, 0.5], [-1.0, 0.25]], np.float32))
    assert obs.tolist() == [[0.5, 0.5], [-1.0, 0.25]]
    assert rewards.tolist() == [1.0, -0.75] and terminations.tolist() == [False, False]


@jax_only
def test_jax_devices_that_do_not_exist_are_value_errors() -> None:
    import jax

    with pytest.raises(ValueError, match="JAX has 1 cpu device"):
        rlmesh.EnvServer(TinyEnv(), framework="jax", device=f"cpu:{len(jax.devices('cpu'))}")
    with pytest.raises(ValueError, match="invalid device 'cpu:x'"):
        rlmesh.EnvServer(TinyEnv(), framework="jax", device="cpu:x")
    with pytest.raises(ValueError, match="not available to JAX"):
        rlmesh.EnvServer(TinyEnv(), framework="jax", device="no_such_platform")
    with pytest.raises(TypeError, match="device must be a str or a jax.Device"):
        rlmesh.EnvServer(TinyEnv(), framework="jax", device=0)
    if not any(d.platform == "gpu" for d in jax.devices()):
        with pytest.raises(ValueError, match="'cuda:0' is not available to JAX"):
            rlmesh.EnvServer(TinyEnv(), framework="jax", device="cuda:0")


@jax_only
def test_rlmesh_serve_with_framework_and_device(tmp_path) -> None:
    from rlmesh._demo import stop_server

    proc, address = serve_subprocess(
        "tests.envs:make_jax_env", f"unix://{tmp_path}/jax.sock", "--framework", "jax", "--device", "cpu"
    )
    try:
        with rnp.RemoteEnv(address, request_timeout_seconds=60) as env:
            env.reset(seed=1)
            obs, reward, *_ = env.step({"move": np.array([1.0, 0.0, -1.0], np.float32), "mode": 1})
            assert obs.tolist() == [3.0, 1.0, -1.0] and reward == 0.0
    finally:
        stop_server(proc)


def test_rlmesh_serve_refuses_bad_framework_options() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def serve_cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "rlmesh", "serve", "tests.envs:TinyEnv", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)

    if importlib.util.find_spec("torch") is not None:
        result = serve_cli("--framework", "torch", "--device", "abacus")
        assert result.returncode != 0 and "invalid torch device 'abacus'" in result.stderr
        assert "Traceback" not in result.stderr
    result = serve_cli("--device", "cpu")
    assert result.returncode != 0 and "device=... needs a framework" in result.stderr


# -- ServeOptions -----------------------------------------------------------------------


def test_serve_options_are_keyword_only_and_read_only() -> None:
    with pytest.raises(TypeError):
        rlmesh.ServeOptions(True)  # type: ignore[misc]
    options = rlmesh.ServeOptions(allow_remote_shutdown=True, idle_timeout_seconds=2.5, validation="strict")
    assert options.allow_remote_shutdown is True and options.idle_timeout_seconds == 2.5
    assert options.validation == "strict"
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.allow_remote_shutdown = False  # type: ignore[misc]
    assert rlmesh.ServeOptions().validation is None
    with pytest.raises(ValueError, match="validation must be one of warn, strict, off"):
        rlmesh.ServeOptions(validation="loud")


# -- legacy 4-tuple vector envs: done + TimeLimit.truncated per lane ----------------------


@pytest.mark.parametrize("transport", ["unix-shm", "tcp-inline"])
def test_legacy_vector_done_splits_per_lane(serve, transport: str) -> None:
    steps = [
        ([True, True], [True, False]),  # lane 0 hit the time limit, lane 1 ended for real
        ([False, True], [False, True]),
        ([True, False], np.array([False, False])),
        ([True, True], True),  # one flag for every lane
    ]
    served = serve(LegacyVectorEnv(steps), transport)
    client = served.client(rnp.RemoteVectorEnv)
    client.reset()
    expected = [
        ([False, True], [True, False]),
        ([False, False], [False, True]),
        ([True, False], [False, False]),
        ([False, False], [True, True]),
    ]
    for terminated, truncated in expected:
        _, _, terminations, truncations, info = client.step(np.zeros(2, np.int64))
        assert terminations.tolist() == terminated
        assert truncations.tolist() == truncated
        assert info["completed_episodes"] == sum(terminated) + sum(truncated)


def test_legacy_vector_truncation_honours_gymnasiums_mask(serve) -> None:
    # The key is present for lane 1 only: lane 0's True is not a truncation.
    served = serve(LegacyVectorEnv([([True, True], [True, True])], mask=[False, True]))
    client = served.client(rnp.RemoteVectorEnv)
    client.reset()
    _, _, terminations, truncations, _ = client.step(np.zeros(2, np.int64))
    assert terminations.tolist() == [True, False] and truncations.tolist() == [False, True]


def test_legacy_vector_truncation_of_the_wrong_length_is_an_env_error(serve) -> None:
    served = serve(LegacyVectorEnv([([True, True], [True, False, True])]))
    client = served.client(rnp.RemoteVectorEnv)
    client.reset()
    with pytest.raises(RemoteError, match="3 entries for 2 lanes"):
        client.step(np.zeros(2, np.int64))
    client.reset()  # the session survives


class OldGymVectorEnv(LegacyVectorEnv):
    """Old gym vector envs return one info dict per lane."""

    def step(self, actions):  # type: ignore[no-untyped-def]
        obs, rewards, _, _ = super().step(actions)
        infos = [{"TimeLimit.truncated": True}, {}]
        return obs, rewards, np.array([True, True]), infos


def test_legacy_vector_env_with_per_lane_info_dicts(serve) -> None:
    served = serve(OldGymVectorEnv([([True, True], False)]))
    client = served.client(rnp.RemoteVectorEnv)
    client.reset()
    _, _, terminations, truncations, info = client.step(np.zeros(2, np.int64))
    assert terminations.tolist() == [False, True] and truncations.tolist() == [True, False]
    assert info["infos"] == [{"TimeLimit.truncated": True}, {}]
