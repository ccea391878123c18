"""rlmesh.spaces._walk: the one traversal over space specs, and the sizes built on it."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from rlmesh._dtypes import DTYPES
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
    space_from_spec,
    to_gymnasium_space,
)
from rlmesh.spaces._values import lane_stacker, tuple_restorer
from rlmesh.spaces._walk import (
    Path,
    fold,
    leaf_nbytes,
    leaves,
    location,
    tensor_leaf_sizes,
    value_path,
    wire_size_bound,
)
from rlmesh.specs import EnvContract, action_bytes_bound, step_tensor_sizes
from rlmesh.tensor import Tensor

# -- the sizes as rlmesh/server.py computed them before the walk existed (verbatim) ---------


def reference_leaf_sizes(contract: EnvContract) -> list[int]:
    batch = contract.num_envs
    sizes: list[int] = []

    def visit(spec: Any) -> None:
        if spec.kind == "dict":
            for _, child in spec.details["spaces"]:
                visit(child)
        elif spec.kind == "tuple":
            for child in spec.details["spaces"]:
                visit(child)
        elif spec.kind == "discrete":
            if batch > 1:
                sizes.append(8 * batch)
        elif spec.kind != "text":
            sizes.append(math.prod(spec.shape) * DTYPES[spec.dtype].itemsize * batch)

    visit(contract.observation_space)
    if batch > 1:
        sizes.extend([8 * batch, batch, batch])
    return sizes


def reference_contract_action_bytes(contract: EnvContract) -> int:
    def leaf(spec: Any) -> int:
        if spec.kind == "dict":
            return int(sum(leaf(c) for _, c in spec.details["spaces"])) + 64
        if spec.kind == "tuple":
            return int(sum(leaf(c) for c in spec.details["spaces"])) + 64
        if spec.kind == "text":
            return 4 * int(spec.details["max_length"]) + 16
        return int(math.prod(spec.shape)) * DTYPES[spec.dtype].itemsize + 128

    return leaf(contract.action_space) * contract.num_envs + 256


# -- random specs -------------------------------------------------------------------------

FLOATS = ["float16", "bfloat16", "float32", "float64"]
INTS = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"]
shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)

leaf_spaces: st.SearchStrategy[Space[Any]] = st.one_of(
    st.builds(lambda shape, dt: Box(-1.0, 1.0, shape, dt), shapes, st.sampled_from(FLOATS)),
    st.builds(lambda shape, dt: Box(0, 3, shape, dt), shapes, st.sampled_from(INTS)),
    st.builds(
        lambda n, start, dt: Discrete(n, start, dt),
        st.integers(1, 9),
        st.integers(-3, 3),
        st.sampled_from(["int8", "int32", "int64"]),
    ),
    st.builds(
        lambda shape, dt: MultiBinary(shape, dtype=dt), shapes, st.sampled_from(["bool", "uint8", "int32"])
    ),
    st.builds(
        lambda nvec, dt: MultiDiscrete(nvec, dt),
        st.lists(st.integers(1, 5), min_size=1, max_size=4),
        st.sampled_from(INTS),
    ),
    st.builds(lambda hi, lo: Text(hi + lo, min_length=lo), st.integers(0, 40), st.integers(0, 3)),
)

any_spaces: st.SearchStrategy[Space[Any]] = st.recursive(
    leaf_spaces,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(Tuple),
        st.dictionaries(st.text("abcxyz_", min_size=1, max_size=4), children, max_size=4).map(Dict),
    ),
    max_leaves=12,
)


# -- equivalence with the sizes the server computed ----------------------------------------


@settings(max_examples=300, deadline=None)
@given(obs=any_spaces, act=any_spaces, num_envs=st.sampled_from([1, 2, 3, 8, 64]))
def test_contract_sizes_equal_the_servers_former_ones(
    obs: Space[Any], act: Space[Any], num_envs: int
) -> None:
    contract = EnvContract("Walk-v0", obs, act, num_envs=num_envs)
    assert step_tensor_sizes(contract) == reference_leaf_sizes(contract)
    assert action_bytes_bound(contract) == reference_contract_action_bytes(contract)


NESTED = Dict(
    {
        "image": Box(0, 255, (4, 5, 3), "uint8"),
        "pair": Tuple((Discrete(3), Text(6, charset="ab"))),
        "inner": Dict({"mask": MultiBinary((2, 2), dtype="bool"), "md": MultiDiscrete([2, 3], "int16")}),
        "empty": Tuple(()),
        "vel": Box(-1.0, 1.0, (2,), "float64"),
    }
)


@pytest.mark.parametrize("num_envs", [1, 4])
@pytest.mark.parametrize(
    "space",
    [NESTED, Discrete(5), Text(9), Box(-1.0, 1.0, (0,)), Tuple(()), Dict({}), Tuple((NESTED, NESTED))],
    ids=["nested", "discrete", "text", "empty-box", "empty-tuple", "empty-dict", "tuple-of-nested"],
)
def test_fixed_contract_sizes_equal_the_servers_former_ones(space: Space[Any], num_envs: int) -> None:
    contract = EnvContract("Walk-v0", space, space, num_envs=num_envs)
    assert step_tensor_sizes(contract) == reference_leaf_sizes(contract)
    assert action_bytes_bound(contract) == reference_contract_action_bytes(contract)


def test_the_nested_sizes_by_hand() -> None:
    # image 60 B, mask 4 B, md 2 x 2 B, vel 16 B; Discrete and Text carry no tensor for one env.
    assert tensor_leaf_sizes(NESTED.spec) == [60, 4, 4, 16]
    # A vector env's Discrete lanes are one int64 tensor.
    assert tensor_leaf_sizes(NESTED.spec, 3) == [180, 24, 12, 12, 48]
    vector = EnvContract("Walk-v0", NESTED, Discrete(2), num_envs=3)
    assert step_tensor_sizes(vector) == [180, 24, 12, 12, 48, 24, 3, 3]
    # Text: 4 bytes a character + 16; Discrete(int64): 8 + 128; Box: data + 128; containers + 64.
    assert wire_size_bound(Tuple((Text(5), Discrete(2))).spec) == (4 * 5 + 16) + (8 + 128) + 64
    assert wire_size_bound(Box(0, 1, (3,), "int32").spec) == 12 + 128


# -- the traversal itself -------------------------------------------------------------------


def test_leaves_come_depth_first_with_their_paths() -> None:
    got = [(path, spec.kind) for path, spec in leaves(NESTED.spec)]
    assert got == [
        (("image",), "box"),
        (("pair", 0), "discrete"),
        (("pair", 1), "text"),
        (("inner", "mask"), "multi_binary"),
        (("inner", "md"), "multi_discrete"),
        (("vel",), "box"),
    ]
    assert list(leaves(Discrete(2).spec)) == [((), Discrete(2).spec)]
    assert list(leaves(Tuple(()).spec)) == []
    assert [p for p, _ in leaves(NESTED.spec, ("root", 2))][0] == ("root", 2, "image")


def _rebuild(spec: SpaceSpec) -> tuple[SpaceSpec, list[Path]]:
    """Fold a spec back into itself, recording the order in which nodes were visited."""
    seen: list[Path] = []

    def leaf(node: SpaceSpec, path: Path) -> SpaceSpec:
        seen.append(path)
        return node

    def dict_node(node: SpaceSpec, path: Path, pairs: list[tuple[str, SpaceSpec]]) -> SpaceSpec:
        seen.append(path)
        return Dict(pairs).spec

    def tuple_node(node: SpaceSpec, path: Path, items: list[SpaceSpec]) -> SpaceSpec:
        seen.append(path)
        return Tuple(items).spec

    return fold(spec, leaf, dict_node, tuple_node), seen


@settings(max_examples=200, deadline=None)
@given(space=any_spaces)
def test_fold_rebuilds_every_spec_and_meets_leaves_in_leaf_order(space: Space[Any]) -> None:
    rebuilt, seen = _rebuild(space.spec)
    assert rebuilt == space.spec
    leaf_paths = [path for path, _ in leaves(space.spec)]
    # Children before their parent; the leaves in the order leaves() gives them.
    assert [p for p in seen if p in set(leaf_paths)] == leaf_paths
    for i, path in enumerate(seen):
        assert all(other[: len(path)] != path or len(other) == len(path) for other in seen[i + 1 :])


def test_fold_hands_composites_their_own_spec_and_path() -> None:
    calls: list[tuple[str, Path]] = []

    def leaf(node: SpaceSpec, path: Path) -> int:
        return 1

    def dict_node(node: SpaceSpec, path: Path, pairs: list[tuple[str, int]]) -> int:
        calls.append((node.kind, path))
        assert [k for k, _ in pairs] == [k for k, _ in node.details["spaces"]]
        return sum(v for _, v in pairs)

    def tuple_node(node: SpaceSpec, path: Path, items: list[int]) -> int:
        calls.append((node.kind, path))
        assert len(items) == len(node.details["spaces"])
        return sum(items)

    assert fold(NESTED.spec, leaf, dict_node, tuple_node) == 6
    assert calls == [("tuple", ("pair",)), ("dict", ("inner",)), ("tuple", ("empty",)), ("dict", ())]


def test_paths_as_text() -> None:
    paths: list[Path] = [(), ("pos",), (1,), ("pair", 0, "x"), (0, 1), ("a", "b")]
    assert [value_path(p) for p in paths] == ["$", "$.pos", "$[1]", "$.pair[0].x", "$[0][1]", "$.a.b"]
    assert [location(p) for p in paths] == ["", "pos", "[1]", "pair[0].x", "[0][1]", "a.b"]


def test_leaf_nbytes() -> None:
    assert leaf_nbytes(Box(0.0, 1.0, (2, 3), "float32").spec) == 24
    assert leaf_nbytes(Box(0.0, 1.0, (2, 3), "bfloat16").spec, 5) == 60
    assert leaf_nbytes(Box(0.0, 1.0, (0,), "float64").spec, 5) == 0
    assert leaf_nbytes(Discrete(3, dtype="int8").spec) is None
    assert leaf_nbytes(Discrete(3, dtype="int8").spec, 2) == 16
    assert leaf_nbytes(Text(4).spec) is None and leaf_nbytes(Text(4).spec, 2) is None
    with pytest.raises(ValueError, match="not a leaf"):
        leaf_nbytes(NESTED.spec)
    with pytest.raises(ValueError, match="batch"):
        leaf_nbytes(Discrete(3).spec, 0)
    with pytest.raises(ValueError, match="batch"):
        tensor_leaf_sizes(NESTED.spec, -1)


# -- the sizes agree with what the observation encoder really writes -------------------------


class RecordingSink:
    """A sink that keeps the bytes of every tensor the encoder stores."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def target(self, shape: tuple[int, ...], dtype: Any) -> tuple[Any, memoryview]:
        nbytes = math.prod(shape) * dtype.itemsize
        self.sizes.append(nbytes)
        return None, memoryview(bytearray(nbytes))

    def put(self, data: Any, shape: tuple[int, ...], dtype: Any) -> Any:
        self.sizes.append(math.prod(shape) * dtype.itemsize)


@settings(max_examples=100, deadline=None)
@given(space=any_spaces, num_envs=st.sampled_from([1, 3]))
def test_tensor_leaf_sizes_are_what_the_encoder_stores(space: Space[Any], num_envs: int) -> None:
    np = pytest.importorskip("numpy")
    from rlmesh._adapter import compile_encoder
    from rlmesh.numpy import space_from_spec as numpy_space_from_spec

    numpy_space = numpy_space_from_spec(space.spec)
    numpy_space.seed(0)
    batch = None if num_envs == 1 else num_envs
    lanes = [numpy_space.sample() for _ in range(num_envs)]

    def pick(path: Path) -> list[Any]:
        values = lanes
        for step in path:
            values = [v[step] for v in values]
        return values

    def leaf(node: SpaceSpec, path: Path) -> Any:
        values = pick(path)
        if batch is None:
            return values[0]
        return list(values) if node.kind == "text" else np.stack(values)

    value = fold(
        space.spec,
        leaf,
        lambda node, path, pairs: dict(pairs),
        lambda node, path, items: tuple(items),
    )
    sink = RecordingSink()
    compile_encoder(space.spec, batch)(value, sink)  # type: ignore[arg-type]
    assert sink.sizes == tensor_leaf_sizes(space.spec, batch)


# -- the walkers built on fold agree with the specs they walk ----------------------------------


@settings(max_examples=150, deadline=None)
@given(space=any_spaces)
def test_walkers_built_on_fold_round_trip(space: Space[Any]) -> None:
    import msgpack

    spec = space.spec
    wire = spec.to_dict()
    assert SpaceSpec.from_dict(msgpack.unpackb(msgpack.packb(wire))) == spec
    rebuilt = space_from_spec(spec)
    assert rebuilt == space and type(rebuilt) is type(space)
    for (path, leaf), (_, twin) in zip(leaves(spec), leaves(rebuilt.spec), strict=True):
        node: Any = rebuilt
        for step in path:
            node = node[step]
        assert node.spec == leaf == twin
    # Gymnasium refuses spaces with no elements (MultiBinary(0), a Box of shape (0,)).
    if all(math.prod(leaf.shape) for _, leaf in leaves(spec)):
        assert from_gymnasium_space(to_gymnasium_space(spec)).spec == spec


# -- lane stacking: the client's per-step _stack, compiled once by the walk ---------------------


def reference_stack(lanes: list[Any], spec: Any) -> Any:
    """rlmesh/client.py's _stack before the walk existed (verbatim but for its name)."""
    kind = spec.kind
    if kind == "dict":
        return {
            key: reference_stack([lane[key] for lane in lanes], child)
            for key, child in spec.details["spaces"]
        }
    if kind == "tuple":
        return [
            reference_stack([lane[i] for lane in lanes], child)
            for i, child in enumerate(spec.details["spaces"])
        ]
    if kind in ("discrete", "text"):
        return [lane.item() if isinstance(lane, Tensor) else lane for lane in lanes]
    tensors = [lane if isinstance(lane, Tensor) else None for lane in lanes]
    if all(t is not None for t in tensors):
        first = tensors[0]
        assert first is not None
        data = b"".join(t.tobytes() for t in tensors if t is not None)
        return Tensor(data, (len(lanes), *first.shape), first.dtype)
    return lanes


def comparable(value: Any) -> Any:
    """A value with every Tensor replaced by what identifies it: class, shape, dtype, bytes."""
    if isinstance(value, Tensor):
        return ("Tensor", tuple(value.shape), value.dtype, value.tobytes())
    if isinstance(value, dict):
        return {key: comparable(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [comparable(v) for v in value])
    return (type(value).__name__, value)


def as_lists(value: Any) -> Any:
    """A lane whose tensors arrive as plain lists, as a bridge may leave them."""
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {key: as_lists(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(as_lists(v) for v in value)
    return value


def zero_d(value: Any, spec: SpaceSpec) -> Any:
    """A lane whose Discrete values arrive as 0-d Tensors (Tensor.item() must unwrap them)."""
    return fold(
        spec,
        lambda node, path: _at(value, path) if node.kind != "discrete" else int_tensor(_at(value, path)),
        lambda node, path, pairs: dict(pairs),
        lambda node, path, items: tuple(items),
    )


def int_tensor(values: list[int] | int, dtype: str = "int64") -> Tensor:
    """A little-endian integer Tensor: 0-d for an int, 1-d for a list."""
    flat = [values] if isinstance(values, int) else values
    code = {"int32": "i", "int64": "q"}[dtype]
    shape: tuple[int, ...] = () if isinstance(values, int) else (len(flat),)
    return Tensor(struct.pack(f"<{len(flat)}{code}", *flat), shape, dtype)


def _at(value: Any, path: Path) -> Any:
    for step in path:
        value = value[step]
    return value


@settings(max_examples=200, deadline=None)
@given(
    space=any_spaces, num_envs=st.sampled_from([1, 2, 5]), form=st.sampled_from(["tensors", "lists", "0-d"])
)
def test_lane_stacker_equals_the_clients_former_stack(space: Space[Any], num_envs: int, form: str) -> None:
    space.seed(7)
    lanes = [space.sample() for _ in range(num_envs)]
    if form == "lists":
        lanes = [as_lists(lane) for lane in lanes]
    elif form == "0-d":
        lanes = [zero_d(lane, space.spec) for lane in lanes]
    expected = comparable(reference_stack(lanes, space.spec))
    assert comparable(lane_stacker(space.spec)(lanes)) == expected


def test_lane_stacker_by_hand_and_its_errors() -> None:
    spec = Dict({"pos": Box(0, 9, (2,), "int32"), "pair": Tuple((Discrete(3), Text(4)))}).spec
    lanes = [
        {"pos": int_tensor([1, 2], "int32"), "pair": (int_tensor(2), "ab")},
        {"pos": int_tensor([3, 4], "int32"), "pair": (0, "cd")},
    ]
    out = lane_stacker(spec)(lanes)
    assert list(out) == ["pos", "pair"]
    assert out["pos"].shape == (2, 2) and out["pos"].tolist() == [[1, 2], [3, 4]]
    assert out["pair"] == [[2, 0], ["ab", "cd"]]
    with pytest.raises(KeyError):
        lane_stacker(spec)([{"pos": int_tensor([1, 2], "int32")}])
    with pytest.raises(IndexError):
        lane_stacker(Tuple((Discrete(2), Discrete(2))).spec)([(1,)])


# -- tuple restoring: rlmesh/_codec.py's restructurer, compiled by the walk --------------------


def reference_restructurer(spec: Any) -> Any:
    """rlmesh/_codec.py's restructurer before the walk existed (verbatim but for its name)."""
    kind = spec.kind
    if kind == "tuple":
        subs = spec.details["spaces"]
        parts = [reference_restructurer(child) for child in subs]

        def fix_tuple(value: Any) -> Any:
            if not isinstance(value, (list, tuple)) or len(value) != len(parts):
                return value
            return tuple(v if fix is None else fix(v) for fix, v in zip(parts, value, strict=True))

        return fix_tuple
    if kind == "dict":
        children = {key: reference_restructurer(child) for key, child in spec.details["spaces"]}
        if all(fix is None for fix in children.values()):
            return None

        def fix_dict(value: Any) -> Any:
            if not isinstance(value, dict):
                return value
            return {k: (v if children.get(k) is None else children[k](v)) for k, v in value.items()}

        return fix_dict
    return None


def on_the_wire(value: Any) -> Any:
    """A value as msgpack decodes it: every tuple a list."""
    if isinstance(value, dict):
        return {key: on_the_wire(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [on_the_wire(v) for v in value]
    return value


@settings(max_examples=200, deadline=None)
@given(space=any_spaces, data=st.data())
def test_tuple_restorer_equals_the_codecs_former_restructurer(space: Space[Any], data: st.DataObject) -> None:
    new, old = tuple_restorer(space.spec), reference_restructurer(space.spec)
    assert (new is None) == (old is None)
    if new is None:
        return
    space.seed(3)
    wire = on_the_wire(space.sample())
    # Values that do not fit the space pass through both alike.
    odd = data.draw(st.sampled_from([None, 5, "x", [], [1, 2, 3, 4, 5, 6], {"zz": [1]}, {}]))
    for value in (wire, odd, [wire, wire], {"extra": wire}):
        assert comparable(new(value)) == comparable(old(value))


def test_tuple_restorer_by_hand() -> None:
    spec = Dict({"pair": Tuple((Discrete(3), Tuple((Text(2),)))), "n": Discrete(2)}).spec
    fix = tuple_restorer(spec)
    assert fix is not None
    assert fix({"pair": [1, ["ab"]], "n": 0}) == {"pair": (1, ("ab",)), "n": 0}
    assert fix({"pair": [1], "n": 0}) == {"pair": [1], "n": 0}  # the wrong length is left for the checks
    assert tuple_restorer(Dict({"a": Discrete(2)}).spec) is None
    assert tuple_restorer(Box(0.0, 1.0, (2,)).spec) is None
    assert tuple_restorer(Tuple(()).spec) is not None
