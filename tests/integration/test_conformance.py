"""Observation value checks where the server encodes them: warn, strict, off; NaN always rejected."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

import rlmesh
import rlmesh.numpy as rnp
from rlmesh import Tensor, spaces
from rlmesh.errors import RemoteError
from tests.conftest import run_python
from tests.envs import ScriptedObsEnv, ScriptedVectorEnv

pytestmark = pytest.mark.timeout(120)

KEY = "rlmesh.conformance.warning"
BOX = spaces.Box(0.0, 1.0, (2,), "float32")


def f32(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


@pytest.fixture(autouse=True)
def no_policy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The default is what these tests pin: a developer's shell must not change it.
    monkeypatch.delenv("RLMESH_VALIDATION_POLICY", raising=False)


@pytest.mark.parametrize("transport", ["unix-shm", "unix-inline", "tcp-shm", "tcp-inline"])
def test_out_of_bounds_is_delivered_with_a_warning_once_per_path_and_session(serve, transport: str) -> None:
    env = ScriptedObsEnv(BOX, [f32(2.0, 0.25), f32(2.0, 0.25), f32(0.5, -3.0), f32(0.5, 0.5)])
    client = serve(env, transport).client(rnp.RemoteEnv)
    obs, info = client.reset()
    assert obs.tolist() == [2.0, 0.25]  # delivered unchanged
    assert info["from"] == "reset"  # the env's own info is kept
    assert info[KEY] == [{"kind": "observation", "path": "$", "detail": "2.0 at index (0,) is above 1.0"}]
    obs, _, _, _, info = client.step(0)
    assert obs.tolist() == [2.0, 0.25] and KEY not in info  # the same path: told once
    obs, _, _, _, info = client.step(0)
    assert obs.tolist() == [0.5, -3.0] and KEY not in info  # still the same (kind, path)
    _, _, _, _, info = client.step(0)
    assert KEY not in info and info["from"] == "step"


def test_every_value_path_is_reported_and_a_new_session_is_told_again(serve) -> None:
    space = spaces.Dict(
        {
            "pos": spaces.Box(-1.0, 1.0, (3,), "float32"),
            "pair": spaces.Tuple([spaces.Discrete(3), spaces.Text(8, charset="abc")]),
            "grid": spaces.MultiDiscrete([2, 3]),
            "bits": spaces.MultiBinary(2),
        }
    )
    good = {
        "pos": f32(0, 0, 0),
        "pair": (1, "abc"),
        "grid": np.array([1, 2]),
        "bits": np.array([0, 1], np.int8),
    }
    bad = {
        "pos": f32(0, 1.5, 0),
        "pair": (3, "abz"),
        "grid": np.array([1, 3]),
        "bits": np.array([0, 2], np.int8),
    }
    served = serve(ScriptedObsEnv(space, [good, bad, bad]))
    client = served.client(rnp.RemoteEnv)
    _, info = client.reset()
    assert KEY not in info
    obs, _, _, _, info = client.step(0)
    assert obs["pair"] == (3, "abz") and obs["grid"].tolist() == [1, 3]
    warnings = {w["path"]: w["detail"] for w in info[KEY]}
    assert warnings == {
        "$.pos": "1.5 at index (1,) is above 1.0",
        "$.pair[0]": "3 is outside Discrete(3, start=0)",
        "$.pair[1]": "text 'abz' uses characters outside the charset: 'z'",
        "$.grid": "3 at index (1,) is above 2",
        "$.bits": "2 at index (1,) is above 1",
    }
    assert {w["kind"] for w in info[KEY]} == {"observation"}
    _, _, _, _, info = client.step(0)
    assert KEY not in info
    client.close()
    # One env object, a new client: a new session, told again.
    again = served.client(rnp.RemoteEnv)
    _, info = again.reset(options={"rewind": 1})
    assert sorted(w["path"] for w in info[KEY]) == ["$.bits", "$.grid", "$.pair[0]", "$.pair[1]", "$.pos"]


def test_text_length_outside_the_space_is_a_deviation(serve) -> None:
    client = serve(ScriptedObsEnv(spaces.Text(4, min_length=2), ["abcdef"])).client()
    obs, info = client.reset()
    assert obs == "abcdef"
    assert info[KEY][0]["detail"] == "text of length 6 is outside [2, 4]"


@pytest.mark.parametrize("where", ["reset", "step"])
@pytest.mark.parametrize("transport", ["unix-shm", "tcp-inline"])
def test_nan_is_always_rejected_as_an_env_error(serve, transport: str, where: str) -> None:
    script = [f32(math.nan, 0.25)] if where == "reset" else [f32(0.5, 0.5), f32(0.5, math.nan)]
    env = ScriptedObsEnv(BOX, [*script, f32(0.5, 0.5)])
    client = serve(env, transport).client(rnp.RemoteEnv)
    if where == "step":
        client.reset()
    with pytest.raises(
        RuntimeError, match=r"NaN at index \(.*\); NaN observations are always rejected"
    ) as info:
        client.reset() if where == "reset" else client.step(0)
    assert isinstance(info.value, RemoteError) and not isinstance(info.value, ValueError)
    assert info.value.remote_type.endswith("SpecError")
    obs, _ = client.reset()  # the session goes on
    assert obs.tolist() == [0.5, 0.5]


def test_nan_under_strict_too_and_in_unbounded_and_large_boxes(serve) -> None:
    big = spaces.Box(-math.inf, math.inf, (256, 256), "float32")
    frame = np.zeros((256, 256), np.float32)
    frame[100, 7] = math.nan
    options = rlmesh.ServeOptions(validation="strict")
    client = serve(ScriptedObsEnv(big, [frame]), options=options).client(rnp.RemoteEnv)
    with pytest.raises(RemoteError, match=r"NaN at index \(100, 7\) \(1 NaN values\)"):
        client.reset()


@pytest.mark.parametrize("source", ["env var", "options"])
def test_strict_rejects_deviations(serve, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    kwargs = {}
    if source == "env var":
        monkeypatch.setenv("RLMESH_VALIDATION_POLICY", "strict")
    else:
        kwargs["options"] = rlmesh.ServeOptions(validation="strict")
    client = serve(ScriptedObsEnv(BOX, [f32(0.5, 0.5), f32(-0.5, 0.5)]), **kwargs).client(rnp.RemoteEnv)
    _, info = client.reset()
    assert KEY not in info
    with pytest.raises(RemoteError, match=r"outside its space at \$: -0.5 at index \(0,\) is below 0.0"):
        client.step(0)
    with pytest.raises(RemoteError, match="strict"):  # every time, not once
        client.step(0)


def test_options_override_the_environment_variable(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLMESH_VALIDATION_POLICY", "strict")
    options = rlmesh.ServeOptions(validation="warn")
    client = serve(ScriptedObsEnv(BOX, [f32(-0.5, 0.5)]), options=options).client(rnp.RemoteEnv)
    obs, info = client.reset()
    assert obs.tolist() == [-0.5, 0.5] and len(info[KEY]) == 1


@pytest.mark.parametrize("source", ["env var", "options"])
def test_off_checks_nothing(serve, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    kwargs = {}
    if source == "env var":
        monkeypatch.setenv("RLMESH_VALIDATION_POLICY", "OFF")
    else:
        kwargs["options"] = rlmesh.ServeOptions(validation="off")
    client = serve(ScriptedObsEnv(BOX, [f32(5.0, math.nan)]), **kwargs).client(rnp.RemoteEnv)
    obs, info = client.reset()
    assert obs[0] == 5.0 and math.isnan(obs[1]) and KEY not in info


def test_an_unknown_environment_value_means_warn(
    serve, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RLMESH_VALIDATION_POLICY", "pedantic")
    with caplog.at_level(logging.WARNING, logger="rlmesh"):
        served = serve(ScriptedObsEnv(BOX, [f32(3.0, 0.5)]))
    assert "RLMESH_VALIDATION_POLICY='pedantic' is not one of warn, strict, off; using warn" in caplog.text
    _, info = served.client(rnp.RemoteEnv).reset()
    assert info[KEY][0]["path"] == "$"


def test_vector_envs_are_checked_per_lane(serve) -> None:
    batches = [
        np.array([[0.5, 0.5], [0.5, 0.5]], np.float32),
        np.array([[0.5, 0.5], [0.5, 1.5]], np.float32),
        np.array([[math.nan, 0.5], [0.5, 0.5]], np.float32),
    ]
    client = serve(ScriptedVectorEnv(BOX, batches)).client(rnp.RemoteVectorEnv)
    _, info = client.reset()
    assert KEY not in info
    obs, _, _, _, info = client.step(np.zeros(2, np.int64))
    assert obs.tolist() == [[0.5, 0.5], [0.5, 1.5]]
    assert info[KEY] == [
        {"kind": "observation", "path": "$", "detail": "1.5 in lane 1 at index (1,) is above 1.0"}
    ]
    assert info["lanes"] == [0, 1] and len(info["episode_ids"]) == 2
    with pytest.raises(RemoteError, match=r"NaN in lane 0 at index \(0,\)"):
        client.step(np.zeros(2, np.int64))


def test_vector_discrete_and_text_lanes(serve) -> None:
    space = spaces.Dict({"d": spaces.Discrete(3, start=1), "t": spaces.Text(3, charset="xy")})
    batches = [{"d": np.array([1, 3]), "t": ["xy", "yx"]}, {"d": np.array([0, 3]), "t": ["xy", "xyz"]}]
    client = serve(ScriptedVectorEnv(space, batches)).client(rnp.RemoteVectorEnv)
    _, info = client.reset()
    assert KEY not in info
    _, _, _, _, info = client.step(np.zeros(2, np.int64))
    assert {w["path"]: w["detail"] for w in info[KEY]} == {
        "$.d": "0 in lane 0 is below 1",
        "$.t": "lane 1: text 'xyz' uses characters outside the charset: 'z'",
    }


def test_cast_values_are_checked_as_the_client_sees_them(serve) -> None:
    # float64 values for a float32 space: 1.0000000001 rounds to 1.0 (inside), 1.01 does not.
    env = ScriptedObsEnv(
        BOX, [np.array([1.0000000001, 0.0]), np.array([1.01, 0.0]), np.array([0.0, math.nan])]
    )
    client = serve(env).client(rnp.RemoteEnv)
    _, info = client.reset()
    assert KEY not in info
    _, _, _, _, info = client.step(0)
    assert info[KEY][0]["detail"] == "1.01 at index (0,) is above 1.0"
    with pytest.raises(RemoteError, match="NaN"):
        client.step(0)


def test_rlmesh_tensor_observations_are_checked(serve) -> None:
    tensor = Tensor(f32(0.5, 7.0).tobytes(), (2,), "float32")
    client = serve(ScriptedObsEnv(BOX, [tensor])).client()
    obs, info = client.reset()
    assert obs.tolist() == [0.5, 7.0] and info[KEY][0]["detail"] == "7.0 at index (1,) is above 1.0"


def test_large_arrays_uniform_and_elementwise(serve) -> None:
    low = np.zeros((64, 64), np.float32)
    high = np.ones((64, 64), np.float32)
    high[:, 0] = np.inf
    space = spaces.Dict(
        {
            "image": spaces.Box(0, 255, (64, 64, 3), "uint8"),
            "uniform": spaces.Box(-1.0, 1.0, (64, 64), "float32"),
            "elementwise": spaces.Box(low, high, (64, 64), "float32"),
            "counts": spaces.Box(0, 10, (100,), "int32"),
        }
    )
    good = {
        "image": np.full((64, 64, 3), 255, np.uint8),
        "uniform": np.zeros((64, 64), np.float32),
        "elementwise": np.where(np.arange(64) == 0, 1e30, 0.5).astype(np.float32)
        * np.ones((64, 1), np.float32),
        "counts": np.arange(100, dtype=np.int32) % 11,
    }
    bad = {key: value.copy() for key, value in good.items()}
    bad["uniform"][3, 4] = -2.0
    bad["elementwise"][5, 1] = 1.5
    bad["counts"][99] = 11
    client = serve(ScriptedObsEnv(space, [good, bad])).client(rnp.RemoteEnv)
    _, info = client.reset()
    assert KEY not in info
    _, _, _, _, info = client.step(0)
    assert {w["path"]: w["detail"] for w in info[KEY]} == {
        "$.uniform": "-2.0 at index (3, 4) is below -1.0",
        "$.elementwise": "1.5 at index (5, 1) is above 1.0",
        "$.counts": "11 at index (99,) is above 10",
    }


def test_a_failed_response_does_not_swallow_its_warnings(serve) -> None:
    space = spaces.Dict({"a": BOX, "b": BOX})
    script = [{"a": f32(5.0, 0.0), "b": f32(math.nan, 0.0)}, {"a": f32(5.0, 0.0), "b": f32(0.0, 0.0)}]
    client = serve(ScriptedObsEnv(space, script)).client(rnp.RemoteEnv)
    with pytest.raises(RemoteError, match="NaN"):
        client.reset()  # "a" deviated, but this response never reached the client
    _, info = client.reset()
    assert [w["path"] for w in info[KEY]] == ["$.a"]


NO_NUMPY_SERVER = """
import sys, json, struct, math
for name in ("numpy", "jax", "ml_dtypes"):
    sys.modules[name] = None  # importing them now raises ImportError
import rlmesh
from rlmesh import Tensor, spaces
from rlmesh.errors import RemoteError

class Env:
    metadata = {}
    render_mode = None
    def __init__(self):
        self.observation_space = spaces.Box(0.0, 1.0, (2,), "float32")
        self.action_space = spaces.Discrete(2)
        self.script = [(0.5, 2.0), (0.5, math.nan), (0.5, 0.5)]
        self.i = 0
    def _obs(self):
        value = self.script[min(self.i, 2)]
        self.i += 1
        return Tensor(struct.pack("<2f", *value), (2,), "float32")
    def reset(self, *, seed=None, options=None):
        return self._obs(), {}
    def step(self, action):
        return self._obs(), 0.0, False, False, {}
    def close(self):
        pass

out = {}
with rlmesh.EnvServer(Env()) as server:
    server.start()
    with rlmesh.RemoteEnv(server.address, request_timeout_seconds=30) as env:
        obs, info = env.reset()
        out["obs"] = obs.tolist()
        out["warning"] = info.get("rlmesh.conformance.warning")
        try:
            env.step(0)
        except RemoteError as exc:
            out["nan"] = str(exc)
        out["after"] = env.step(0)[0].tolist()
print(json.dumps(out))
"""


def test_the_checks_work_on_a_server_without_numpy() -> None:
    result = json.loads(run_python(NO_NUMPY_SERVER, env={"RLMESH_VALIDATION_POLICY": "warn"}))
    assert result["obs"] == [0.5, 2.0]
    assert result["warning"] == [
        {"kind": "observation", "path": "$", "detail": "2.0 at index (1,) is above 1.0"}
    ]
    assert "NaN at index (1,)" in result["nan"]
    assert result["after"] == [0.5, 0.5]
