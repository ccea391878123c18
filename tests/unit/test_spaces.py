"""rlmesh.spaces without Gymnasium: specs, sampling, membership, seeding, limits."""

from __future__ import annotations

import json
import math
import pickle
import struct
import time
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from rlmesh import spaces
from rlmesh._bridge import IDENTITY
from rlmesh._dtypes import DTYPES, dtype_info, integer_bounds, is_float
from rlmesh._shape import Shape
from rlmesh.errors import SpecError
from rlmesh.spaces import (
    Box,
    Dict,
    Discrete,
    MultiBinary,
    MultiDiscrete,
    Space,
    SpaceSpec,
    Text,
    Tuple,
    space_from_spec,
)
from rlmesh.tensor import Tensor
from tests.conftest import run_python

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1
F32 = struct.Struct("<f")


def f32(x: float) -> float:
    return float(F32.unpack(F32.pack(x))[0])


def tensor(values: list[Any], shape: tuple[int, ...], dtype: str) -> Tensor:
    fmt = {"float16": "e", "bfloat16": None}.get(dtype, DTYPES[dtype].struct_format)
    assert fmt is not None
    return Tensor(struct.pack(f"<{len(values)}{fmt}", *values), shape, dtype)


def all_spaces() -> list[Space[Any]]:
    return [
        Box(-1.0, 1.0, (3,), "float32"),
        Box([-1.0, -2.0], [2.0, 4.0], dtype="float64"),
        Box(INT64_MIN, INT64_MAX, (2,), "int64"),
        Box(0, UINT64_MAX, (2, 2), "uint64"),
        Box("-inf", "inf", (4,), "float32"),
        Box(0.0, "inf", (2,), "float16"),
        Box(-1.5, 2.5, (2, 3), "bfloat16"),
        Box(0, 1, (3,), "bool"),
        Box([[0, 1], [2, 3]], [[5, 6], [7, 8]], dtype="int8"),
        Box(0.0, 1.0, (0, 3)),
        Box(-1.0, 1.0, ()),
        Discrete(5),
        Discrete(3, start=-7, dtype="int16"),
        MultiBinary(6),
        MultiBinary([2, 3], dtype="int8"),
        MultiDiscrete([3, 4, 5]),
        MultiDiscrete([[2, 3], [4, 5]], start=[[1, -1], [0, 10]], dtype="int32"),
        Text(5),
        Text(8, min_length=0, charset="abc"),
        Dict({"b": Discrete(2), "a": Box(0.0, 1.0, (2,))}),
        Tuple([Discrete(2), Text(3), Dict(x=MultiBinary(2))]),
        Dict(),
        Tuple([]),
    ]


SPACES = all_spaces()


# -- import boundary ---------------------------------------------------------------


def test_import_spaces_leaves_array_libraries_out() -> None:
    out = run_python(
        "import sys, json, rlmesh.spaces, rlmesh.specs\n"
        "print(json.dumps(sorted(m for m in ('numpy', 'gymnasium', 'jax', 'ml_dtypes') "
        "if m in sys.modules)))"
    )
    assert json.loads(out) == []


def test_public_exports() -> None:
    assert sorted(spaces.__all__) == sorted(
        [
            "Box",
            "Dict",
            "Discrete",
            "MultiBinary",
            "MultiDiscrete",
            "Space",
            "SpaceSpec",
            "Text",
            "Tuple",
            "from_gymnasium_space",
            "space_from_spec",
            "to_gymnasium_space",
        ]
    )


def test_everything_works_with_numpy_blocked() -> None:
    out = run_python(
        """
import sys, json
for name in ("numpy", "gymnasium", "jax", "ml_dtypes"):
    sys.modules[name] = None
from rlmesh.spaces import Box, Dict, Discrete, MultiDiscrete, Text, Tuple
from rlmesh.spaces import SpaceSpec, space_from_spec
from rlmesh.errors import BackendUnavailable
s = Dict({"b": Box(-1.0, 1.0, (2,), "bfloat16"), "d": Discrete(3), "m": MultiDiscrete([2, 3]),
          "t": Tuple([Text(4), Box(0, 9, (2,), "uint64")])})
s.seed(5)
ok = all(s.contains(s.sample()) for _ in range(20))
back = space_from_spec(SpaceSpec.from_dict(s.spec.to_dict())) == s
try:
    s.to_gymnasium_space()
    err = None
except BackendUnavailable as exc:
    err = str(exc)
print(json.dumps({"ok": ok, "back": back, "err": err}))
"""
    )
    result = json.loads(out)
    assert result["ok"] is True and result["back"] is True
    assert "rlmesh[gymnasium]" in result["err"]


# -- spec round trips --------------------------------------------------------------


@pytest.mark.parametrize("space", SPACES, ids=repr)
def test_spec_round_trip_through_msgpack(space: Space[Any]) -> None:
    wire = space.spec.to_dict()
    unpacked = msgpack.unpackb(msgpack.packb(wire))
    assert unpacked == wire
    spec = SpaceSpec.from_dict(unpacked)
    assert spec == space.spec
    assert hash(spec) == hash(space.spec)
    assert spec.to_dict() == wire
    rebuilt = space_from_spec(spec)
    assert rebuilt == space
    assert type(rebuilt) is type(space)
    assert space_from_spec(wire) == space
    assert spec.to_space() == space


@pytest.mark.parametrize("space", SPACES, ids=repr)
def test_spaces_and_specs_pickle(space: Space[Any]) -> None:
    assert pickle.loads(pickle.dumps(space.spec)) == space.spec
    copy = pickle.loads(pickle.dumps(space))
    assert copy == space
    copy.seed(3)
    assert copy.contains(copy.sample())


def test_spec_dicts_hold_exact_extreme_values() -> None:
    d = Box(INT64_MIN, INT64_MAX, (2,), "int64").spec.to_dict()
    assert d == {
        "kind": "box",
        "shape": [2],
        "dtype": "int64",
        "bounds": "uniform",
        "low": INT64_MIN,
        "high": INT64_MAX,
    }
    assert type(d["low"]) is int
    d = Box([0, 1], [UINT64_MAX, 5], dtype="uint64").spec.to_dict()
    assert d["bounds"] == "elementwise" and d["low"] == [0, 1] and d["high"] == [UINT64_MAX, 5]
    assert msgpack.unpackb(msgpack.packb(d))["high"][0] == UINT64_MAX
    d = Box("-inf", "inf", (1,)).spec.to_dict()
    assert d["low"] == -math.inf and d["high"] == math.inf
    assert Discrete(3, start=2).spec.to_dict() == {
        "kind": "discrete",
        "shape": [],
        "dtype": "int64",
        "n": 3,
        "start": 2,
    }
    assert MultiDiscrete([[2, 3]], start=[[1, 0]]).spec.to_dict() == {
        "kind": "multi_discrete",
        "shape": [1, 2],
        "dtype": "int64",
        "nvec": [2, 3],
        "start": [1, 0],
    }
    assert Text(4, charset="cba").spec.to_dict() == {
        "kind": "text",
        "shape": [],
        "dtype": "str",
        "min_length": 1,
        "max_length": 4,
        "charset": "abc",
    }
    assert Dict({"z": Discrete(2), "a": MultiBinary(1)}).spec.to_dict()["spaces"] == [
        ["z", Discrete(2).spec.to_dict()],
        ["a", MultiBinary(1).spec.to_dict()],
    ]


def test_spec_attributes_and_immutability() -> None:
    spec = Box(0.0, 1.0, (2, 3), "float16").spec
    assert (spec.kind, spec.shape, spec.dtype) == ("box", (2, 3), "float16")
    assert dict(spec.details) == {"bounds": "uniform", "low": 0.0, "high": 1.0}
    assert (Discrete(2).spec.shape, Text(2).spec.dtype) == ((), "str")
    assert (Dict().spec.shape, Tuple([]).spec.dtype) == ((), None)
    with pytest.raises(AttributeError):
        spec._kind = "discrete"  # type: ignore[misc]
    with pytest.raises(TypeError):
        SpaceSpec()
    assert repr(spec) == "SpaceSpec(kind='box', shape=(2, 3), dtype='float16')"
    assert {spec: 1}[Box(0.0, 1.0, (2, 3), "float16").spec] == 1


def test_shapes_equal_both_lists_and_tuples() -> None:
    # The published API returns lists; numpy, JAX and Gymnasium use tuples. Both compare equal.
    box = Box(0, 1, shape=[4])
    assert box.shape == [4] and box.shape == (4,) and box.spec.shape == [4]
    assert isinstance(box.shape, Shape) and isinstance(box.shape, tuple)
    assert hash(box.shape) == hash((4,)) and {(4,): "x"}[box.shape] == "x"
    assert box.shape + [2] == [4, 2] and box.shape + (2,) == (4, 2)
    assert Discrete(3).spec.shape == [] and Discrete(3).shape == ()
    assert Text(3).shape == [] and Box(-1.0, 1.0, ()).shape == []
    assert MultiBinary([2, 3]).dims == [2, 3] and MultiBinary([2, 3]).dims == (2, 3)
    assert MultiBinary([2, 3]).shape == [2, 3] and MultiBinary(5).dims == [5]
    assert MultiDiscrete([[2, 3], [4, 5]]).shape == [2, 2]
    assert box.shape != [4, 1] and box.shape != (5,)


@pytest.mark.parametrize("space", [Dict(), Dict(a=Discrete(2)), Tuple([]), Tuple([Box(0.0, 1.0, (2,))])])
def test_composite_shapes_are_empty_not_none(space: Space[Any]) -> None:
    assert isinstance(space.shape, Shape) and space.shape == [] and space.shape == ()
    assert isinstance(space.spec.shape, Shape) and space.spec.shape == []
    assert len(space.shape) == 0 and space.dtype is None
    # The wire form is unchanged: peers read a composite's shape as None.
    wire = space.spec.to_dict()
    assert wire["shape"] is None
    assert SpaceSpec.from_dict(wire).shape == []


def test_from_dict_accepts_defaults_for_optional_keys() -> None:
    assert (
        SpaceSpec.from_dict({"kind": "discrete", "shape": [], "dtype": "int64", "n": 4}) == Discrete(4).spec
    )
    assert (
        SpaceSpec.from_dict({"kind": "multi_discrete", "shape": [2], "dtype": "int64", "nvec": [2, 3]})
        == MultiDiscrete([2, 3]).spec
    )
    assert SpaceSpec.from_dict({"kind": "text", "shape": [], "dtype": "str", "max_length": 3}) == Text(3).spec
    # Elementwise bounds that happen to agree everywhere are stored as uniform.
    assert (
        SpaceSpec.from_dict(
            {"kind": "box", "shape": [2], "dtype": "float32", "low": [0.0, 0.0], "high": [1, 1]}
        )
        == Box(0.0, 1.0, (2,)).spec
    )


# -- from_dict rejection ------------------------------------------------------------

BOX = {
    "kind": "box",
    "shape": [2],
    "dtype": "float32",
    "bounds": "uniform",
    "low": 0.0,
    "high": 1.0,
}


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if value is ...:
            out.pop(key)
        else:
            out[key] = value
    return out


def nested(depth: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"kind": "discrete", "shape": [], "dtype": "int64", "n": 2, "start": 0}
    for _ in range(depth - 1):
        spec = {"kind": "tuple", "shape": None, "dtype": None, "spaces": [spec]}
    return spec


DISCRETE = {"kind": "discrete", "shape": [], "dtype": "int64", "n": 2, "start": 0}
TEXT = {
    "kind": "text",
    "shape": [],
    "dtype": "str",
    "min_length": 1,
    "max_length": 5,
    "charset": "",
}
MD = {"kind": "multi_discrete", "shape": [2], "dtype": "int64", "nvec": [2, 3], "start": [0, 0]}

BAD_SPECS = {
    "not a dict": [1, 2],
    "no kind": with_(BOX, kind=...),
    "unknown kind": with_(BOX, kind="graph"),
    "kind not str": with_(BOX, kind=3),
    "unknown key": with_(BOX, extra=1),
    "missing key": with_(BOX, high=...),
    "non-str key": {**BOX, 1: 2},
    "alias dtype": with_(BOX, dtype="float"),
    "unknown dtype": with_(BOX, dtype="complex64"),
    "dtype not str": with_(BOX, dtype=7),
    "shape not list": with_(BOX, shape="2"),
    "negative dim": with_(BOX, shape=[-1]),
    "bool dim": with_(BOX, shape=[True]),
    "float dim": with_(BOX, shape=[2.0]),
    "rank 33": with_(BOX, shape=[1] * 33),
    "too many elements": with_(BOX, shape=[2**16, 2**15 + 1]),
    "huge dim": with_(BOX, shape=[0, 2**64]),
    "nan low": with_(BOX, low=math.nan),
    "low above high": with_(BOX, low=2.0),
    "float32 overflow": with_(BOX, high=1e300),
    "bool bound": with_(BOX, low=False),
    "str bound": with_(BOX, low="-inf"),
    "bounds word": with_(BOX, bounds="mixed"),
    "bounds mismatch": with_(BOX, bounds="elementwise"),
    "mixed forms": with_(BOX, bounds=..., low=[0.0, 0.0]),
    "short list": with_(BOX, bounds="elementwise", low=[0.0], high=[1.0]),
    "long list": with_(BOX, bounds="elementwise", low=[0.0] * 3, high=[1.0] * 3),
    "huge shape short list": with_(BOX, shape=[2**31], bounds="elementwise", low=[0.0], high=[1.0]),
    "int bound float": with_(BOX, dtype="int32", low=0.5),
    "int bound integral float": with_(BOX, dtype="int32", low=0.0, high=1),
    "int bound out of range": with_(BOX, dtype="int8", low=-129, high=0),
    "uint64 overflow": with_(BOX, dtype="uint64", low=0, high=2**64),
    "int64 underflow": with_(BOX, dtype="int64", low=-(2**63) - 1, high=0),
    "bool box bound 2": with_(BOX, dtype="bool", low=0, high=2),
    "discrete n 0": with_(DISCRETE, n=0),
    "discrete n bool": with_(DISCRETE, n=True),
    "discrete n float": with_(DISCRETE, n=2.0),
    "discrete shape": with_(DISCRETE, shape=[1]),
    "discrete float dtype": with_(DISCRETE, dtype="float32"),
    "discrete bool dtype": with_(DISCRETE, dtype="bool"),
    "discrete overflows dtype": with_(DISCRETE, dtype="int8", n=200),
    "discrete start below dtype": with_(DISCRETE, dtype="uint8", start=-1),
    "multi_binary float dtype": {"kind": "multi_binary", "shape": [2], "dtype": "float32"},
    "multi_binary extra": {"kind": "multi_binary", "shape": [2], "dtype": "int8", "n": 2},
    "md nvec short": with_(MD, nvec=[2]),
    "md start long": with_(MD, start=[0, 0, 0]),
    "md start short": with_(MD, start=[0]),
    "md start not list": with_(MD, start=0),
    "md nvec zero": with_(MD, nvec=[0, 3]),
    "md nvec not list": with_(MD, nvec=5),
    "md huge shape short nvec": with_(MD, shape=[2**31], nvec=[2], start=[0]),
    "md overflow": with_(MD, dtype="int8", nvec=[2, 200]),
    "text dtype": with_(TEXT, dtype="uint8"),
    "text shape": with_(TEXT, shape=[5]),
    "text max_length over limit": with_(TEXT, max_length=(1 << 20) + 1),
    "text min above max": with_(TEXT, min_length=6),
    "text negative min": with_(TEXT, min_length=-1),
    "text charset too long": with_(TEXT, charset="".join(chr(0x4E00 + i) for i in range(65537))),
    "text charset not str": with_(TEXT, charset=["a", "b"]),
    "text surrogate": with_(TEXT, charset="a\ud800"),
    "dict has shape": {"kind": "dict", "shape": [1], "dtype": None, "spaces": []},
    "dict spaces not list": {"kind": "dict", "shape": None, "dtype": None, "spaces": {}},
    "dict bad pair": {"kind": "dict", "shape": None, "dtype": None, "spaces": [["a"]]},
    "dict key not str": {"kind": "dict", "shape": None, "dtype": None, "spaces": [[1, DISCRETE]]},
    "dict duplicate key": {
        "kind": "dict",
        "shape": None,
        "dtype": None,
        "spaces": [["a", DISCRETE], ["a", DISCRETE]],
    },
    "dict bad child": {
        "kind": "dict",
        "shape": None,
        "dtype": None,
        "spaces": [["a", with_(DISCRETE, n=-1)]],
    },
    "dict too many": {
        "kind": "dict",
        "shape": None,
        "dtype": None,
        "spaces": [[f"k{i}", DISCRETE] for i in range(4097)],
    },
    "tuple too many": {"kind": "tuple", "shape": None, "dtype": None, "spaces": [DISCRETE] * 4097},
    "tuple child not dict": {"kind": "tuple", "shape": None, "dtype": None, "spaces": [3]},
    "depth 33": nested(33),
}


@pytest.mark.parametrize("data", list(BAD_SPECS.values()), ids=list(BAD_SPECS))
def test_from_dict_rejects_bad_specs(data: Any) -> None:
    with pytest.raises(SpecError):
        SpaceSpec.from_dict(data)


def test_from_dict_limits_are_inclusive() -> None:
    assert SpaceSpec.from_dict(nested(32)).kind == "tuple"
    assert SpaceSpec.from_dict(with_(BOX, shape=[1] * 32)).shape == (1,) * 32
    assert SpaceSpec.from_dict(with_(BOX, shape=[2**16, 2**15])).shape == (2**16, 2**15)
    assert SpaceSpec.from_dict(with_(TEXT, max_length=1 << 20)).details["max_length"] == 1 << 20
    many = {"kind": "tuple", "shape": None, "dtype": None, "spaces": [DISCRETE] * 4096}
    assert len(SpaceSpec.from_dict(many).details["spaces"]) == 4096


def test_from_dict_errors_are_value_errors_with_a_path() -> None:
    data = {"kind": "dict", "shape": None, "dtype": None, "spaces": [["obs", with_(BOX, low=5.0)]]}
    with pytest.raises(ValueError, match=r"spaces\['obs'\].*low .*must be <= high"):
        SpaceSpec.from_dict(data)


def test_from_dict_of_huge_claims_is_fast_and_small() -> None:
    huge_uniform = with_(BOX, shape=[2**31])
    huge_elementwise = with_(BOX, shape=[2**31], bounds="elementwise", low=[0.0], high=[1.0])
    tracemalloc.start()
    try:
        start = time.perf_counter()
        spec = SpaceSpec.from_dict(huge_uniform)
        with pytest.raises(SpecError, match="expected 2147483648 entries"):
            SpaceSpec.from_dict(huge_elementwise)
        with pytest.raises(SpecError):
            SpaceSpec.from_dict(with_(TEXT, max_length=10**30))
        for md in (
            with_(MD, shape=[2**31], nvec=[2], start=[0]),
            with_(MD, shape=[2**31], nvec=[2], start=...),
        ):
            with pytest.raises(SpecError, match="expected 2147483648 entries"):
                SpaceSpec.from_dict(md)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert spec.shape == (2**31,)
    assert elapsed < 1.0
    assert peak < 1 << 20


# -- Box ------------------------------------------------------------------------------


def test_box_scalar_bounds() -> None:
    box = Box(-1.0, 1.0, (3,), "float32")
    assert (box.kind, box.shape, box.dtype, box.bounds_kind) == ("box", (3,), "float32", "uniform")
    # Uniform bounds read back as the one number the spec holds.
    assert (box.low, box.high) == (-1.0, 1.0)
    assert type(box.low) is float and type(box.high) is float and float(box.low) == -1.0
    assert box.is_bounded() and repr(box) == "Box(-1.0, 1.0, (3,), float32)"


def test_box_infinite_bounds_from_strings_and_floats() -> None:
    assert Box("-inf", "inf", (2,)) == Box(-math.inf, math.inf, (2,))
    box = Box(0.0, "+inf", (2,))
    assert box.is_bounded("below") and not box.is_bounded("above") and not box.is_bounded()
    assert (box.low, box.high) == (0.0, math.inf)
    with pytest.raises(ValueError, match="manner"):
        box.is_bounded("sideways")


@pytest.mark.parametrize(
    "low, high",
    [(math.nan, 1.0), (0.0, math.nan), ("nan", 1.0), ([0.0, math.nan], 1.0), ("low", 1.0)],
)
def test_box_rejects_nan_and_bad_strings(low: Any, high: Any) -> None:
    with pytest.raises(ValueError):
        Box(low, high, (2,))


def test_box_argument_errors() -> None:
    with pytest.raises(ValueError, match="low .* must be <= high"):
        Box(2.0, 1.0, (2,))
    with pytest.raises(ValueError, match="flat index 1"):
        Box([0.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="shape"):
        Box(0.0, 1.0)
    with pytest.raises(ValueError, match="shape"):
        Box([0.0, 0.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        Box([0.0, 0.0], 1.0, shape=(3,))
    with pytest.raises(ValueError, match="ragged"):
        Box([[0.0], [0.0, 1.0]], 1.0)
    with pytest.raises(TypeError):
        Box(0.0)
    with pytest.raises(TypeError):
        Box(object(), 1.0, (2,))
    with pytest.raises(ValueError, match="unsupported"):
        Box(0.0, 1.0, (2,), "complex64")
    with pytest.raises(ValueError, match="out of range"):
        Box(0.0, 1e6, (2,), "float16")
    with pytest.raises(ValueError):
        Box(0.0, 1.0, (-1,))
    with pytest.raises(ValueError):
        Box(0.0, 1.0, (2**31 + 1,))
    with pytest.raises(ValueError):
        Box(0.0, 1.0, (1,) * 33)


def test_box_integer_bounds() -> None:
    # Infinite sides of an integer box become the dtype's range.
    box = Box("-inf", "inf", (2,), "int8")
    assert (box.low, box.high) == (-128, 127) and type(box.low) is int and type(box.high) is int
    assert Box(-math.inf, math.inf, (1,), "uint64").high == UINT64_MAX
    assert Box(1.0, 3.0, (1,), "int16") == Box(1, 3, (1,), "int16")
    assert Box(0, 1, (2,), "int32").is_bounded()
    with pytest.raises(ValueError, match="not an integer"):
        Box(0.5, 3, (1,), "int32")
    with pytest.raises(ValueError, match="out of range"):
        Box(0, 256, (1,), "uint8")
    with pytest.raises(ValueError, match="out of range"):
        Box(-1, 0, (1,), "uint64")
    exact = Box(INT64_MIN, INT64_MAX, (1,), "int64")
    assert exact.low == INT64_MIN and exact.high == INT64_MAX and type(exact.low) is int
    elementwise = Box([0, 1], [UINT64_MAX, 5], dtype="uint64")
    assert elementwise.low == [0, 1] and elementwise.high == [UINT64_MAX, 5]
    assert all(type(v) is int for v in elementwise.high)
    assert Box(0, 1, (2,), "bool").high == 1
    assert repr(exact) == f"Box({INT64_MIN}, {INT64_MAX}, (1,), int64)"


def test_box_dtype_likes() -> None:
    assert Box(0.0, 1.0, (1,), float).dtype == "float64"
    assert Box(0, 1, (1,), int).dtype == "int64"
    assert Box(0, 1, (1,), bool).dtype == "bool"
    assert Box(0.0, 1.0, (1,), "double").dtype == "float64"


def test_box_elementwise_bounds_from_lists_and_tensors() -> None:
    box = Box([[0.0, 1.0], [2.0, 3.0]], 10.0)
    assert box.shape == (2, 2) and box.bounds_kind == "elementwise"
    # Elementwise bounds read back as nested lists shaped like the box.
    assert box.low == [[0.0, 1.0], [2.0, 3.0]]
    assert box.high == [[10.0, 10.0], [10.0, 10.0]]
    low = tensor([0, -5, 3], (3,), "int32")
    high = tensor([1, 5, 3], (3,), "int32")
    from_tensors = Box(low, high, dtype="int32")
    assert from_tensors == Box([0, -5, 3], [1, 5, 3], dtype="int32")
    assert from_tensors.high == [1, 5, 3] and all(type(v) is int for v in from_tensors.high)
    assert repr(from_tensors) == "Box([0, -5, 3], [1, 5, 3], (3,), int32)"
    # Elementwise bounds that agree everywhere are the uniform box.
    same = Box([0.0, 0.0], [1.0, 1.0])
    assert same.bounds_kind == "uniform" and same == Box(0.0, 1.0, (2,))


def test_box_float_bounds_are_rounded_to_the_dtype() -> None:
    box = Box(0.1, 0.7, (1,), "float32")
    assert box.spec.details["low"] == f32(0.1)
    assert box.low == f32(0.1) and box.low != 0.1
    half = Box(0.1, 1.0, (1,), "float16")
    assert half.spec.details["low"] == struct.unpack("<e", struct.pack("<e", 0.1))[0]
    bf = Box(0.1, 1.0, (1,), "bfloat16")
    # bfloat16 keeps the top 16 bits of float32, rounded to nearest even.
    assert bf.spec.details["low"] == 0.10009765625
    assert bf.low == 0.10009765625


def test_box_bounds_are_fresh_spec_values() -> None:
    box = Box([[0.0, 1.0], [2.0, 3.0]], [[5.0, 6.0], [7.0, 8.0]])
    low = box.low
    assert isinstance(low, list)
    low[0][0] = 99.0
    assert box.low == [[0.0, 1.0], [2.0, 3.0]] and box.contains([[0.0, 1.0], [2.0, 3.0]])
    assert Box(-1.0, 1.0, shape=[2]).low == -1.0
    assert Box(-1.0, 1.0, shape=[2], dtype="float64").high == 1.0
    # -0.0 keeps its sign, as on the wire.
    assert math.copysign(1.0, Box(-0.0, 1.0, (1,)).low) == -1.0
    assert Box(-1.0, 1.0, ()).low == -1.0 and Box(3, 3, (), "int8").high == 3


def test_box_wraps_a_spec() -> None:
    box = Box(0, 3, (2,), "uint8")
    wrapped = Box(box.spec)
    assert wrapped == box and wrapped.dtype == "uint8"
    with pytest.raises(ValueError):
        Box(Discrete(2).spec)
    with pytest.raises(TypeError):
        Box(box.spec, 1.0)
    with pytest.raises(ValueError):
        Box(box.spec, dtype="int64")


def test_box_contains() -> None:
    box = Box([0.0, -1.0], [1.0, 1.0])
    assert box.contains(tensor([0.5, -1.0], (2,), "float32"))
    assert box.contains([1.0, 1.0]) and [0, 0] in box
    assert box.contains(tensor([1, 0], (2,), "int64"))
    assert not box.contains([1.5, 0.0])  # out of bounds
    assert not box.contains([0.5, -1.5])
    assert not box.contains([0.5])  # wrong shape
    assert not box.contains([[0.5, 0.5]])
    assert not box.contains(0.5)
    assert not box.contains([math.nan, 0.0])
    assert not box.contains(["a", "b"])
    assert not box.contains("ab")
    assert not box.contains(None)
    assert not box.contains([[0.0], [0.0, 1.0]])


def test_box_contains_checks_dtype_kind() -> None:
    ints = Box(0, 10, (2,), "int32")
    assert ints.contains([1, 2]) and ints.contains(tensor([1, 2], (2,), "int64"))
    assert not ints.contains([1.0, 2.0])
    assert not ints.contains(tensor([1.0, 2.0], (2,), "float64"))
    flags = Box(0, 1, (2,), "bool")
    assert flags.contains([True, False]) and flags.contains(tensor([1, 0], (2,), "bool"))
    assert not flags.contains([1, 0])
    unbounded = Box("-inf", "inf", (1,))
    assert unbounded.contains([math.inf]) and not unbounded.contains([math.nan])
    scalar = Box(-1.0, 1.0, ())
    assert scalar.contains(0.5) and scalar.contains(tensor([0.5], (), "float32"))
    assert not scalar.contains([0.5])


def test_box_sampling_branches() -> None:
    n = 400
    bounded = Box(-2.0, 3.0, (n,), "float64")
    bounded.seed(0)
    values = bounded.sample().tolist()
    assert all(-2.0 <= v <= 3.0 for v in values) and max(values) - min(values) > 4.0
    below = Box(5.0, "inf", (n,), "float64")
    below.seed(0)
    values = below.sample().tolist()
    assert all(v >= 5.0 for v in values) and abs(sum(values) / n - 6.0) < 0.3
    above = Box("-inf", -5.0, (n,), "float64")
    above.seed(0)
    values = above.sample().tolist()
    assert all(v <= -5.0 for v in values) and abs(sum(values) / n + 6.0) < 0.3
    normal = Box("-inf", "inf", (n,), "float64")
    normal.seed(0)
    values = normal.sample().tolist()
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / n
    assert abs(mean) < 0.2 and 0.7 < var < 1.3 and min(values) < 0 < max(values)
    ints = Box(-3, 3, (n,), "int8")
    ints.seed(0)
    assert set(ints.sample().tolist()) == set(range(-3, 4))
    flags = Box(0, 1, (n,), "bool")
    flags.seed(0)
    assert set(flags.sample().tolist()) == {False, True}
    pinned = Box(1, 1, (3,), "bool")
    assert pinned.sample().tolist() == [True] * 3


def test_box_extreme_sampling_stays_in_bounds() -> None:
    wide = Box(-1.7976931348623157e308, 1.7976931348623157e308, (200,), "float64")
    wide.seed(1)
    assert all(math.isfinite(v) for v in wide.sample().tolist())
    huge = Box(0, UINT64_MAX, (200,), "uint64")
    huge.seed(1)
    values = huge.sample().tolist()
    assert all(0 <= v <= UINT64_MAX for v in values) and max(values) > 2**63
    near_max = Box(65000.0, "inf", (50,), "float16")
    near_max.seed(1)
    assert near_max.contains(near_max.sample())


def test_half_precision_samples_are_representable() -> None:
    for dtype in ("float16", "bfloat16"):
        box = Box(-3.0, 3.0, (64,), dtype)
        box.seed(2)
        sample = box.sample()
        assert sample.dtype == dtype and sample.shape == (64,)
        words = struct.unpack("<64H", sample.tobytes())
        values = sample.tolist()
        if dtype == "float16":
            assert list(struct.unpack("<64e", sample.tobytes())) == values
        else:
            assert values == [struct.unpack("<f", struct.pack("<I", w << 16))[0] for w in words]
        assert all(-3.0 <= v <= 3.0 for v in values)
        assert len(set(values)) > 10


def test_size_zero_box() -> None:
    box = Box(0.0, 1.0, (0, 3))
    assert box.bounds_kind == "elementwise"
    sample = box.sample()
    assert sample.shape == (0, 3) and box.contains(sample)
    assert box.low == [] and box.high == []
    assert Box(0.0, 1.0, (3, 0)).low == [[], [], []]


# -- hypothesis: every sample is contained ------------------------------------------

FLOAT_MAX = {
    "float16": 65504.0,
    "bfloat16": 3.3895313892515355e38,
    "float32": 3.4028234663852886e38,
    "float64": 1.7976931348623157e308,
}


@st.composite
def boxes(draw: st.DrawFn) -> Box:
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    size = math.prod(shape)
    info = dtype_info(dtype)
    if is_float(info):
        m = FLOAT_MAX[dtype]
        value = st.one_of(st.floats(-m, m, allow_nan=False), st.sampled_from([-math.inf, math.inf, 0.0]))
    else:
        lo, hi = integer_bounds(info)
        value = st.integers(lo, hi)
    if draw(st.booleans()):
        a, b = sorted([draw(value), draw(value)])
        return Box(a, b, shape, dtype)
    pairs = [sorted([draw(value), draw(value)]) for _ in range(size)]
    low = [p[0] for p in pairs]
    high = [p[1] for p in pairs]
    return Box(low, high, (size,), dtype)


@settings(max_examples=300, deadline=None)
@given(box=boxes(), seed=st.integers(0, 2**64))
def test_box_samples_are_contained(box: Box, seed: int) -> None:
    box.seed(seed)
    sample = box.sample()
    assert isinstance(sample, Tensor)
    assert sample.shape == box.shape and sample.dtype == box.dtype
    assert box.contains(sample)
    flat = sample.reshape(-1).tolist() if sample.size else []
    if box.bounds_kind == "uniform":
        flat_low, flat_high = [box.low] * len(flat), [box.high] * len(flat)
    elif flat:
        flat_low, flat_high = box.low, box.high  # non-empty elementwise boxes here are 1-D
    else:
        flat_low = flat_high = []
    assert all(lo <= v <= hi for v, lo, hi in zip(flat, flat_low, flat_high, strict=True))
    assert space_from_spec(SpaceSpec.from_dict(box.spec.to_dict())) == box


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 2**63),
    offset=st.integers(0, 2**64),
    seed=st.integers(0, 2**32),
)
def test_discrete_samples_are_contained(n: int, offset: int, seed: int) -> None:
    start = INT64_MIN + offset % (2**64 - n + 1)
    space = Discrete(n, start=start)
    space.seed(seed)
    value = space.sample()
    assert type(value) is int and start <= value < start + n
    assert space.contains(value)
    assert not space.contains(start - 1) and not space.contains(start + n)


# -- Discrete, MultiBinary, MultiDiscrete, Text --------------------------------------


def test_discrete() -> None:
    space = Discrete(3, start=1)
    assert (space.n, space.start, space.dtype, space.shape) == (3, 1, "int64", ())
    assert repr(space) == "Discrete(3, start=1)" and repr(Discrete(2)) == "Discrete(2)"
    assert repr(Discrete(2, dtype="int8")) == "Discrete(2, dtype=int8)"
    space.seed(4)
    assert {space.sample() for _ in range(100)} == {1, 2, 3}
    assert space.contains(1) and 3 in space and space.contains(2.0)
    assert space.contains(tensor([2], (), "int64")) and space.contains(tensor([2], (1,), "int32"))
    assert not space.contains(0) and not space.contains(4)
    assert not space.contains(1.5) and not space.contains(math.nan) and not space.contains(True)
    assert not space.contains(tensor([1, 2], (2,), "int64"))
    assert not space.contains(tensor([1], (), "bool"))
    assert not space.contains("1") and not space.contains(None)
    for bad in (
        lambda: Discrete(0),
        lambda: Discrete(3, dtype="float32"),
        lambda: Discrete(300, dtype="int8"),
    ):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(TypeError):
        Discrete(2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Discrete(True)


def test_multi_binary() -> None:
    space = MultiBinary(4)
    assert (space.n, space.size, space.dims, space.dtype) == (4, 4, (4,), "uint8")
    grid = MultiBinary([2, 3])
    assert (grid.n, grid.size, grid.dims, grid.shape) == ((2, 3), 6, (2, 3), (2, 3))
    assert (
        repr(grid) == "MultiBinary((2, 3))"
        and repr(MultiBinary(2, dtype="int8")) == "MultiBinary(2, dtype=int8)"
    )
    grid.seed(0)
    sample = grid.sample()
    assert sample.shape == (2, 3) and sample.dtype == "uint8"
    assert {v for row in sample.tolist() for v in row} <= {0, 1}
    assert grid.contains(sample) and grid.contains([[0, 1, 1], [1, 0, 0]])
    assert grid.contains([[True, False, True], [False, False, False]])
    assert not grid.contains([[0, 1, 2], [1, 0, 0]])
    assert not grid.contains([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert not grid.contains([0, 1, 1, 1, 0, 0])
    with pytest.raises(ValueError):
        MultiBinary(2, dtype="float32")
    with pytest.raises(ValueError):
        MultiBinary(-1)
    with pytest.raises(TypeError):
        MultiBinary("3")


def test_multi_discrete() -> None:
    space = MultiDiscrete([[2, 3], [4, 5]], start=[[1, -1], [0, 10]], dtype="int32")
    assert space.shape == (2, 2) and space.dtype == "int32"
    assert space.nvec == [[2, 3], [4, 5]] and space.start == [[1, -1], [0, 10]]
    assert repr(space) == "MultiDiscrete([[2, 3], [4, 5]], start=[[1, -1], [0, 10]], dtype=int32)"
    space.seed(9)
    seen = [space.sample().tolist() for _ in range(200)]
    assert {s[1][1] for s in seen} == set(range(10, 15))
    assert all(space.contains(s) for s in seen)
    assert not space.contains([[1, -1], [0, 15]])
    assert not space.contains([[0, -1], [0, 10]])
    assert not space.contains([1, -1, 0, 10])
    assert not space.contains([[1.0, -1.0], [0.0, 10.0]])
    assert MultiDiscrete([3, 4]).start == [0, 0] and MultiDiscrete([3, 4]).nvec == [3, 4]
    with pytest.raises(ValueError):
        MultiDiscrete([0, 2])
    with pytest.raises(ValueError):
        MultiDiscrete([2, 2], start=[0])
    with pytest.raises(ValueError):
        MultiDiscrete([200], dtype="int8")
    with pytest.raises(ValueError):
        MultiDiscrete([2], dtype="float32")
    with pytest.raises(TypeError):
        MultiDiscrete(3)


def test_multi_discrete_nvec_is_the_spec_value() -> None:
    flat = MultiDiscrete([2, 3, 4], dtype="int8")
    assert flat.nvec == [2, 3, 4] and all(type(v) is int for v in flat.nvec)
    grid = MultiDiscrete([[2, 3], [4, 5]])
    nvec = grid.nvec
    assert nvec == [[2, 3], [4, 5]]
    nvec[0][0] = 7
    assert grid.nvec == [[2, 3], [4, 5]]  # a fresh list per call
    rebuilt = space_from_spec(SpaceSpec.from_dict(grid.spec.to_dict()))
    assert isinstance(rebuilt, MultiDiscrete) and rebuilt.nvec == [[2, 3], [4, 5]]
    scalar = SpaceSpec.from_dict(
        {"kind": "multi_discrete", "shape": [], "dtype": "int64", "nvec": [3], "start": [1]}
    )
    assert (scalar.to_space().nvec, scalar.to_space().start) == (3, 1)
    empty = space_from_spec({"kind": "multi_discrete", "shape": [0, 2], "dtype": "int64", "nvec": []})
    assert isinstance(empty, MultiDiscrete) and empty.nvec == []


def test_text() -> None:
    free = Text(5)
    assert (free.max_length, free.min_length, free.charset) == (5, 1, "")
    assert free.kind == "text" and free.dtype == "str" and repr(free) == "Text(max_length=5, min_length=1)"
    free.seed(0)
    samples = [free.sample() for _ in range(200)]
    alphanumeric = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    assert all(1 <= len(s) <= 5 and set(s) <= alphanumeric for s in samples)
    assert {len(s) for s in samples} == {1, 2, 3, 4, 5}
    assert free.contains("héllo") and free.contains("!") and not free.contains("")
    assert not free.contains("toolong") and not free.contains(5)
    restricted = Text(3, min_length=0, charset={"b", "a"})
    assert restricted.charset == "ab" and restricted == Text(3, 0, "ba") == Text(3, 0, "abba")
    assert repr(restricted) == "Text(max_length=3, min_length=0, charset='ab')"
    restricted.seed(1)
    assert all(set(restricted.sample()) <= {"a", "b"} for _ in range(50))
    assert restricted.contains("") and restricted.contains("aba")
    assert not restricted.contains("abc") and not restricted.contains("abab")
    assert Text(4, charset="") == Text(4)
    with pytest.raises(ValueError):
        Text(2, min_length=3)
    with pytest.raises(ValueError):
        Text(2, min_length=-1)
    with pytest.raises(ValueError):
        Text((1 << 20) + 1)
    with pytest.raises(ValueError):
        Text(3, charset=["ab"])
    with pytest.raises(TypeError):
        Text(3, charset=5)  # type: ignore[arg-type]


# -- Dict and Tuple -------------------------------------------------------------------


def test_dict_mapping_api_and_order() -> None:
    pos = Box(-1.0, 1.0, (2,))
    space = Dict({"z": Discrete(2), "a": pos}, m=MultiBinary(3))
    assert list(space) == ["z", "a", "m"] and list(space.keys()) == ["z", "a", "m"]
    assert len(space) == 3 and space["a"] is pos and space.get("nope") is None
    assert list(space.values())[1] is pos and list(space.items())[0] == ("z", Discrete(2))
    assert "a" in space and "b" not in space
    assert dict(space.spaces) == {"z": Discrete(2), "a": pos, "m": MultiBinary(3)}
    with pytest.raises(TypeError):
        space.spaces["q"] = pos  # type: ignore[index]
    space.seed(0)
    sample = space.sample()
    assert list(sample) == ["z", "a", "m"]
    assert space.contains(sample) and sample in space
    assert Dict([("z", Discrete(2)), ("a", pos)]) != Dict([("a", pos), ("z", Discrete(2))])
    assert Dict(a=Discrete(2).spec) == Dict({"a": Discrete(2)})
    assert repr(Dict(a=Discrete(2))) == "Dict({'a': Discrete(2)})"


def test_dict_contains() -> None:
    space = Dict({"k": Discrete(3), "t": Text(2)})
    assert space.contains({"t": "ab", "k": 2})
    assert not space.contains({"k": 2})
    assert not space.contains({"k": 2, "t": "ab", "extra": 1})
    assert not space.contains({"k": 3, "t": "ab"})
    assert not space.contains([2, "ab"])


def test_dict_argument_errors() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Dict({"a": Discrete(2)}, a=Discrete(3))
    with pytest.raises(TypeError):
        Dict({1: Discrete(2)})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="from_gymnasium_space"):
        Dict({"a": 3})
    with pytest.raises(ValueError):
        Dict({f"k{i}": Discrete(2) for i in range(4097)})
    deep: Space[Any] = Discrete(2)
    for _ in range(31):
        deep = Tuple([deep])
    with pytest.raises(ValueError, match="deeper"):
        Tuple([deep])


def test_tuple() -> None:
    space = Tuple([Discrete(2), Text(2), Box(0.0, 1.0, (1,))])
    assert len(space) == 3 and space[1] == Text(2) and list(space) == list(space.spaces)
    assert isinstance(space.spaces, tuple)
    space.seed(3)
    sample = space.sample()
    assert isinstance(sample, tuple) and len(sample) == 3
    assert space.contains(sample) and space.contains(list(sample))
    assert not space.contains(sample[:2]) and not space.contains((5, "a", [0.5]))
    assert repr(Tuple([Discrete(2)])) == "Tuple((Discrete(2),))"
    with pytest.raises(TypeError):
        Tuple([3])


# -- seeding --------------------------------------------------------------------------

SEEDING_CODE = """
from rlmesh.spaces import Box, Dict, Discrete, MultiBinary, MultiDiscrete, Text, Tuple
space = Dict({
    "box": Box(-1.0, 1.0, (3,), "float32"),
    "half": Box(0.0, "inf", (2,), "bfloat16"),
    "int": Box(0, 2**64 - 1, (2,), "uint64"),
    "d": Discrete(7, start=3),
    "mb": MultiBinary(5),
    "md": MultiDiscrete([3, 9]),
    "t": Tuple([Text(6, charset="xyz"), Text(4), Box("-inf", "inf", (2,), "float64")]),
})
"""


def seeded_samples(space: Any, seed: int, count: int = 3) -> list[Any]:
    space.seed(seed)
    out = []
    for _ in range(count):
        sample = space.sample()
        out.append(
            {
                k: (
                    [x if isinstance(x, str) else x.tolist() for x in v]
                    if isinstance(v, tuple)
                    else v.tolist()
                    if isinstance(v, Tensor)
                    else v
                )
                for k, v in sample.items()
            }
        )
    return out


def make_seeding_space() -> Any:
    scope: dict[str, Any] = {}
    exec(SEEDING_CODE, scope)
    return scope["space"]


def test_seeding_is_deterministic() -> None:
    a, b = make_seeding_space(), make_seeding_space()
    assert seeded_samples(a, 42) == seeded_samples(b, 42)
    assert seeded_samples(a, 42) != seeded_samples(a, 43)
    assert a.seed(7) == 7
    picked = a.seed()
    assert isinstance(picked, int) and picked >= 0
    assert seeded_samples(a, picked) == seeded_samples(b, picked)


def test_seeding_is_deterministic_across_processes() -> None:
    here = seeded_samples(make_seeding_space(), 1234)
    out = run_python(
        SEEDING_CODE
        + "import json, sys\n"
        + "sys.path.insert(0, 'tests/unit')\n"
        + "from test_spaces import seeded_samples\n"
        + "print(json.dumps(seeded_samples(space, 1234)))"
    )
    assert json.loads(out) == json.loads(json.dumps(here))


def test_leaf_seed_reproduces_samples() -> None:
    box = Box(0, 100, (5,), "int32")
    seed = box.seed()
    assert seed is not None
    first = [box.sample().tolist() for _ in range(3)]
    box.seed(seed)
    assert [box.sample().tolist() for _ in range(3)] == first


def test_composite_seed_seeds_children() -> None:
    child = Discrete(1000)
    space = Tuple([child, Discrete(1000)])
    space.seed(5)
    together = [space.sample() for _ in range(5)]
    space.seed(5)
    alone = [child.sample() for _ in range(5)]
    assert alone == [t[0] for t in together]
    # Equal subspaces get different seeds, so they do not sample in lockstep.
    assert [t[0] for t in together] != [t[1] for t in together]
    mapping = Dict(a=Discrete(1000), b=Discrete(1000))
    mapping.seed(5)
    samples = [mapping.sample() for _ in range(5)]
    assert [s["a"] for s in samples] != [s["b"] for s in samples]
    mapping.seed(5)
    assert [mapping.sample() for _ in range(5)] == samples


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True])
def test_seed_rejects_bad_values(seed: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        Discrete(2).seed(seed)
    with pytest.raises((TypeError, ValueError)):
        Dict(a=Discrete(2)).seed(seed)


# -- equality, attributes, bridges ---------------------------------------------------


def test_equality_and_hash_follow_the_spec() -> None:
    for a, b in zip(all_spaces(), SPACES, strict=True):
        assert a == b and hash(a) == hash(b) and a is not b
    assert Discrete(3) != Discrete(3, start=1)
    assert Discrete(3) != Discrete(3, dtype="int32")
    assert Box(0.0, 1.0, (2,)) != Box(0.0, 1.0, (2,), "float64")
    assert Box(0.0, 1.0, (2,)) != Box(0.0, 1.0, (3,))
    assert Discrete(2) != "Discrete(2)"
    assert len(set(SPACES)) == len(SPACES)


def test_unknown_attributes_hint_at_gymnasium() -> None:
    space = Discrete(2)
    with pytest.raises(AttributeError, match=r"to_gymnasium_space\(\)"):
        space.np_random  # noqa: B018
    with pytest.raises(AttributeError) as info:
        space._private  # noqa: B018
    assert "to_gymnasium_space" not in str(info.value)
    assert not hasattr(space, "__array__")


class Wrapped:
    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor


class WrapBridge:
    """A stand-in array library: Tensor leaves become Wrapped objects."""

    name = "wrap"

    def __init__(self) -> None:
        self.decoded = 0
        self.encoded = 0

    def decode(self, value: Any) -> Any:
        self.decoded += 1
        return self._walk(value, lambda t: Wrapped(t) if isinstance(t, Tensor) else t)

    def encode(self, value: Any) -> Any:
        self.encoded += 1
        if isinstance(value, bytes):
            raise TypeError("no bytes here")
        return self._walk(value, lambda t: t.tensor if isinstance(t, Wrapped) else t)

    def _walk(self, value: Any, leaf: Any) -> Any:
        if isinstance(value, dict):
            return {k: self._walk(v, leaf) for k, v in value.items()}
        if isinstance(value, tuple):
            return tuple(self._walk(v, leaf) for v in value)
        return leaf(value)


def test_bridge_decodes_samples_and_encodes_values() -> None:
    bridge = WrapBridge()
    box = Box(0.0, 1.0, (2,), bridge=bridge)
    assert box.bridge is bridge
    sample = box.sample()
    assert isinstance(sample, Wrapped) and sample.tensor.shape == (2,)
    before = bridge.decoded
    assert (box.low, box.high) == (0.0, 1.0)  # bounds are spec values, not decoded
    assert bridge.decoded == before
    assert box.contains(sample)
    assert not box.contains(b"xx")  # the bridge raised TypeError
    assert isinstance(Discrete(3, bridge=bridge).sample(), int)


def test_space_from_spec_binds_the_bridge_everywhere() -> None:
    bridge = WrapBridge()
    spec = Dict({"a": Box(0.0, 1.0, (2,)), "t": Tuple([MultiBinary(2), Discrete(2)])}).spec
    space = space_from_spec(spec, bridge=bridge)
    assert space.bridge is bridge and space["t"].bridge is bridge and space["t"][0].bridge is bridge
    before = bridge.decoded
    sample = space.sample()
    assert bridge.decoded == before + 1  # the tree is decoded once, by the outer space
    assert isinstance(sample["a"], Wrapped) and isinstance(sample["t"][0], Wrapped)
    assert isinstance(sample["t"][1], int)
    assert space.contains(sample)
    assert space_from_spec(space).bridge is IDENTITY
    with pytest.raises(TypeError):
        space_from_spec(spec, bridge=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        space_from_spec(42)  # type: ignore[arg-type]
    with pytest.raises(SpecError):
        space_from_spec({"kind": "nope"})
