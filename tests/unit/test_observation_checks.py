"""The compiled observation checks of rlmesh._conformance, over dtypes, sizes, bounds and lanes."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from rlmesh import Tensor, spaces
from rlmesh._conformance import SMALL, WARNING_KEY, Conformance, _Leaf, resolve_policy, value_path
from rlmesh._dtypes import DTYPES
from rlmesh.errors import SpecError

FLOATS = ["float16", "bfloat16", "float32", "float64"]


def np_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def bounds(kind: str, dtype: str, size: int) -> tuple[object, object]:
    """Box bounds of one kind: uniform two-sided, low only, high only, elementwise."""
    if kind == "both":
        return -2, 5
    if kind == "low":
        return -2, (math.inf if dtype in FLOATS else np.iinfo(np_dtype(dtype)).max)
    if kind == "high":
        return (-math.inf if dtype in FLOATS else np.iinfo(np_dtype(dtype)).min), 5
    low = np.full(size, -2, np.float64)
    high = np.full(size, 5, np.float64)
    low[1::2], high[::3] = -1, 3
    if dtype in FLOATS:
        high[2::4] = math.inf
    return low, high


@pytest.mark.parametrize("size", [4, SMALL // 3, 200])  # the unrolled path (with 3 lanes too), numpy
@pytest.mark.parametrize("batch", [None, 3])
@pytest.mark.parametrize("kind", ["both", "low", "high", "elementwise"])
@pytest.mark.parametrize("dtype", [*FLOATS, "int8", "int32", "int64"])
def test_tensor_checks_agree_with_a_reference(dtype: str, kind: str, batch: int | None, size: int) -> None:
    low, high = bounds(kind, dtype, size)
    space = spaces.Box(low, high, (size,), dtype)
    lows = np.broadcast_to(np.asarray(low, np.float64), (size,))
    highs = np.broadcast_to(np.asarray(high, np.float64), (size,))
    conformance = Conformance("warn")
    check = conformance.tensor_check(space.spec, batch, ("x",))
    assert check is not None
    lanes = batch or 1
    values = np.zeros((lanes, size), np.float64)
    check(values.astype(np_dtype(dtype)).reshape((batch, size) if batch else (size,)))
    assert conformance.pending == []
    # One value outside, in the last lane: reported once, with its place.
    index = size - 2
    bad = values.copy()
    bad[-1, index] = highs[index] + 1 if kind in ("both", "high", "elementwise") else lows[index] - 1
    if not math.isfinite(bad[-1, index]):
        bad[-1, index] = lows[index] - 1
    arr = bad.astype(np_dtype(dtype)).reshape((batch, size) if batch else (size,))
    check(arr)
    place = f"in lane {lanes - 1} at index ({index},)" if batch else f"at index ({index},)"
    assert len(conformance.pending) == 1 and place in conformance.pending[0]["detail"]
    assert conformance.pending[0]["path"] == "$.x"
    check(arr)
    assert len(conformance.pending) == 1  # once per path and session
    if dtype in FLOATS:
        nan = values.copy()
        nan[0, 1] = math.nan
        with pytest.raises(SpecError, match="NaN .*index \\(1,\\)"):
            check(nan.astype(np_dtype(dtype)).reshape((batch, size) if batch else (size,)))


@pytest.mark.parametrize("size", [4, 300])
def test_bounds_that_cover_an_integer_dtype_cost_nothing(size: int) -> None:
    conformance = Conformance("strict")
    for dtype in ("uint8", "int16", "uint64", "bool"):
        info = np.iinfo(dtype) if dtype != "bool" else None
        low, high = (info.min, info.max) if info is not None else (0, 1)
        assert conformance.tensor_check(spaces.Box(low, high, (size,), dtype).spec, None, ()) is None
    assert conformance.tensor_check(spaces.Box(0, 255, (size,), "int32").spec, None, ()) is not None
    # Unbounded floats are still checked: NaN.
    assert conformance.tensor_check(spaces.Box(-math.inf, math.inf, (size,), "float32").spec, None, ())


def test_the_list_path_checks_tensors_without_numpy() -> None:
    # What a server without numpy runs: Tensor values through tolist().
    conformance = Conformance("warn")
    leaf = _Leaf("$", DTYPES["float32"], (3,), None, [0.0] * 3, [1.0] * 3, "the Box bounds")
    check = conformance._list_check(leaf)
    assert check is not None

    def tensor(*values: float) -> Tensor:
        return Tensor(np.array(values, np.float32).tobytes(), (3,), "float32")

    check(tensor(0.5, 0.5, 0.5))
    assert conformance.pending == []
    check(tensor(0.5, 2.0, 3.0))
    assert (
        conformance.pending[0]["detail"]
        == "2.0 at index (1,) is above 1.0 (2 values are outside the Box bounds)"
    )
    with pytest.raises(SpecError, match="NaN at index \\(2,\\)"):
        check(tensor(0.5, 0.5, math.nan))


def test_strict_raises_every_time_and_warn_is_per_session() -> None:
    space = spaces.Box(0, 10, (2, 2), "int64").spec
    strict = Conformance("strict")
    check = strict.tensor_check(space, None, ("grid",))
    for _ in range(2):
        with pytest.raises(
            SpecError, match=r"outside its space at \$.grid: 11 at index \(1, 0\) is above 10"
        ):
            check(np.array([[0, 0], [11, 0]]))
    warn = Conformance("warn")
    check = warn.tensor_check(space, None, ("grid",))
    check(np.array([[0, 0], [11, 0]]))
    info = warn.attach({"a": 1})
    assert info == {
        "a": 1,
        WARNING_KEY: [{"kind": "observation", "path": "$.grid", "detail": "11 at index (1, 0) is above 10"}],
    }
    check(np.array([[0, 0], [11, 0]]))
    assert warn.pending == []
    warn.begin_session()
    check(np.array([[0, -1], [0, 0]]))
    assert warn.pending[0]["detail"] == "-1 at index (0, 1) is below 0"
    warn.discard_pending()  # never delivered: may be reported again
    check(np.array([[0, -1], [0, 0]]))
    assert len(warn.pending) == 1


def test_paths_and_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    paths: list[tuple[str | int, ...]] = [(), ("pos",), (1,), ("pair", 0, "x")]
    assert [value_path(p) for p in paths] == ["$", "$.pos", "$[1]", "$.pair[0].x"]
    monkeypatch.delenv("RLMESH_VALIDATION_POLICY", raising=False)
    assert resolve_policy(None) == "warn"
    monkeypatch.setenv("RLMESH_VALIDATION_POLICY", " Strict ")
    assert resolve_policy(None) == "strict" and resolve_policy("off") == "off"
    with pytest.raises(ValueError, match="validation must be one of"):
        resolve_policy("never")
    with pytest.raises(ValueError):
        Conformance("off")
