"""SpaceSpec: the frozen, hashable description of a space, and its wire form.

:meth:`SpaceSpec.from_dict` validates a spec dict that may come from an
untrusted peer; the ``_*_details`` validators are shared with the space
constructors, which check a caller's arguments with the same rules (raising
TypeError or ValueError where a spec dict gets a SpecError).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from .._bridge import Bridge
from .._dtypes import DLPACK_BOOL, DType, integer_bounds, is_float, is_integer
from .._shape import EMPTY_SHAPE, Shape
from ..errors import SpecError
from ._arrays import _round_float, _Scalar
from ._checks import (
    _MAX_CHARSET,
    _MAX_DEPTH,
    _MAX_SUBSPACES,
    _MAX_TEXT_LENGTH,
    _check_int,
    _check_seq,
    _check_shape,
    _check_spec_dtype,
    _fail,
    _is_intlike_dtype,
    _join,
    _short,
)
from ._walk import COMPOSITE_KINDS, Path, fold

if TYPE_CHECKING:
    from ._base import Space

_KINDS = ("box", "discrete", "multi_binary", "multi_discrete", "text", "dict", "tuple")


# -- spec validation ------------------------------------------------------------


def _same(a: _Scalar, b: _Scalar) -> bool:
    # -0.0 == 0.0, but collapsing them would change a bound's sign on the wire.
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b


def _box_value(value: Any, dt: DType, where: str, from_spec: bool) -> _Scalar:
    if is_float(dt):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(from_spec, where, f"expected a number, got {type(value).__name__}", type_error=True)
        try:
            number = float(value)
        except OverflowError:
            _fail(from_spec, where, f"{value} is out of range for {dt.name}")
        if math.isnan(number):
            _fail(from_spec, where, "Box bounds cannot be NaN")
        rounded = _round_float(number, dt)
        if math.isinf(rounded) and not math.isinf(number):
            _fail(from_spec, where, f"{number} is out of range for {dt.name}")
        return rounded
    lo, hi = integer_bounds(dt)
    if isinstance(value, bool):
        if from_spec and dt.dlpack_code != DLPACK_BOOL:
            _fail(True, where, f"expected an int for {dt.name}, got bool", type_error=True)
        value = int(value)
    elif isinstance(value, float):
        if from_spec:
            _fail(True, where, f"expected an int for {dt.name}, got float", type_error=True)
        if math.isnan(value):
            _fail(False, where, "Box bounds cannot be NaN")
        if math.isinf(value):
            # An unbounded side of an integer box is the dtype's own range.
            return lo if value < 0 else hi
        if not value.is_integer():
            _fail(False, where, f"{value} is not an integer, as {dt.name} bounds must be")
        value = int(value)
    elif not isinstance(value, int):
        _fail(from_spec, where, f"expected an int, got {type(value).__name__}", type_error=True)
    if not lo <= value <= hi:
        _fail(from_spec, where, f"{value} is out of range for {dt.name} [{lo}, {hi}]")
    return int(value)


def _box_details(
    shape: tuple[int, ...],
    dt: DType,
    low: Any,
    high: Any,
    uniform: bool,
    where: str,
    from_spec: bool,
) -> tuple[tuple[str, Any], ...]:
    """Validate Box bounds and return them in canonical form.

    Canonical form: uniform scalars when the box has elements and every element
    shares the same bounds, else elementwise tuples (always so for size 0).
    """
    size = math.prod(shape)
    if uniform:
        lo = _box_value(low, dt, _join(where, "low"), from_spec)
        hi = _box_value(high, dt, _join(where, "high"), from_spec)
        if lo > hi:
            _fail(from_spec, where, f"low ({lo}) must be <= high ({hi})")
        if size:
            return (("bounds", "uniform"), ("low", lo), ("high", hi))
        return (("bounds", "elementwise"), ("low", ()), ("high", ()))
    lows = _check_seq(low, _join(where, "low"), from_spec, size, "bound entries")
    highs = _check_seq(high, _join(where, "high"), from_spec, size, "bound entries")
    for name, seq in (("low", lows), ("high", highs)):
        if len(seq) != size:
            _fail(
                from_spec,
                _join(where, name),
                f"expected {size} entries for shape {shape}, got {len(seq)}",
            )
    lows = [_box_value(v, dt, f"{_join(where, 'low')}[{i}]", from_spec) for i, v in enumerate(lows)]
    highs = [_box_value(v, dt, f"{_join(where, 'high')}[{i}]", from_spec) for i, v in enumerate(highs)]
    for i, (lo, hi) in enumerate(zip(lows, highs, strict=True)):
        if lo > hi:
            _fail(from_spec, where, f"low ({lo}) must be <= high ({hi}) at flat index {i}")
    if size and all(_same(v, lows[0]) for v in lows) and all(_same(v, highs[0]) for v in highs):
        return (("bounds", "uniform"), ("low", lows[0]), ("high", highs[0]))
    return (("bounds", "elementwise"), ("low", tuple(lows)), ("high", tuple(highs)))


def _int_range_details(
    dt: DType, counts: list[Any], starts: list[Any], where: str, count_key: str, from_spec: bool
) -> tuple[list[int], list[int]]:
    lo, hi = integer_bounds(dt)
    ns: list[int] = []
    ss: list[int] = []
    for i, (n_raw, s_raw) in enumerate(zip(counts, starts, strict=True)):
        n = _check_int(n_raw, f"{_join(where, count_key)}[{i}]", from_spec)
        s = _check_int(s_raw, f"{_join(where, 'start')}[{i}]", from_spec)
        if n < 1:
            _fail(from_spec, _join(where, count_key), f"entries must be >= 1, got {n}")
        if s < lo or s + n - 1 > hi:
            _fail(from_spec, where, f"values [{s}, {s + n - 1}] do not fit {dt.name} [{lo}, {hi}]")
        ns.append(n)
        ss.append(s)
    return ns, ss


def _canonical_charset(chars: Iterable[Any], where: str, from_spec: bool) -> str:
    unique: set[str] = set()
    for ch in chars:
        if not isinstance(ch, str) or len(ch) != 1:
            _fail(from_spec, where, f"charset entries must be single characters, got {ch!r}")
        if 0xD800 <= ord(ch) <= 0xDFFF:
            # A lone surrogate cannot be encoded as UTF-8, so it could never cross the wire.
            _fail(from_spec, where, f"charset cannot contain the surrogate {ch!r}")
        unique.add(ch)
    return "".join(sorted(unique))


def _text_details(
    min_length: Any, max_length: Any, charset: str, where: str, from_spec: bool
) -> tuple[tuple[str, Any], ...]:
    lo = _check_int(min_length, _join(where, "min_length"), from_spec)
    hi = _check_int(max_length, _join(where, "max_length"), from_spec)
    if lo < 0:
        _fail(from_spec, where, f"min_length must be >= 0, got {lo}")
    if hi < lo:
        _fail(from_spec, where, f"max_length ({hi}) must be >= min_length ({lo})")
    if hi > _MAX_TEXT_LENGTH:
        _fail(from_spec, where, f"max_length {hi} exceeds the limit of {_MAX_TEXT_LENGTH}")
    return (("min_length", lo), ("max_length", hi), ("charset", charset))


_COMMON_KEYS = frozenset({"kind", "shape", "dtype"})


_KIND_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # kind: (required keys besides the common ones, optional keys)
    "box": (frozenset({"low", "high"}), frozenset({"bounds"})),
    "discrete": (frozenset({"n"}), frozenset({"start"})),
    "multi_binary": (frozenset(), frozenset()),
    "multi_discrete": (frozenset({"nvec"}), frozenset({"start"})),
    "text": (frozenset({"max_length"}), frozenset({"min_length", "charset"})),
    "dict": (frozenset({"spaces"}), frozenset()),
    "tuple": (frozenset({"spaces"}), frozenset()),
}


def _parse_spec(data: Any, where: str, depth: int) -> SpaceSpec:
    if depth > _MAX_DEPTH:
        raise SpecError(f"{where or 'spec'}: spaces nest deeper than {_MAX_DEPTH} levels")
    if not isinstance(data, Mapping):
        raise SpecError(f"{where or 'spec'}: expected a dict, got {type(data).__name__}")
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise SpecError(
            f"{_join(where, 'kind')}: unknown space kind {_short(kind)}; expected one of {', '.join(_KINDS)}"
        )
    required, optional = _KIND_KEYS[kind]
    keys = set()
    for key in data:
        if not isinstance(key, str):
            raise SpecError(f"{where or 'spec'}: keys must be strings, got {_short(key)}")
        keys.add(key)
    unknown = keys - _COMMON_KEYS - required - optional
    if unknown:
        raise SpecError(f"{where or 'spec'}: unknown keys for a {kind} spec: {', '.join(sorted(unknown))}")
    missing = (_COMMON_KEYS | required) - keys
    if missing:
        raise SpecError(f"{where or 'spec'}: missing keys for a {kind} spec: {', '.join(sorted(missing))}")
    raw_shape = data["shape"]
    raw_dtype = data["dtype"]
    shape_where = _join(where, "shape")
    dtype_where = _join(where, "dtype")

    if kind in COMPOSITE_KINDS:
        if raw_shape is not None or raw_dtype is not None:
            raise SpecError(f"{where or 'spec'}: a {kind} spec has shape and dtype None")
        entries = _check_seq(data["spaces"], _join(where, "spaces"), True, _MAX_SUBSPACES, "subspaces")
        if kind == "tuple":
            children = tuple(
                _parse_spec(child, f"{_join(where, 'spaces')}[{i}]", depth + 1)
                for i, child in enumerate(entries)
            )
            return SpaceSpec._new("tuple", (), None, (("spaces", children),))
        pairs: list[tuple[str, SpaceSpec]] = []
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            entry_where = f"{_join(where, 'spaces')}[{i}]"
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise SpecError(f"{entry_where}: expected a [key, spec] pair")
            key, child = entry
            if not isinstance(key, str):
                raise SpecError(f"{entry_where}: keys must be strings, got {type(key).__name__}")
            if key in seen:
                raise SpecError(f"{entry_where}: duplicate key {_short(key)}")
            seen.add(key)
            pairs.append((key, _parse_spec(child, f"{_join(where, 'spaces')}[{_short(key)}]", depth + 1)))
        return SpaceSpec._new("dict", (), None, (("spaces", tuple(pairs)),))

    if kind == "text":
        if raw_dtype != "str":
            raise SpecError(f"{dtype_where}: a text spec has dtype 'str', got {_short(raw_dtype)}")
        if _check_shape(raw_shape, shape_where, True) != ():
            raise SpecError(f"{shape_where}: a text spec has shape []")
        charset = data.get("charset", "")
        if not isinstance(charset, str):
            raise SpecError(f"{_join(where, 'charset')}: expected a str, got {type(charset).__name__}")
        if len(charset) > _MAX_CHARSET:
            raise SpecError(f"{_join(where, 'charset')}: longer than {_MAX_CHARSET} characters")
        canonical = _canonical_charset(charset, _join(where, "charset"), True)
        details = _text_details(data.get("min_length", 1), data["max_length"], canonical, where, True)
        return SpaceSpec._new("text", (), "str", details)

    shape = _check_shape(raw_shape, shape_where, True)
    dt = _check_spec_dtype(raw_dtype, dtype_where, True)
    size = math.prod(shape)
    if kind == "box":
        bounds = data.get("bounds")
        uniform = not isinstance(data["low"], (list, tuple))
        if bounds is not None and bounds not in ("uniform", "elementwise"):
            raise SpecError(
                f"{_join(where, 'bounds')}: expected 'uniform' or 'elementwise', got {_short(bounds)}"
            )
        if bounds is not None and (bounds == "uniform") != uniform:
            raise SpecError(f"{_join(where, 'bounds')}: {_short(bounds)} does not match the form of low")
        if uniform == isinstance(data["high"], (list, tuple)):
            raise SpecError(f"{where or 'spec'}: low and high must both be scalars or both lists")
        details = _box_details(shape, dt, data["low"], data["high"], uniform, where, True)
        return SpaceSpec._new("box", shape, dt.name, details)
    if not _is_intlike_dtype(dt) or (kind != "multi_binary" and not is_integer(dt)):
        raise SpecError(f"{dtype_where}: a {kind} spec needs an integer dtype, got {dt.name}")
    if kind == "multi_binary":
        return SpaceSpec._new("multi_binary", shape, dt.name, ())
    if kind == "discrete":
        if shape != ():
            raise SpecError(f"{shape_where}: a discrete spec has shape []")
        ns, ss = _int_range_details(dt, [data["n"]], [data.get("start", 0)], where, "n", True)
        return SpaceSpec._new("discrete", (), dt.name, (("n", ns[0]), ("start", ss[0])))
    nvec = _check_seq(data["nvec"], _join(where, "nvec"), True, size, "nvec entries")
    if len(nvec) != size:
        raise SpecError(f"{_join(where, 'nvec')}: expected {size} entries for shape {shape}, got {len(nvec)}")
    if "start" in data:
        starts = _check_seq(data["start"], _join(where, "start"), True, size, "start entries")
        if len(starts) != size:
            raise SpecError(
                f"{_join(where, 'start')}: expected {size} entries for shape {shape}, got {len(starts)}"
            )
    else:
        # Safe to allocate: nvec already holds this many entries.
        starts = [0] * size
    ns, ss = _int_range_details(dt, nvec, starts, where, "nvec", True)
    return SpaceSpec._new("multi_discrete", shape, dt.name, (("nvec", tuple(ns)), ("start", tuple(ss))))


def _leaf_to_wire(spec: SpaceSpec, path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": spec._kind, "shape": list(spec._shape), "dtype": spec._dtype}
    for key, value in spec._details:
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def _dict_to_wire(spec: SpaceSpec, path: Path, pairs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    # The wire keeps shape and dtype None for composites, as every peer expects.
    return {"kind": "dict", "shape": None, "dtype": None, "spaces": [[key, child] for key, child in pairs]}


def _tuple_to_wire(spec: SpaceSpec, path: Path, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "tuple", "shape": None, "dtype": None, "spaces": items}


# -- SpaceSpec --------------------------------------------------------------------


class SpaceSpec:
    """A frozen, hashable description of a space, and its wire (dict) form.

    Specs are made by :meth:`from_dict` (which validates untrusted input) or
    taken from a space's :attr:`Space.spec`. Two specs are equal when their
    contents are.

    Attributes:
        kind: "box", "discrete", "multi_binary", "multi_discrete", "text",
            "dict" or "tuple".
        shape: the element shape, a :class:`~rlmesh._shape.Shape` (a tuple
            that also equals the list of the same ints); empty for discrete,
            text, dict and tuple.
        dtype: the element dtype name; "str" for text, None for dict and tuple.
    """

    __slots__ = ("_kind", "_shape", "_dtype", "_details", "_depth", "_hash")

    _kind: str
    _shape: Shape
    _dtype: str | None
    _details: tuple[tuple[str, Any], ...]
    _depth: int
    _hash: int | None

    def __init__(self) -> None:
        raise TypeError("SpaceSpec has no public constructor; use SpaceSpec.from_dict() or a space's .spec")

    @classmethod
    def _new(
        cls,
        kind: str,
        shape: tuple[int, ...],
        dtype: str | None,
        details: tuple[tuple[str, Any], ...],
    ) -> SpaceSpec:
        # Unvalidated: callers have already checked and canonicalised `details`.
        # Dict and tuple specs pass (); their wire form still says None.
        spec = object.__new__(cls)
        depth = 1
        if kind == "dict":
            depth += max((child._depth for _, child in details[0][1]), default=0)
        elif kind == "tuple":
            depth += max((child._depth for child in details[0][1]), default=0)
        for name, value in (
            ("_kind", kind),
            ("_shape", Shape(shape) if shape else EMPTY_SHAPE),
            ("_dtype", dtype),
            ("_details", details),
            ("_depth", depth),
            ("_hash", None),
        ):
            object.__setattr__(spec, name, value)
        return spec

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("SpaceSpec is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("SpaceSpec is immutable")

    @property
    def kind(self) -> str:
        """The space kind, such as "box" or "dict"."""
        return self._kind

    @property
    def shape(self) -> Shape:
        """The element shape; empty for discrete, text, dict and tuple specs.

        A :class:`~rlmesh._shape.Shape`: a tuple that also compares equal to the
        list of the same ints, so ``spec.shape == [2, 3]`` and ``== (2, 3)``.
        """
        return self._shape

    @property
    def dtype(self) -> str | None:
        """The element dtype name ("str" for text); None for dict and tuple specs."""
        return self._dtype

    @property
    def details(self) -> Mapping[str, Any]:
        """The kind-specific fields, read-only.

        Sequences are tuples; subspaces are SpaceSpecs (for dict specs, a tuple
        of ``(key, spec)`` pairs).
        """
        return MappingProxyType(dict(self._details))

    def _get(self, key: str) -> Any:
        for name, value in self._details:
            if name == key:
                return value
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        """The msgpack-able dict form, which :meth:`from_dict` reads back exactly."""
        return fold(self, _leaf_to_wire, _dict_to_wire, _tuple_to_wire)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpaceSpec:
        """Validate a spec dict (possibly from an untrusted peer) and build the spec.

        Every size is bounded before anything proportional to it is allocated:
        nesting depth, subspaces per dict/tuple, shape rank and element count,
        bound and nvec list lengths, charset and text lengths.

        Raises:
            SpecError: the dict is malformed, inconsistent or over a limit.
        """
        return _parse_spec(data, "", 1)

    def to_space(self, bridge: Bridge | None = None) -> Space[Any]:
        """Build the matching :class:`Space`, bound to ``bridge`` (default: plain)."""
        # Spaces are built on specs, so this module imports them only when called.
        from ._base import space_from_spec

        return space_from_spec(self, bridge=bridge)

    def to_gym_space(self) -> Any:
        """Build the equivalent Gymnasium space.

        Raises:
            BackendUnavailable: gymnasium (or ml_dtypes, for bfloat16) is not installed.
        """
        from ._conversion import to_gymnasium_space

        return to_gymnasium_space(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpaceSpec):
            return NotImplemented
        return (
            self._kind == other._kind
            and self._shape == other._shape
            and self._dtype == other._dtype
            and self._details == other._details
        )

    def __hash__(self) -> int:
        if self._hash is None:
            object.__setattr__(self, "_hash", hash((self._kind, self._shape, self._dtype, self._details)))
        return cast(int, self._hash)

    def __reduce__(self) -> tuple[Any, ...]:
        return (SpaceSpec.from_dict, (self.to_dict(),))

    def __repr__(self) -> str:
        if self._kind in COMPOSITE_KINDS:
            return f"SpaceSpec(kind={self._kind!r}, spaces={len(self._get('spaces'))})"
        return f"SpaceSpec(kind={self._kind!r}, shape={self._shape!r}, dtype={self._dtype!r})"
