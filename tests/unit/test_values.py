from __future__ import annotations

import collections
import enum

import msgpack
import numpy as np
import pytest

from rlmesh import Tensor, sanitize_metadata
from rlmesh.values import MAX_DEPTH, check_value, encode_metadata


class Color(enum.Enum):
    RED = "red"
    BLUE = 2


class Level(enum.IntEnum):
    LOW = 1


Point = collections.namedtuple("Point", "x y")


def test_metadata_rules() -> None:
    info = {
        "array": np.arange(4).reshape(2, 2),
        "scalar": np.float32(0.5),
        "int": np.int64(7),
        "flag": np.bool_(True),
        "enum": Color.RED,
        "intenum": Level.LOW,
        "tuple": (1, "a", None),
        "point": Point(1, 2),
        "bytes": b"\x00\xff",
        "big": 2**53 + 1,
        "nested": {"a": [np.uint8(3), {"b": Color.BLUE}]},
        "tensor": Tensor(np.array([1.5, 2.5], np.float32).tobytes(), (2,), "float32"),
        "f64": np.float64(1.25),
    }
    out = encode_metadata(info)
    assert out == {
        "array": [[0, 1], [2, 3]],
        "scalar": 0.5,
        "int": 7,
        "flag": True,
        "enum": "red",
        "intenum": 1,
        "tuple": [1, "a", None],
        "point": {"x": 1, "y": 2},
        "bytes": b"\x00\xff",
        "big": 2**53 + 1,
        "nested": {"a": [3, {"b": 2}]},
        "tensor": [1.5, 2.5],
        "f64": 1.25,
    }
    assert type(out["f64"]) is float and type(out["intenum"]) is int
    # The result is msgpack-able and survives exactly.
    assert msgpack.unpackb(msgpack.packb(out), raw=False, strict_map_key=False) == out


@pytest.mark.parametrize("bad", [object(), {1, 2}, 1 + 2j, 2**64, -(2**63) - 1])
def test_strict_metadata_rejects_unknown_objects_naming_sanitize(bad: object) -> None:
    with pytest.raises(TypeError, match=r"rlmesh\.sanitize_metadata"):
        encode_metadata({"x": [bad]})


def test_strict_metadata_rejects_non_string_keys() -> None:
    with pytest.raises(TypeError, match=r"rlmesh\.sanitize_metadata"):
        encode_metadata({5: "five"})


def test_cycles_and_depth_raise_value_error() -> None:
    cyclic: dict[str, object] = {}
    cyclic["self"] = cyclic
    with pytest.raises(ValueError, match="cycle"):
        encode_metadata(cyclic)
    with pytest.raises(ValueError, match="cycle"):
        sanitize_metadata(cyclic)
    deep: object = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(ValueError, match="deeper"):
        encode_metadata(deep)
    # Shared (non-cyclic) references are fine.
    shared = [1, 2]
    assert encode_metadata({"a": shared, "b": shared}) == {"a": [1, 2], "b": [1, 2]}


def test_sanitize_is_lossy_but_never_raises_on_unknowns() -> None:
    class Thing:
        def __str__(self) -> str:
            return "thing"

    out = sanitize_metadata({5: Thing(), "set": {3}, "big": 2**70, "b": b"x", "t": (1, 2), "n": None})
    assert out == {"5": "thing", "set": "{3}", "big": str(2**70), "b": b"x", "t": [1, 2], "n": None}
    assert sanitize_metadata({"v": 2**53 + 1})["v"] == 2**53 + 1
    # A sanitized tree always passes the strict rules.
    assert encode_metadata(out) == out


def test_check_value() -> None:
    tensor = Tensor.zeros((2,), "int8")
    check_value({"obs": [tensor, (1, 2.0, "x", b"y", None, True)]})
    with pytest.raises(TypeError, match="from_array"):
        check_value({"obs": np.zeros(2)})
    with pytest.raises(TypeError):
        check_value({1: 2})
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError):
        check_value(loop)


class _Pose:
    def __init__(self, xyz: list[float]) -> None:
        self.xyz = xyz

    def __repr__(self) -> str:
        return f"Pose({self.xyz})"


def test_enums_carry_their_value_if_it_fits_else_their_name() -> None:
    import enum

    class Rich(enum.Enum):
        HOME = _Pose([0.0, 0.0, 0.0])

    class Color(enum.Enum):
        RED = "red"

    class Number(enum.IntEnum):
        ONE = 1

    class Pair(enum.Enum):
        XY = (1, 2)

    info = {"rich": Rich.HOME, "color": Color.RED, "one": Number.ONE, "pair": Pair.XY}
    expected = {"rich": "HOME", "color": "red", "one": 1, "pair": [1, 2]}
    assert sanitize_metadata(info) == expected
    assert encode_metadata(info) == expected
    assert type(sanitize_metadata(info)["one"]) is int


@pytest.mark.parametrize("bad", [[("a", 1)], ("a", 1), "text", 3, None])
def test_sanitize_refuses_a_non_mapping_at_the_top(bad: object) -> None:
    with pytest.raises(TypeError, match="mapping"):
        sanitize_metadata(bad)
