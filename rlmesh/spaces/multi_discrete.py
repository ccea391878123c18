"""MultiDiscrete: an array whose every element has its own count and start."""

from __future__ import annotations

from typing import Any, cast

from .._bridge import IDENTITY, Bridge
from .._dtypes import DTYPES, dtype_info, is_integer
from ..tensor import Tensor
from ._arrays import _as_array, _make_tensor, _nest, _user_array
from ._base import Space
from ._checks import _check_shape
from ._spec import SpaceSpec, _int_range_details


class MultiDiscrete(Space[Any], kind="multi_discrete"):
    """An array whose element ``i`` lies in ``[start[i], start[i] + nvec[i])``.

    Args:
        nvec: the counts; its shape (1-D or N-D) is the space's shape.
        dtype: an integer dtype the elements must fit.
        start: the smallest value of each element (default zeros), shaped like ``nvec``.
        bridge: converts samples and values for an array library.

    Raises:
        TypeError: ``nvec`` or ``start`` holds non-integers.
        ValueError: counts below 1, shapes that disagree, or values outside the dtype.
    """

    def __init__(
        self, nvec: Any, dtype: Any = "int64", start: Any = None, *, bridge: Bridge = IDENTITY
    ) -> None:
        dt = dtype_info(dtype)
        if not is_integer(dt):
            raise ValueError(f"MultiDiscrete needs an integer dtype, got {dt.name}")
        parsed = _user_array(nvec, "nvec")
        if parsed is None:
            raise TypeError("nvec must be a sequence or an array of ints")
        shape = _check_shape(list(parsed[0]), "nvec", False)
        counts = parsed[1]
        if start is None:
            starts: list[Any] = [0] * len(counts)
        else:
            parsed_start = _user_array(start, "start")
            if parsed_start is None or parsed_start[0] != shape:
                raise ValueError(f"start must have the shape of nvec, {shape}")
            starts = parsed_start[1]
        ns, ss = _int_range_details(dt, counts, starts, "", "nvec", False)
        details = (("nvec", tuple(ns)), ("start", tuple(ss)))
        self._setup(SpaceSpec._new("multi_discrete", shape, dt.name, details), bridge)

    def _setup(self, spec: SpaceSpec, bridge: Any) -> None:
        super()._setup(spec, bridge)
        self._dims = spec.shape
        self._nvec: tuple[int, ...] = spec._get("nvec")
        self._start: tuple[int, ...] = spec._get("start")

    @property
    def nvec(self) -> Any:
        """The counts as the spec holds them: a list of ints, nested like the space.

        A fresh list per call, not decoded by the bridge: ``[[2, 3], [4, 5]]``
        for a 2x2 space (one int for a 0-d space, as ``ndarray.tolist()``).
        The array is ``space.to_gymnasium_space().nvec``.
        """
        return _nest(list(self._nvec), self._dims)

    @property
    def start(self) -> Any:
        """The smallest value of each element, in the form of :attr:`nvec`."""
        return _nest(list(self._start), self._dims)

    def _sample_wire(self) -> Tensor:
        randrange = self._rng.randrange
        values = [s + randrange(n) for n, s in zip(self._nvec, self._start, strict=True)]
        return _make_tensor(values, self._dims, DTYPES[cast(str, self.dtype)])

    def _contains_wire(self, value: Any) -> bool:
        parsed = _as_array(value)
        if parsed is None or parsed[0] != self._dims or parsed[1] in ("float", "bool"):
            return False
        return all(s <= v < s + n for v, n, s in zip(parsed[2], self._nvec, self._start, strict=True))

    def __repr__(self) -> str:
        nvec = _nest(list(self._nvec), self._dims) if self._nvec else []
        extra = ""
        if any(self._start):
            extra += f", start={_nest(list(self._start), self._dims)}"
        if self.dtype != "int64":
            extra += f", dtype={self.dtype}"
        return f"MultiDiscrete({nvec}{extra})"
