"""Gymnasium conversion both ways, and rlmesh spaces used with numpy values."""

from __future__ import annotations

import json
import pickle
import string
from typing import Any

import gymnasium as gym
import ml_dtypes
import numpy as np
import pytest

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
    from_gymnasium_space,
    to_gymnasium_space,
)
from rlmesh.specs import EnvContract
from rlmesh.tensor import Tensor
from tests.conftest import run_python

G = gym.spaces
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1
ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def bf16_box() -> Any:
    return to_gymnasium_space(Box(-1.5, 2.5, (2, 2), "bfloat16"))


GYM_SPACES: dict[str, Any] = {
    "box uniform": G.Box(-1.0, 1.0, (3,), np.float32),
    "box elementwise": G.Box(np.array([-1.0, -2.0]), np.array([2.0, 4.0]), dtype=np.float64),
    "box 2d elementwise": G.Box(
        np.array([[0, 1], [2, 3]], np.int16), np.array([[5, 6], [7, 8]], np.int16), dtype=np.int16
    ),
    "box int64 extremes": G.Box(
        np.array([INT64_MIN, 0], np.int64), np.array([INT64_MAX, 5], np.int64), dtype=np.int64
    ),
    "box uint64 max": G.Box(
        np.array([0, 7], np.uint64), np.array([UINT64_MAX, 9], np.uint64), dtype=np.uint64
    ),
    "box float32 inf": G.Box(-np.inf, np.inf, (2, 2), np.float32),
    "box half-bounded": G.Box(
        np.array([0.0, -np.inf], np.float32), np.array([np.inf, 1.0], np.float32), dtype=np.float32
    ),
    "box float16": G.Box(-2.0, 2.0, (2,), np.float16),
    "box bool": G.Box(0, 1, (3,), np.bool_),
    "box 0-d": G.Box(np.array(0.0, np.float32), np.array(1.0, np.float32), dtype=np.float32),
    "box bfloat16": bf16_box(),
    "discrete": G.Discrete(5),
    "discrete start": G.Discrete(3, start=-2),
    "discrete int32": G.Discrete(4, start=10, dtype=np.int32),
    "text charset": G.Text(7, min_length=2, charset="zyx"),
    "text default": G.Text(4),
    "multibinary int": G.MultiBinary(4),
    "multibinary 2d": G.MultiBinary([2, 3]),
    "multidiscrete 1d": G.MultiDiscrete([3, 4], start=[1, -2]),
    "multidiscrete 2d": G.MultiDiscrete(np.array([[2, 3], [4, 5]]), start=np.array([[0, 1], [2, 3]])),
    "nested": G.Dict(
        [
            ("z", G.Discrete(2)),
            ("a", G.Tuple((G.Discrete(3), G.Box(0, 1, (1,)), G.Dict({"q": G.Text(3)})))),
            ("m", G.MultiBinary(2)),
        ]
    ),
    "tuple": G.Tuple((G.MultiDiscrete([2, 2]), G.Box(-1, 1, (2,)))),
    "empty dict": G.Dict({}),
}


def assert_same_gym(a: Any, b: Any) -> None:
    """Gymnasium equality, plus the exactness gymnasium's allclose-based Box equality skips."""
    assert a == b
    assert type(a) is type(b)
    if isinstance(a, G.Box):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.low.tolist() == b.low.tolist() and a.high.tolist() == b.high.tolist()
    elif isinstance(a, (G.MultiBinary, G.MultiDiscrete, G.Discrete)):
        assert a.dtype == b.dtype
    elif isinstance(a, G.Dict):
        assert list(a.spaces) == list(b.spaces)
        for key in a.spaces:
            assert_same_gym(a[key], b[key])
    elif isinstance(a, G.Tuple):
        for x, y in zip(a.spaces, b.spaces, strict=True):
            assert_same_gym(x, y)


def widened(gym_space: Any) -> Any:
    """``gym_space`` with every default (alphanumeric) Text made a string.printable one.

    That is what a round trip through rlmesh gives back: the default charset
    imports as unrestricted, which exports as string.printable.
    """
    if isinstance(gym_space, G.Text) and gym_space.character_set == frozenset(ALNUM):
        return G.Text(gym_space.max_length, min_length=gym_space.min_length, charset=string.printable)
    if isinstance(gym_space, G.Dict):
        return G.Dict([(key, widened(child)) for key, child in gym_space.spaces.items()])
    if isinstance(gym_space, G.Tuple):
        return G.Tuple(tuple(widened(child) for child in gym_space.spaces))
    return gym_space


@pytest.mark.parametrize("gym_space", list(GYM_SPACES.values()), ids=list(GYM_SPACES))
def test_gymnasium_round_trip(gym_space: Any) -> None:
    ours = from_gymnasium_space(gym_space)
    assert isinstance(ours, Space)
    back = to_gymnasium_space(ours)
    expected = widened(gym_space)
    assert_same_gym(back, expected)
    assert from_gymnasium_space(back) == ours
    # The wire form carries everything gymnasium needs.
    assert_same_gym(to_gymnasium_space(ours.spec.to_dict()), expected)
    assert_same_gym(SpaceSpec.from_dict(ours.spec.to_dict()).to_gym_space(), expected)


RLMESH_SPACES: dict[str, Space[Any]] = {
    "box uniform": Box(-1.0, 1.0, (3,)),
    "box elementwise": Box([-1.0, -2.0], [2.0, 4.0], dtype="float64"),
    "box int64 extremes": Box(INT64_MIN, INT64_MAX, (2,), "int64"),
    "box uint64 max": Box([0, 1], [UINT64_MAX, 3], dtype="uint64"),
    "box float32 inf": Box("-inf", "inf", (2,)),
    "box bfloat16": Box(-1.5, 2.5, (2, 2), "bfloat16"),
    "box bfloat16 elementwise": Box([0.1, -3.0], [0.5, "inf"], dtype="bfloat16"),
    "discrete start": Discrete(3, start=-2),
    "text custom": Text(6, min_length=0, charset="ba"),
    "text default": Text(5),
    "multibinary int": MultiBinary(4),
    "multibinary 2d": MultiBinary([2, 3]),
    "multibinary int8": MultiBinary(3, dtype="int8"),
    "multidiscrete 1d": MultiDiscrete([3, 4], start=[1, -2]),
    "multidiscrete 2d": MultiDiscrete([[2, 3], [4, 5]], start=[[0, 1], [2, 3]], dtype="int32"),
    "nested": Dict(
        {
            "z": Discrete(2),
            "a": Tuple([Discrete(3), Dict(q=Text(3)), Box(0, 9, (2,), "uint8")]),
        }
    ),
}


@pytest.mark.parametrize("space", list(RLMESH_SPACES.values()), ids=list(RLMESH_SPACES))
def test_rlmesh_round_trip(space: Space[Any]) -> None:
    gym_space = space.to_gymnasium_space()
    back = from_gymnasium_space(gym_space)
    assert back == space
    assert_same_gym(to_gymnasium_space(back), gym_space)


def test_exact_integer_bounds_reach_numpy() -> None:
    gym_space = to_gymnasium_space(Box(INT64_MIN, INT64_MAX, (2,), "int64"))
    assert gym_space.dtype == np.int64
    assert gym_space.low.tolist() == [INT64_MIN] * 2 and gym_space.high.tolist() == [INT64_MAX] * 2
    gym_space = to_gymnasium_space(Box(0, UINT64_MAX, (1,), "uint64"))
    assert gym_space.dtype == np.uint64 and gym_space.high.tolist() == [UINT64_MAX]
    ours = from_gymnasium_space(gym_space)
    assert ours.spec.details["high"] == UINT64_MAX and type(ours.spec.details["high"]) is int


def test_elementwise_bounds_are_kept_and_uniform_ones_collapse() -> None:
    low = np.array([0.0, 1.0], np.float32)
    ours = from_gymnasium_space(G.Box(low, low + 2, dtype=np.float32))
    assert isinstance(ours, Box) and ours.bounds_kind == "elementwise"
    assert ours.low == [0.0, 1.0] and ours.high == [2.0, 3.0]
    uniform = from_gymnasium_space(G.Box(0.0, 1.0, (4,), np.float32))
    assert isinstance(uniform, Box) and uniform.bounds_kind == "uniform"
    assert uniform == Box(0.0, 1.0, (4,))


def test_full_bound_arrays_come_from_the_gymnasium_space() -> None:
    box = Box(-1.0, 1.0, shape=[2])
    assert box.low == -1.0 and box.high == 1.0
    gym_box = box.to_gymnasium_space()
    assert gym_box.low.tolist() == [-1.0, -1.0] and gym_box.low.dtype == np.float32
    # A scalar bound broadcasts in numpy as the full array would.
    clipped = np.clip(np.array([-3.0, 0.5], np.float32), box.low, box.high)
    assert clipped.tolist() == [-1.0, 0.5]
    grid = MultiDiscrete([[2, 3], [4, 5]])
    assert grid.nvec == [[2, 3], [4, 5]]
    assert grid.to_gymnasium_space().nvec.tolist() == [[2, 3], [4, 5]]
    exact = from_gymnasium_space(
        G.Box(np.array([INT64_MIN, 0], np.int64), np.array([INT64_MAX, 5], np.int64), dtype=np.int64)
    )
    assert isinstance(exact, Box) and exact.low == [INT64_MIN, 0] and exact.high == [INT64_MAX, 5]
    top = from_gymnasium_space(G.Box(0, UINT64_MAX, (3,), np.uint64))
    assert isinstance(top, Box) and top.high == UINT64_MAX and type(top.high) is int


def test_numpy_backend_spaces_give_spec_bounds_too() -> None:
    import rlmesh.numpy as rnp

    box = rnp.space_from_spec(Box([0.0, -1.0], [1.0, 1.0]).spec)
    assert isinstance(box, Box) and box.low == [0.0, -1.0] and box.high == [1.0, 1.0]
    assert isinstance(box.sample(), np.ndarray)  # samples still go through the numpy bridge
    md = rnp.space_from_spec(MultiDiscrete([[2, 3], [4, 5]]).spec)
    assert isinstance(md, MultiDiscrete) and md.nvec == [[2, 3], [4, 5]]


def test_text_charsets() -> None:
    assert from_gymnasium_space(G.Text(4)) == Text(4)
    assert from_gymnasium_space(G.Text(4, charset="cab")).charset == "abc"
    explicit = from_gymnasium_space(G.Text(4, charset=ALNUM[:10]))
    assert isinstance(explicit, Text) and explicit.charset == ALNUM[:10]
    assert to_gymnasium_space(Text(4, charset="q")).character_set == frozenset("q")


def test_unrestricted_text_converts_with_printable_characters() -> None:
    gym_text = to_gymnasium_space(Text(32))
    assert isinstance(gym_text, G.Text) and gym_text.character_set == frozenset(string.printable)
    assert gym_text.contains("pick up the object!")
    assert gym_text.contains("x = [1, 2];\ty")
    assert (gym_text.min_length, gym_text.max_length) == (1, 32)
    assert to_gymnasium_space(Text(8, min_length=0).spec.to_dict()).contains("")
    # Gymnasium has no unrestricted Text: characters outside string.printable stay outside.
    assert Text(32).contains("héllo") and not gym_text.contains("héllo")
    # Our samples (alphanumeric) are always valid for the twin.
    ours = Text(16)
    ours.seed(0)
    assert all(gym_text.contains(ours.sample()) for _ in range(50))


def test_default_gymnasium_text_round_trip() -> None:
    # rlmesh -> gymnasium -> rlmesh is exact: string.printable imports as unrestricted.
    assert from_gymnasium_space(to_gymnasium_space(Text(5, min_length=2))) == Text(5, min_length=2)
    assert from_gymnasium_space(G.Text(5, charset=string.printable)) == Text(5)
    # gymnasium's default (alphanumeric) Text imports as unrestricted too, so going
    # gymnasium -> rlmesh -> gymnasium widens it to string.printable: a superset,
    # holding every string the original held, and the same rlmesh space again.
    gym_default = G.Text(5)
    ours = from_gymnasium_space(gym_default)
    assert ours == Text(5) and isinstance(ours, Text) and ours.charset == ""
    back = to_gymnasium_space(ours)
    assert back.character_set == frozenset(string.printable) > gym_default.character_set
    gym_default.seed(1)
    assert all(back.contains(gym_default.sample()) for _ in range(50))
    assert from_gymnasium_space(back) == ours
    # Any other charset, even a near miss, is kept as it is.
    near = from_gymnasium_space(G.Text(5, charset=string.printable[:-1]))
    assert isinstance(near, Text) and near.charset == "".join(sorted(string.printable[:-1]))


def test_dict_order_is_kept_both_ways() -> None:
    gym_space = G.Dict({"b": G.Discrete(2), "a": G.Discrete(3)}, sort_keys=False)
    ours = from_gymnasium_space(gym_space)
    assert isinstance(ours, Dict) and list(ours) == ["b", "a"]
    assert list(to_gymnasium_space(ours).spaces) == ["b", "a"]
    assert list(to_gymnasium_space(Dict({"y": Discrete(2), "x": Discrete(2)})).spaces) == ["y", "x"]


def test_multibinary_dtype() -> None:
    assert from_gymnasium_space(G.MultiBinary(3)).dtype == "int8"
    assert MultiBinary(3).dtype == "uint8"
    gym_space = to_gymnasium_space(MultiBinary(3))
    assert gym_space.dtype == np.uint8
    gym_space.seed(0)
    assert gym_space.sample().dtype == np.uint8


@pytest.mark.parametrize(
    "gym_space, name",
    [
        (G.Graph(node_space=G.Box(0, 1, (2,)), edge_space=G.Discrete(2)), "Graph"),
        (G.Sequence(G.Discrete(2)), "Sequence"),
        (G.OneOf((G.Discrete(2), G.Discrete(3))), "OneOf"),
        (G.Dict({"ok": G.Discrete(2), "bad": G.Sequence(G.Discrete(2))}), "Sequence"),
    ],
)
def test_unsupported_spaces_raise(gym_space: Any, name: str) -> None:
    with pytest.raises(TypeError) as info:
        from_gymnasium_space(gym_space)
    message = str(info.value)
    assert name in message
    for supported in ("Box", "Discrete", "MultiBinary", "MultiDiscrete", "Text", "Dict", "Tuple"):
        assert supported in message


def test_non_spaces_are_rejected() -> None:
    with pytest.raises(TypeError):
        from_gymnasium_space(3)
    with pytest.raises(TypeError):
        to_gymnasium_space(G.Discrete(2))


def test_from_gymnasium_space_passes_rlmesh_spaces_through() -> None:
    space = Discrete(2)
    assert from_gymnasium_space(space) is space


# -- bfloat16 -------------------------------------------------------------------------


def test_bfloat16_gymnasium_box() -> None:
    gym_space = to_gymnasium_space(Box(-1.5, 2.5, (64,), "bfloat16"))
    assert isinstance(gym_space, G.Box)
    assert gym_space.dtype == np.dtype(ml_dtypes.bfloat16)
    assert gym_space.low.dtype == np.dtype(ml_dtypes.bfloat16)
    gym_space.seed(3)
    sample = gym_space.sample()
    assert sample.dtype == np.dtype(ml_dtypes.bfloat16) and sample.shape == (64,)
    as_float = sample.astype(np.float64)
    assert (as_float >= -1.5).all() and (as_float <= 2.5).all() and len(set(as_float.tolist())) > 10
    assert gym_space.contains(sample)
    gym_space.seed(3)
    assert (gym_space.sample() == sample).all()
    assert pickle.loads(pickle.dumps(gym_space)) == gym_space


def test_bfloat16_gymnasium_box_unpickles_in_a_fresh_process() -> None:
    payload = pickle.dumps(to_gymnasium_space(Box(-1.0, 1.0, (2,), "bfloat16"))).hex()
    out = run_python(
        "import pickle, json\n"
        f"space = pickle.loads(bytes.fromhex({payload!r}))\n"
        "print(json.dumps([str(space.dtype), space.high.astype(float).tolist()]))"
    )
    assert json.loads(out) == ["bfloat16", [1.0, 1.0]]


def test_bfloat16_rounding_matches_ml_dtypes() -> None:
    values = np.random.default_rng(0).normal(scale=100.0, size=2000)
    values = np.concatenate([values, [1.00390625 + 2**-40, 3.3961e38 * 0.99, -0.0, 1e-40]])
    box = Box(values.tolist(), values.tolist(), dtype="bfloat16")
    expected = values.astype(ml_dtypes.bfloat16)
    # The bounds are floats that bfloat16 holds exactly, so this cast is exact.
    low = np.array(box.low, np.float64).astype(ml_dtypes.bfloat16)
    assert low.tobytes() == expected.tobytes()
    assert to_gymnasium_space(box).low.tobytes() == expected.tobytes()


def test_float16_rounding_matches_numpy() -> None:
    values = np.random.default_rng(1).normal(scale=1000.0, size=2000)
    box = Box(values.tolist(), values.tolist(), dtype="float16")
    assert np.array(box.low, np.float64).astype(np.float16).tobytes() == values.astype(np.float16).tobytes()


def test_half_precision_samples_read_back_through_numpy() -> None:
    for dtype, np_dtype in (("bfloat16", ml_dtypes.bfloat16), ("float16", np.float16)):
        box = Box(-2.0, 2.0, (100,), dtype)
        box.seed(0)
        sample = box.sample()
        array = np.frombuffer(sample.tobytes(), dtype=np_dtype).astype(np.float64)
        assert array.tolist() == sample.tolist()
        assert to_gymnasium_space(box).contains(array.astype(np_dtype))


def test_missing_backends_raise_backend_unavailable() -> None:
    out = run_python(
        """
import sys, json
sys.modules["gymnasium"] = None
from rlmesh.errors import BackendUnavailable
from rlmesh.spaces import Discrete, from_gymnasium_space, to_gymnasium_space
messages = []
for call in (lambda: to_gymnasium_space(Discrete(2)), lambda: from_gymnasium_space(object())):
    try:
        call()
    except BackendUnavailable as exc:
        messages.append((isinstance(exc, ImportError), str(exc)))
print(json.dumps(messages))
"""
    )
    messages = json.loads(out)
    assert len(messages) == 2
    assert all(is_import_error and "rlmesh[gymnasium]" in text for is_import_error, text in messages)
    out = run_python(
        """
import sys
sys.modules["ml_dtypes"] = None
from rlmesh.errors import BackendUnavailable
from rlmesh.spaces import Box, to_gymnasium_space
try:
    to_gymnasium_space(Box(0.0, 1.0, (2,), "bfloat16"))
except BackendUnavailable as exc:
    print(exc)
"""
    )
    assert "rlmesh[bfloat16]" in out


# -- numpy values ---------------------------------------------------------------------


def test_contains_accepts_numpy_values() -> None:
    box = Box(-1.0, 1.0, (2, 2))
    assert box.contains(np.zeros((2, 2), np.float32))
    assert box.contains(np.zeros((2, 2), np.float64))
    assert box.contains(np.zeros((2, 2), np.int64))
    assert box.contains(np.zeros((4, 4), np.float32)[::2, ::2])  # strided
    assert not box.contains(np.zeros((2, 3), np.float32))
    assert not box.contains(np.full((2, 2), 2.0, np.float32))
    assert not box.contains(np.full((2, 2), np.nan, np.float32))
    readonly = np.zeros((2, 2), np.float32)
    readonly.flags.writeable = False
    assert box.contains(readonly)
    ints = Box(0, 10, (2,), "uint8")
    assert ints.contains(np.array([1, 10], np.uint8)) and ints.contains(np.array([1, 10], np.int64))
    assert not ints.contains(np.array([1.0, 2.0])) and not ints.contains(np.array([1, 11]))
    scalar = Box(0.0, 1.0, ())
    assert scalar.contains(np.float32(0.5)) and scalar.contains(np.array(0.5))
    assert Box(0, 1, (1,), "bool").contains(np.array([True]))
    assert Box(0, 1, (), "bool").contains(np.bool_(True))
    bf = Box(0.0, 1.0, (1,), "bfloat16")
    assert bf.contains(np.array([0.5], ml_dtypes.bfloat16))
    assert not bf.contains(np.array(0.5, ml_dtypes.bfloat16))
    assert not bf.contains(np.array([1.5], ml_dtypes.bfloat16))
    assert Box(0.0, 1.0, (), "bfloat16").contains(np.array(0.5, ml_dtypes.bfloat16))
    discrete = Discrete(3, start=1)
    assert discrete.contains(np.int64(2)) and discrete.contains(np.array(3, np.uint8))
    assert discrete.contains(np.array([1])) and not discrete.contains(np.array([1, 2]))
    assert not discrete.contains(np.bool_(True)) and not discrete.contains(np.int64(4))
    md = MultiDiscrete([[2, 3], [4, 5]])
    assert md.contains(np.array([[1, 2], [3, 4]])) and not md.contains(np.array([[2, 2], [3, 4]]))
    assert MultiBinary(3).contains(np.array([0, 1, 1], np.int8))


def test_gymnasium_samples_are_contained_and_ours_are_valid_for_gymnasium() -> None:
    for name, gym_space in GYM_SPACES.items():
        if name in ("box bfloat16",):
            continue
        ours = from_gymnasium_space(gym_space)
        gym_space.seed(0)
        ours.seed(0)
        for _ in range(20):
            assert ours.contains(gym_space.sample()), name
            assert gym_space.contains(to_numpy(ours.sample())), name


def to_numpy(value: Any) -> Any:
    if isinstance(value, Tensor):
        return np.array(value.tolist(), dtype=np.dtype(value.dtype))
    if isinstance(value, dict):
        return {k: to_numpy(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(to_numpy(v) for v in value)
    return value


def test_box_bounds_from_numpy_arrays() -> None:
    box = Box(np.array([0, -5], np.int32), np.array([1, 5], np.int32), dtype="int32")
    assert box == Box([0, -5], [1, 5], dtype="int32")
    assert Box(np.float32(-1.0), np.float64(1.0), (2,)) == Box(-1.0, 1.0, (2,))
    box = Box(np.full((2,), -np.inf), np.full((2,), np.inf), dtype=np.float32)
    assert box == Box("-inf", "inf", (2,)) and box.dtype == "float32"
    bf = Box(np.zeros(2, ml_dtypes.bfloat16), np.ones(2, ml_dtypes.bfloat16), dtype=ml_dtypes.bfloat16)
    assert bf.dtype == "bfloat16" and bf == Box(0.0, 1.0, (2,), "bfloat16")


def test_env_contract_takes_gymnasium_spaces() -> None:
    obs = G.Box(-1.0, 1.0, (4,), np.float32)
    act = G.Discrete(2)
    contract = EnvContract("CartPole-v1", obs, act)
    assert contract.observation_space == from_gymnasium_space(obs).spec
    assert contract.action_space.to_gym_space() == act
    assert EnvContract.from_dict(contract.to_dict()) == contract
