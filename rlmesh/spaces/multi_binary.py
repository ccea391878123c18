"""MultiBinary: an array of 0/1 values."""

from __future__ import annotations

import math
from typing import Any, cast

from .._bridge import IDENTITY, Bridge
from .._dtypes import DTYPES, dtype_info
from .._shape import Shape
from ..tensor import Tensor
from ._arrays import _as_array, _make_tensor
from ._base import Space
from ._checks import _check_shape, _is_intlike_dtype
from ._spec import SpaceSpec


class MultiBinary(Space[Any], kind="multi_binary"):
    """An array of 0/1 values with a fixed shape.

    Args:
        n: the number of elements (an int) or the shape (a sequence of ints).
        dtype: an integer or bool dtype; "uint8" by default (Gymnasium uses int8).
        bridge: converts samples and values for an array library.

    Raises:
        TypeError: ``n`` is not an int or a sequence of ints.
        ValueError: negative dimensions, a float dtype, or a size over the limits.
    """

    def __init__(self, n: Any, *, dtype: Any = "uint8", bridge: Bridge = IDENTITY) -> None:
        dt = dtype_info(dtype)
        if not _is_intlike_dtype(dt):
            raise ValueError(f"MultiBinary needs an integer or bool dtype, got {dt.name}")
        shape = _check_shape(n, "n", False)
        self._setup(SpaceSpec._new("multi_binary", shape, dt.name, ()), bridge)

    @property
    def dims(self) -> Shape:
        """The shape (a tuple that also equals the list of the same ints)."""
        return self._spec.shape

    @property
    def n(self) -> int | Shape:
        """The element count for a 1-D space, else the shape (as Gymnasium's ``n``)."""
        dims = self.dims
        return dims[0] if len(dims) == 1 else dims

    @property
    def size(self) -> int:
        """The number of elements."""
        return math.prod(self.dims)

    def _sample_wire(self) -> Tensor:
        bits = self._rng.getrandbits
        return _make_tensor([bits(1) for _ in range(self.size)], self.dims, DTYPES[cast(str, self.dtype)])

    def _contains_wire(self, value: Any) -> bool:
        parsed = _as_array(value)
        if parsed is None or parsed[0] != self.dims or parsed[1] == "float":
            return False
        return all(v in (0, 1) for v in parsed[2])

    def __repr__(self) -> str:
        extra = "" if self.dtype == "uint8" else f", dtype={self.dtype}"
        return f"MultiBinary({self.n}{extra})"
