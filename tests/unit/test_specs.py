"""rlmesh.specs.EnvContract: construction, the wire dict, validation."""

from __future__ import annotations

import pickle
from typing import Any

import msgpack
import pytest

from rlmesh import specs
from rlmesh.errors import SpecError
from rlmesh.spaces import Box, Dict, Discrete, SpaceSpec, Text
from rlmesh.specs import EnvContract

OBS = Dict({"pos": Box(-1.0, 1.0, (3,)), "name": Text(8)})
ACT = Discrete(4, start=1)


def contract(**overrides: Any) -> EnvContract:
    kwargs: dict[str, Any] = {
        "render_mode": "rgb_array",
        "num_envs": 4,
        "metadata": {"render_fps": 30, "tags": ["a", 1.5, None], "raw": b"\x00"},
        "autoreset_mode": "SameStep",
    }
    kwargs.update(overrides)
    return EnvContract("Pong-v5", OBS.spec, ACT, **kwargs)


def test_exports() -> None:
    assert sorted(specs.__all__) == ["EnvContract", "SpaceSpec"]
    assert specs.SpaceSpec is SpaceSpec


def test_attributes() -> None:
    c = contract()
    assert c.id == "Pong-v5" and c.render_mode == "rgb_array" and c.num_envs == 4
    assert c.metadata == {"render_fps": 30, "tags": ["a", 1.5, None], "raw": b"\x00"}
    assert c.autoreset_mode == "SameStep"
    assert c.observation_space == OBS.spec and c.action_space == ACT.spec
    assert isinstance(c.action_space, SpaceSpec)  # a Space argument is stored as its spec
    assert c.env is c and c.spec is c


def test_space_shapes_read_as_lists_and_tuples() -> None:
    # Dict and Tuple specs have an empty shape rather than None, on both ends of the wire.
    for c in (contract(), EnvContract.from_dict(msgpack.unpackb(msgpack.packb(contract().to_dict())))):
        assert c.observation_space.shape == [] and c.observation_space.shape == ()
        assert c.action_space.shape == []
        assert c.observation_space.details["spaces"][0][1].shape == [3]
    assert contract().to_dict()["observation_space"]["shape"] is None


def test_defaults() -> None:
    single = EnvContract("E-v0", OBS, ACT)
    assert single.render_mode is None and single.num_envs == 1 and single.metadata == {}
    assert single.autoreset_mode == "Disabled"
    vector = EnvContract("E-v0", OBS, ACT, num_envs=3)
    assert vector.autoreset_mode == "NextStep"


def test_round_trip_through_msgpack() -> None:
    c = contract()
    wire = c.to_dict()
    assert set(wire) == {
        "id",
        "render_mode",
        "num_envs",
        "metadata",
        "autoreset_mode",
        "observation_space",
        "action_space",
    }
    assert wire["observation_space"] == OBS.spec.to_dict()
    unpacked = msgpack.unpackb(msgpack.packb(wire))
    assert unpacked == wire
    back = EnvContract.from_dict(unpacked)
    assert back == c and hash(back) == hash(c)
    assert back.to_dict() == wire
    assert pickle.loads(pickle.dumps(c)) == c


def test_from_dict_defaults_for_optional_keys() -> None:
    minimal = {
        "id": "E-v0",
        "observation_space": OBS.spec.to_dict(),
        "action_space": ACT.spec.to_dict(),
    }
    c = EnvContract.from_dict(minimal)
    assert c == EnvContract("E-v0", OBS, ACT)


def test_equality_is_by_content() -> None:
    assert contract() == contract()
    assert contract() != contract(num_envs=5)
    assert contract() != contract(metadata={})
    assert contract() != contract(render_mode=None)
    assert contract() != EnvContract("Pong-v5", OBS, Discrete(4), render_mode="rgb_array", num_envs=4)
    assert contract() != "Pong-v5"


def test_immutable() -> None:
    c = contract()
    with pytest.raises(AttributeError):
        c.num_envs = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        c._id = "x"
    c.metadata["render_fps"] = 1
    assert c.metadata["render_fps"] == 30


def test_repr_is_concise() -> None:
    text = repr(contract(metadata={"big": list(range(1000))}))
    assert text.startswith("EnvContract(id='Pong-v5', num_envs=4,")
    assert "SpaceSpec(kind='dict', spaces=2)" in text and "999" not in text and len(text) < 300


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"num_envs": 0}, ValueError),
        ({"num_envs": (1 << 20) + 1}, ValueError),
        ({"num_envs": True}, TypeError),
        ({"num_envs": 2.0}, TypeError),
        ({"autoreset_mode": "Sometimes"}, ValueError),
        ({"render_mode": 3}, TypeError),
        ({"render_mode": "x" * 1025}, ValueError),
        ({"metadata": [1, 2]}, TypeError),
        ({"metadata": {1: 2}}, TypeError),
    ],
)
def test_constructor_rejects_bad_arguments(overrides: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        contract(**overrides)


def test_constructor_rejects_bad_ids_and_spaces() -> None:
    with pytest.raises(ValueError):
        EnvContract("", OBS, ACT)
    with pytest.raises(ValueError):
        EnvContract("x" * 1025, OBS, ACT)
    assert EnvContract("x" * 1024, OBS, ACT).id == "x" * 1024
    with pytest.raises(TypeError):
        EnvContract(5, OBS, ACT)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        EnvContract("E-v0", object(), ACT)
    with pytest.raises(SpecError):
        EnvContract("E-v0", {"kind": "box"}, ACT)
    assert EnvContract("E-v0", OBS.spec.to_dict(), ACT).observation_space == OBS.spec


GOOD = contract().to_dict()


def changed(**changes: Any) -> dict[str, Any]:
    out = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            out.pop(key)
        else:
            out[key] = value
    return out


BAD = {
    "not a dict": ["id"],
    "unknown key": changed(extra=1),
    "non-str key": {**GOOD, 3: 1},
    "missing id": changed(id=...),
    "missing observation_space": changed(observation_space=...),
    "missing action_space": changed(action_space=...),
    "id not str": changed(id=7),
    "empty id": changed(id=""),
    "id too long": changed(id="x" * 1025),
    "render_mode not str": changed(render_mode=["human"]),
    "num_envs zero": changed(num_envs=0),
    "num_envs negative": changed(num_envs=-3),
    "num_envs bool": changed(num_envs=True),
    "num_envs float": changed(num_envs=2.0),
    "num_envs huge": changed(num_envs=2**40),
    "metadata list": changed(metadata=[1]),
    "metadata int keys": changed(metadata={1: "a"}),
    "autoreset unknown": changed(autoreset_mode="nextstep"),
    "autoreset not str": changed(autoreset_mode=1),
    "observation not dict": changed(observation_space="box"),
    "observation invalid": changed(
        observation_space={"kind": "discrete", "shape": [], "dtype": "int64", "n": 0}
    ),
    "action SpaceSpec object": changed(action_space=ACT.spec),
}


@pytest.mark.parametrize("data", list(BAD.values()), ids=list(BAD))
def test_from_dict_rejects_bad_contracts(data: Any) -> None:
    # A SpaceSpec object is not wire data: a peer can only send dicts.
    with pytest.raises(SpecError):
        EnvContract.from_dict(data)


def test_from_dict_space_errors_name_the_field() -> None:
    with pytest.raises(SpecError, match="action_space"):
        EnvContract.from_dict(
            changed(action_space={"kind": "discrete", "shape": [], "dtype": "int64", "n": 0})
        )
