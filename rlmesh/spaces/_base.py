"""Spaces: what an env's observations and actions look like, without numpy.

A space has two faces. :class:`SpaceSpec` is the pure description: frozen,
hashable, and convertible to and from a msgpack-able dict (``to_dict`` /
``from_dict``), which is how spaces cross the wire in the handshake. The
:class:`Space` classes wrap a spec with behaviour: seeded sampling through
Python's :class:`random.Random`, membership tests, and conversion to and from
Gymnasium spaces.

This module is layer 1: it imports only the standard library and rlmesh's own
layer-0 modules. numpy, gymnasium and ml_dtypes are imported lazily, inside the
Gymnasium conversion functions, so ``import rlmesh.spaces`` stays light and
every space works on a machine without numpy.

Values leave a space through its *bridge* (:mod:`rlmesh._bridge`): ``sample()``
returns ``bridge.decode(wire_value)`` and ``contains(v)`` first normalises ``v``
with ``bridge.encode``. With the default identity bridge, array-valued samples
are :class:`~rlmesh.tensor.Tensor` objects.
"""

from __future__ import annotations

import math
import operator
import random
import secrets
from abc import ABC, abstractmethod
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from .._bridge import IDENTITY, Bridge
from .._dtypes import DLPACK_BOOL, DTYPES, dtype_info, is_float, is_integer
from .._shape import Shape
from ..tensor import Tensor
from ._arrays import (
    _as_array,
    _make_tensor,
    _nest,
    _round_float,
    _Scalar,
    _user_array,
    _user_bound_scalar,
)
from ._checks import (
    _MAX_CHARSET,
    _MAX_DEPTH,
    _MAX_SUBSPACES,
    _check_shape,
    _is_intlike_dtype,
)
from ._spec import SpaceSpec, _box_details, _canonical_charset, _int_range_details, _text_details

_T = TypeVar("_T")


# Gymnasium's default Text charset, sorted the way gymnasium sorts a set charset,
# so that unrestricted Text spaces sample the characters gymnasium would.
_ALPHANUMERIC = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


# -- Space base ---------------------------------------------------------------------


def _check_bridge(bridge: Any) -> Bridge:
    if bridge is None:
        return IDENTITY
    if not isinstance(bridge, Bridge):
        raise TypeError(f"bridge must have name, decode() and encode(), got {type(bridge).__name__}")
    return bridge


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not hasattr(type(seed), "__index__"):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    value = operator.index(seed)
    if value < 0:
        raise ValueError(f"seed must be >= 0, got {value}")
    return value


class Space(ABC, Generic[_T]):
    """Base class of rlmesh spaces: a :class:`SpaceSpec` plus sampling and membership.

    Spaces compare and hash by their spec. Samples go out through the space's
    bridge; values tested by :meth:`contains` come in through it.
    """

    _spec: SpaceSpec
    _bridge: Bridge
    _rng: random.Random

    def _setup(self, spec: SpaceSpec, bridge: Any) -> None:
        self._spec = spec
        self._bridge = _check_bridge(bridge)
        self._rng = random.Random()

    @classmethod
    def _from_spec(cls, spec: SpaceSpec, bridge: Bridge) -> Space[Any]:
        space = cls.__new__(cls)
        space._setup(spec, bridge)
        return space

    @property
    def spec(self) -> SpaceSpec:
        """The space's :class:`SpaceSpec`."""
        return self._spec

    @property
    def kind(self) -> str:
        """The space kind, such as "box"."""
        return self._spec.kind

    @property
    def shape(self) -> Shape:
        """The element shape (a tuple equal to the same list); empty for Dict and Tuple."""
        return self._spec.shape

    @property
    def dtype(self) -> str | None:
        """The element dtype name; "str" for Text, None for Dict and Tuple."""
        return self._spec.dtype

    @property
    def bridge(self) -> Bridge:
        """The bridge samples are decoded with and values are encoded with."""
        return self._bridge

    def seed(self, seed: int | None = None) -> int | None:
        """Seed the space's random generator.

        Args:
            seed: a non-negative int for reproducible samples, or None to pick
                a random seed.

        Returns:
            The seed used.

        Raises:
            TypeError: ``seed`` is not an int or None.
            ValueError: ``seed`` is negative.
        """
        value = secrets.randbits(64) if seed is None else _check_seed(seed)
        self._rng = random.Random(value)
        return value

    def sample(self) -> _T:
        """Draw a random element, decoded by the space's bridge."""
        return cast(_T, self._bridge.decode(self._sample_wire()))

    def contains(self, value: Any) -> bool:
        """True if ``value`` (after the bridge's ``encode``) is an element of the space."""
        try:
            wire = self._bridge.encode(value)
        except (TypeError, ValueError, BufferError):
            return False
        return self._contains_wire(wire)

    def __contains__(self, value: Any) -> bool:
        return self.contains(value)

    @abstractmethod
    def _sample_wire(self) -> Any:
        """Draw a random element in wire form (Tensors and Python values)."""

    @abstractmethod
    def _contains_wire(self, value: Any) -> bool:
        """Membership test on an already-encoded value."""

    def to_gymnasium_space(self) -> Any:
        """The equivalent Gymnasium space.

        Raises:
            BackendUnavailable: gymnasium (or ml_dtypes, for bfloat16) is not installed.
        """
        # The conversion knows every space class, so it is imported when called.
        from ._conversion import to_gymnasium_space

        return to_gymnasium_space(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Space):
            return NotImplemented
        return self._spec == other._spec

    def __hash__(self) -> int:
        return hash(self._spec)

    if not TYPE_CHECKING:
        # Hidden from type checkers so that typos in attribute names stay errors.

        def __getattr__(self, name: str) -> Any:
            if name.startswith("_"):
                raise AttributeError(name)
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}; rlmesh spaces "
                f"implement a subset of the Gymnasium API, call .to_gymnasium_space() for "
                f"the full Gymnasium space"
            )


# -- Box ------------------------------------------------------------------------------


def _fmt_number(value: _Scalar) -> str:
    return repr(value)


class Box(Space[Any]):
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


# -- Discrete -------------------------------------------------------------------------


class Discrete(Space[int]):
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


# -- MultiBinary ----------------------------------------------------------------------


class MultiBinary(Space[Any]):
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


# -- MultiDiscrete --------------------------------------------------------------------


class MultiDiscrete(Space[Any]):
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


# -- Text -----------------------------------------------------------------------------


class Text(Space[str]):
    """Strings of ``min_length`` to ``max_length`` characters.

    Args:
        max_length: the longest string, in characters.
        min_length: the shortest string, in characters.
        charset: the allowed characters (a string or a set of characters);
            None or "" means any character. Samples of an unrestricted space use
            Gymnasium's default alphanumeric characters; its Gymnasium twin
            allows ``string.printable`` (see :func:`to_gymnasium_space`).
        bridge: converts samples and values for an array library.

    Raises:
        TypeError: a length is not an int, or the charset is not a string or
            an iterable of characters.
        ValueError: negative or inverted lengths, or a length or charset over the limits.
    """

    def __init__(
        self,
        max_length: int,
        min_length: int = 1,
        charset: str | Iterable[str] | None = None,
        *,
        bridge: Bridge = IDENTITY,
    ) -> None:
        if charset is None:
            chars = ""
        else:
            if not isinstance(charset, (str, Iterable)):
                raise TypeError(
                    f"charset must be a string or a set of characters, got {type(charset).__name__}"
                )
            items = charset if isinstance(charset, str) else list(charset)
            if len(items) > _MAX_CHARSET:
                raise ValueError(f"charset is longer than {_MAX_CHARSET} characters")
            chars = _canonical_charset(items, "charset", False)
        details = _text_details(min_length, max_length, chars, "", False)
        self._setup(SpaceSpec._new("text", (), "str", details), bridge)

    @property
    def max_length(self) -> int:
        """The longest string, in characters."""
        return cast(int, self._spec._get("max_length"))

    @property
    def min_length(self) -> int:
        """The shortest string, in characters."""
        return cast(int, self._spec._get("min_length"))

    @property
    def charset(self) -> str:
        """The allowed characters, sorted; "" when unrestricted."""
        return cast(str, self._spec._get("charset"))

    def _sample_wire(self) -> str:
        chars = self.charset or _ALPHANUMERIC
        rng = self._rng
        length = rng.randint(self.min_length, self.max_length)
        return "".join(chars[rng.randrange(len(chars))] for _ in range(length))

    def _contains_wire(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        if not self.min_length <= len(value) <= self.max_length:
            return False
        charset = self.charset
        return not charset or all(ch in charset for ch in value)

    def __repr__(self) -> str:
        extra = f", charset={self.charset!r}" if self.charset else ""
        return f"Text(max_length={self.max_length}, min_length={self.min_length}{extra})"


# -- Dict and Tuple -------------------------------------------------------------------


def _as_child(value: Any, where: str) -> Space[Any]:
    if isinstance(value, Space):
        return value
    if isinstance(value, SpaceSpec):
        return space_from_spec(value)
    raise TypeError(
        f"{where} must be an rlmesh space or SpaceSpec, got {type(value).__name__}; "
        f"convert Gymnasium spaces with rlmesh.spaces.from_gymnasium_space()"
    )


def _check_children_depth(children: Iterable[Space[Any]]) -> None:
    if any(child.spec._depth >= _MAX_DEPTH for child in children):
        raise ValueError(f"spaces nest deeper than {_MAX_DEPTH} levels")


def _derive_seeds(seed: int, count: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(64) for _ in range(count)]


class Dict(Space[dict[str, Any]]):
    """A dict of subspaces with string keys, in insertion order.

    Behaves as a read-only mapping from keys to subspaces. ``key in space`` with
    a string tests for a key; with anything else it tests membership of a value.

    Args:
        mapping_or_pairs: a mapping or an iterable of ``(key, space)`` pairs.
            A plain dict keeps its order (Gymnasium would sort it).
        bridge: converts samples and values for an array library.
        **kwargs: more ``key=space`` entries, after those of ``mapping_or_pairs``.

    Raises:
        TypeError: a key is not a string, or a value is not a space or SpaceSpec.
        ValueError: a duplicate key, or more subspaces or nesting than the limits.
    """

    def __init__(
        self,
        mapping_or_pairs: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        *,
        bridge: Bridge = IDENTITY,
        **kwargs: Any,
    ) -> None:
        if mapping_or_pairs is None:
            pairs: list[Any] = []
        elif isinstance(mapping_or_pairs, Mapping):
            pairs = list(mapping_or_pairs.items())
        else:
            pairs = list(mapping_or_pairs)
        pairs.extend(kwargs.items())
        if len(pairs) > _MAX_SUBSPACES:
            raise ValueError(f"too many subspaces: {len(pairs)} > {_MAX_SUBSPACES}")
        spaces: dict[str, Space[Any]] = {}
        for pair in pairs:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"expected (key, space) pairs, got {pair!r}")
            key, value = pair
            if not isinstance(key, str):
                raise TypeError(f"Dict keys must be strings, got {key!r}")
            if key in spaces:
                raise ValueError(f"duplicate Dict key {key!r}")
            spaces[key] = _as_child(value, f"Dict[{key!r}]")
        _check_children_depth(spaces.values())
        spec = SpaceSpec._new("dict", (), None, (("spaces", tuple((k, s.spec) for k, s in spaces.items())),))
        self._setup(spec, bridge)
        self._spaces = spaces

    @classmethod
    def _from_spec(cls, spec: SpaceSpec, bridge: Bridge) -> Space[Any]:
        space = cls.__new__(cls)
        space._setup(spec, bridge)
        space._spaces = {key: space_from_spec(child, bridge=bridge) for key, child in spec._get("spaces")}
        return space

    @property
    def spaces(self) -> Mapping[str, Space[Any]]:
        """The subspaces, read-only, in order."""
        return MappingProxyType(self._spaces)

    def __getitem__(self, key: str) -> Space[Any]:
        return self._spaces[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._spaces)

    def __len__(self) -> int:
        return len(self._spaces)

    def __contains__(self, item: Any) -> bool:
        if isinstance(item, str):
            return item in self._spaces
        return self.contains(item)

    def keys(self) -> KeysView[str]:
        """The keys, in order."""
        return self._spaces.keys()

    def values(self) -> ValuesView[Space[Any]]:
        """The subspaces, in order."""
        return self._spaces.values()

    def items(self) -> ItemsView[str, Space[Any]]:
        """``(key, subspace)`` pairs, in order."""
        return self._spaces.items()

    def get(self, key: str, default: Any = None) -> Any:
        """The subspace for ``key``, or ``default``."""
        return self._spaces.get(key, default)

    def seed(self, seed: int | None = None) -> int | None:
        """Seed every subspace deterministically from one seed.

        Args:
            seed: a non-negative int, or None to pick a random one.

        Returns:
            The seed used.

        Raises:
            TypeError: ``seed`` is not an int or None.
            ValueError: ``seed`` is negative.
        """
        value = secrets.randbits(64) if seed is None else _check_seed(seed)
        for child, child_seed in zip(
            self._spaces.values(), _derive_seeds(value, len(self._spaces)), strict=True
        ):
            child.seed(child_seed)
        return value

    def _sample_wire(self) -> dict[str, Any]:
        return {key: child._sample_wire() for key, child in self._spaces.items()}

    def _contains_wire(self, value: Any) -> bool:
        if not isinstance(value, Mapping) or len(value) != len(self._spaces):
            return False
        if any(key not in value for key in self._spaces):
            return False
        return all(child._contains_wire(value[key]) for key, child in self._spaces.items())

    def __repr__(self) -> str:
        inner = ", ".join(f"{key!r}: {child!r}" for key, child in self._spaces.items())
        return f"Dict({{{inner}}})"


class Tuple(Space[tuple[Any, ...]]):
    """A fixed-length tuple of subspaces.

    Args:
        spaces: the subspaces, in order.
        bridge: converts samples and values for an array library.

    Raises:
        TypeError: an entry is not a space or SpaceSpec.
        ValueError: more subspaces or nesting than the limits.
    """

    def __init__(self, spaces: Iterable[Any], *, bridge: Bridge = IDENTITY) -> None:
        items = list(spaces)
        if len(items) > _MAX_SUBSPACES:
            raise ValueError(f"too many subspaces: {len(items)} > {_MAX_SUBSPACES}")
        children = tuple(_as_child(item, f"Tuple[{i}]") for i, item in enumerate(items))
        _check_children_depth(children)
        spec = SpaceSpec._new("tuple", (), None, (("spaces", tuple(c.spec for c in children)),))
        self._setup(spec, bridge)
        self._spaces = children

    @classmethod
    def _from_spec(cls, spec: SpaceSpec, bridge: Bridge) -> Space[Any]:
        space = cls.__new__(cls)
        space._setup(spec, bridge)
        space._spaces = tuple(space_from_spec(child, bridge=bridge) for child in spec._get("spaces"))
        return space

    @property
    def spaces(self) -> tuple[Space[Any], ...]:
        """The subspaces, in order."""
        return self._spaces

    def __getitem__(self, index: int) -> Space[Any]:
        return self._spaces[index]

    def __iter__(self) -> Iterator[Space[Any]]:
        return iter(self._spaces)

    def __len__(self) -> int:
        return len(self._spaces)

    def seed(self, seed: int | None = None) -> int | None:
        """Seed every subspace deterministically from one seed.

        Args:
            seed: a non-negative int, or None to pick a random one.

        Returns:
            The seed used.

        Raises:
            TypeError: ``seed`` is not an int or None.
            ValueError: ``seed`` is negative.
        """
        value = secrets.randbits(64) if seed is None else _check_seed(seed)
        for child, child_seed in zip(self._spaces, _derive_seeds(value, len(self._spaces)), strict=True):
            child.seed(child_seed)
        return value

    def _sample_wire(self) -> tuple[Any, ...]:
        return tuple(child._sample_wire() for child in self._spaces)

    def _contains_wire(self, value: Any) -> bool:
        if not isinstance(value, (tuple, list)) or len(value) != len(self._spaces):
            return False
        return all(child._contains_wire(v) for child, v in zip(self._spaces, value, strict=True))

    def __repr__(self) -> str:
        inner = ", ".join(repr(child) for child in self._spaces)
        return f"Tuple(({inner}{',' if len(self._spaces) == 1 else ''}))"


# -- construction from specs ----------------------------------------------------------

_CLASSES: dict[str, type[Space[Any]]] = {
    "box": Box,
    "discrete": Discrete,
    "multi_binary": MultiBinary,
    "multi_discrete": MultiDiscrete,
    "text": Text,
    "dict": Dict,
    "tuple": Tuple,
}


def space_from_spec(
    spec: SpaceSpec | Mapping[str, Any] | Space[Any], *, bridge: Bridge | None = None
) -> Space[Any]:
    """Build the space a spec describes.

    Args:
        spec: a SpaceSpec, its dict form, or a space (rebuilt with ``bridge``).
        bridge: the bridge for the space and all its subspaces; None is the
            plain backend.

    Raises:
        TypeError: ``spec`` is none of those.
        SpecError: a dict that is not a valid spec.
    """
    if isinstance(spec, Space):
        spec = spec.spec
    elif isinstance(spec, Mapping):
        spec = SpaceSpec.from_dict(spec)
    elif not isinstance(spec, SpaceSpec):
        raise TypeError(f"expected a SpaceSpec, a spec dict or a space, got {type(spec).__name__}")
    return _CLASSES[spec.kind]._from_spec(spec, _check_bridge(bridge))
