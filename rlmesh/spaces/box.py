"""Box: an array of numbers, each within its ``[low, high]``."""

from __future__ import annotations

import math
from typing import Any, cast

from .._bridge import IDENTITY, Bridge
from .._dtypes import DLPACK_BOOL, DTYPES, dtype_info, is_float, is_integer
from ..tensor import Tensor
from ._arrays import _as_array, _make_tensor, _nest, _round_float, _Scalar, _user_array, _user_bound_scalar
from ._base import Space
from ._checks import _check_shape
from ._spec import SpaceSpec, _box_details


def _fmt_number(value: _Scalar) -> str:
    return repr(value)


class Box(Space[Any], kind="box"):
    """A box of numbers: each element lies in ``[low, high]``.

    ``Box(low, high, shape, dtype)`` takes scalar bounds (numbers, or the strings
    "inf"/"-inf") with a required ``shape``, or array-like bounds (sequences,
    Tensors, DLPack producers such as numpy arrays) whose shape is the box's.
    ``Box(spec)`` wraps a box :class:`SpaceSpec`.

    Integer boxes are always bounded: an infinite bound becomes the dtype's limit.

    Args:
        low: lower bound(s), or a SpaceSpec of kind "box".
        high: upper bound(s).
        shape: the shape; required when both bounds are scalars.
        dtype: element dtype: a name ("float32") or dtype-like (``float``).
        bridge: converts samples and values for an array library.

    Raises:
        TypeError: a bound, shape or dtype of the wrong type.
        ValueError: NaN bounds, ``low > high``, a bound outside the dtype's
            range, shapes that disagree, or a size over the limits.
    """

    def __init__(
        self,
        low: Any,
        high: Any = None,
        shape: Any = None,
        dtype: Any = "float32",
        *,
        bridge: Bridge = IDENTITY,
    ) -> None:
        if isinstance(low, SpaceSpec):
            if high is not None or shape is not None:
                raise TypeError("Box(spec) takes no high or shape")
            if low.kind != "box":
                raise ValueError(f"Box(spec) needs a box spec, got a {low.kind} spec")
            if dtype != "float32" and dtype_info(dtype).name != low.dtype:
                raise ValueError(f"dtype {dtype!r} disagrees with the spec's {low.dtype}")
            self._setup(low, bridge)
            return
        if high is None:
            raise TypeError("Box() needs both low and high (or a single SpaceSpec)")
        dt = dtype_info(dtype)
        low_array = _user_array(low, "low")
        high_array = _user_array(high, "high")
        shapes = [a[0] for a in (low_array, high_array) if a is not None]
        if shape is not None:
            dims = _check_shape(shape, "shape", False)
        elif shapes:
            dims = _check_shape(list(shapes[0]), "shape", False)
        else:
            raise ValueError("Box() needs a shape when both bounds are scalars")
        for name, array in (("low", low_array), ("high", high_array)):
            if array is not None and array[0] != dims:
                raise ValueError(f"{name} has shape {array[0]}, but the box has shape {dims}")
        if low_array is None and high_array is None:
            details = _box_details(
                dims, dt, _user_bound_scalar(low), _user_bound_scalar(high), True, "", False
            )
        else:
            size = math.prod(dims)
            lows = low_array[1] if low_array is not None else [_user_bound_scalar(low)] * size
            highs = high_array[1] if high_array is not None else [_user_bound_scalar(high)] * size
            details = _box_details(dims, dt, lows, highs, False, "", False)
        self._setup(SpaceSpec._new("box", dims, dt.name, details), bridge)

    def _setup(self, spec: SpaceSpec, bridge: Any) -> None:
        super()._setup(spec, bridge)
        self._dt = DTYPES[cast(str, spec.dtype)]
        self._dims = spec.shape
        self._uniform = spec._get("bounds") == "uniform"
        self._low_raw: Any = spec._get("low")
        self._high_raw: Any = spec._get("high")

    @property
    def bounds_kind(self) -> str:
        """The bounds' form: "uniform" (one pair for every element) or "elementwise"."""
        return "uniform" if self._uniform else "elementwise"

    def _bound(self, raw: Any) -> int | float | list[Any]:
        if self._uniform:
            return cast(int | float, raw)
        # A fresh nest per call, so a caller editing it cannot change the box.
        return cast(list[Any], _nest(list(raw), self._dims))

    @property
    def low(self) -> int | float | list[Any]:
        """The lower bound, as the spec holds it (not decoded by the bridge).

        One number for uniform bounds (a float for float dtypes, an int for
        integer and bool dtypes, exact for int64 and uint64); nested lists
        shaped like the box for elementwise bounds. The full-shape array is
        ``space.to_gymnasium_space().low``.
        """
        return self._bound(self._low_raw)

    @property
    def high(self) -> int | float | list[Any]:
        """The upper bound, in the form :attr:`low` describes."""
        return self._bound(self._high_raw)

    def _flat_bounds(self) -> tuple[list[_Scalar], list[_Scalar]]:
        size = math.prod(self._dims)
        if self._uniform:
            return [self._low_raw] * size, [self._high_raw] * size
        return list(self._low_raw), list(self._high_raw)

    def is_bounded(self, manner: str = "both") -> bool:
        """Whether the box is bounded: "both", "below" or "above".

        Integer boxes are always bounded, by the dtype's range if nothing else.

        Raises:
            ValueError: ``manner`` is not one of the three.
        """
        if manner not in ("both", "below", "above"):
            raise ValueError(f"manner must be 'both', 'below' or 'above', got {manner!r}")
        if not is_float(self._dt):
            return True
        lows, highs = self._flat_bounds()
        below = all(v > -math.inf for v in lows)
        above = all(v < math.inf for v in highs)
        return {"both": below and above, "below": below, "above": above}[manner]

    def _draw_float(self, lo: float, hi: float) -> float:
        rng = self._rng
        if lo > -math.inf and hi < math.inf:
            u = rng.random()
            # Mixing the ends (not lo + (hi - lo) * u) cannot overflow when hi - lo does.
            value = (1.0 - u) * lo + u * hi
        elif lo > -math.inf:
            value = lo + rng.expovariate(1.0)
        elif hi < math.inf:
            value = hi - rng.expovariate(1.0)
        else:
            value = rng.normalvariate(0.0, 1.0)
        value = _round_float(value, self._dt)
        return min(max(value, lo), hi)

    def _sample_wire(self) -> Tensor:
        lows, highs = self._flat_bounds()
        if is_float(self._dt):
            values: list[Any] = [self._draw_float(lo, hi) for lo, hi in zip(lows, highs, strict=True)]
        else:
            randint = self._rng.randint
            values = [randint(int(lo), int(hi)) for lo, hi in zip(lows, highs, strict=True)]
        return _make_tensor(values, self._dims, self._dt)

    def _contains_wire(self, value: Any) -> bool:
        parsed = _as_array(value)
        if parsed is None:
            return False
        shape, kind, values = parsed
        if shape != self._dims:
            return False
        if self._dt.dlpack_code == DLPACK_BOOL:
            if kind not in (None, "bool"):
                return False
        elif is_integer(self._dt) and kind == "float":
            return False
        lows, highs = self._flat_bounds()
        # NaN fails both comparisons, so it is never contained.
        return all(lo <= v <= hi for v, lo, hi in zip(values, lows, highs, strict=True))

    def __repr__(self) -> str:
        dims = self._dims
        size: int = math.prod(dims)
        if self._uniform:
            low, high = _fmt_number(self._low_raw), _fmt_number(self._high_raw)
        elif size <= 16:
            low = repr(_nest(list(self._low_raw), dims)) if size else "[]"
            high = repr(_nest(list(self._high_raw), dims)) if size else "[]"
        else:
            low, high = "<elementwise>", "<elementwise>"
        return f"Box({low}, {high}, {dims}, {self._dt.name})"
