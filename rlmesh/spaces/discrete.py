"""Discrete: the integers ``start`` to ``start + n - 1``."""

from __future__ import annotations

from typing import Any, cast

from .._bridge import IDENTITY, Bridge
from .._dtypes import dtype_info, is_integer
from ._arrays import _as_array
from ._base import Space
from ._spec import SpaceSpec, _int_range_details


class Discrete(Space[int], kind="discrete"):
    """The integers ``start, start + 1, ..., start + n - 1``; samples are Python ints.

    Args:
        n: the number of elements, >= 1.
        start: the smallest element.
        dtype: an integer dtype the elements must fit.
        bridge: converts samples and values for an array library.

    Raises:
        TypeError: ``n`` or ``start`` is not an int.
        ValueError: ``n < 1``, a non-integer dtype, or values outside the dtype.
    """

    def __init__(self, n: int, start: int = 0, dtype: Any = "int64", *, bridge: Bridge = IDENTITY) -> None:
        dt = dtype_info(dtype)
        if not is_integer(dt):
            raise ValueError(f"Discrete needs an integer dtype, got {dt.name}")
        ns, ss = _int_range_details(dt, [n], [start], "", "n", False)
        self._setup(SpaceSpec._new("discrete", (), dt.name, (("n", ns[0]), ("start", ss[0]))), bridge)

    @property
    def n(self) -> int:
        """The number of elements."""
        return cast(int, self._spec._get("n"))

    @property
    def start(self) -> int:
        """The smallest element."""
        return cast(int, self._spec._get("start"))

    def _sample_wire(self) -> int:
        return self.start + self._rng.randrange(self.n)

    def _contains_wire(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if isinstance(value, (int, float)):
            scalar: Any = value
        else:
            parsed = _as_array(value)
            if parsed is None or len(parsed[2]) != 1 or parsed[1] == "bool":
                return False
            scalar = parsed[2][0]
        if isinstance(scalar, float):
            if not scalar.is_integer():
                return False
            scalar = int(scalar)
        return bool(self.start <= scalar < self.start + self.n)

    def __repr__(self) -> str:
        extra = f", start={self.start}" if self.start else ""
        if self.dtype != "int64":
            extra += f", dtype={self.dtype}"
        return f"Discrete({self.n}{extra})"
