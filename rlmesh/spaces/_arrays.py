"""Numbers and arrays without numpy: reading, rounding and building values.

Spaces read bounds and candidate values from anything array-like (a Tensor, a
DLPack producer such as a numpy array, a scalar, a nested list) into a shape
and flat Python values, round floats to narrow dtypes the way numpy and
ml_dtypes do, and build Tensors from flat values with :mod:`struct`.
"""

from __future__ import annotations

import math
import numbers
import struct
from typing import Any, cast

from .._dtypes import DLPACK_BOOL, DType, dtype_info, is_integer
from ..tensor import Tensor
from ._checks import _MAX_RANK

_Scalar = bool | int | float


# -- float rounding -------------------------------------------------------------


def _round_f32(value: float) -> float:
    try:
        return cast(float, struct.unpack("<f", struct.pack("<f", value))[0])
    except OverflowError:
        return math.copysign(math.inf, value)


def _bf16_bits(value: float) -> int:
    """The bfloat16 bit pattern nearest ``value`` (ties to even).

    Rounds through float32 first, as ml_dtypes does, so values agree with what
    numpy users get from ``array.astype(bfloat16)``.
    """
    bits = cast(int, struct.unpack("<I", struct.pack("<f", _round_f32(value)))[0])
    if bits & 0x7F800000 == 0x7F800000:
        # inf keeps its pattern; NaN never reaches here.
        return bits >> 16
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def _bf16_value(bits: int) -> float:
    return cast(float, struct.unpack("<f", struct.pack("<I", bits << 16))[0])


def _round_float(value: float, dt: DType) -> float:
    """Round ``value`` to the nearest value of float dtype ``dt``; overflow gives inf."""
    if dt.name == "float64" or not math.isfinite(value):
        return value
    if dt.name == "float32":
        return _round_f32(value)
    if dt.name == "float16":
        try:
            return cast(float, struct.unpack("<e", struct.pack("<e", value))[0])
        except OverflowError:
            return math.copysign(math.inf, value)
    return _bf16_value(_bf16_bits(value))


def _pack_format(dt: DType, count: int) -> str:
    if dt.name == "float16":
        return f"<{count}e"
    if dt.name == "bfloat16":
        return f"<{count}H"
    return f"<{count}{dt.struct_format}"


def _make_tensor(values: list[Any], shape: tuple[int, ...], dt: DType) -> Tensor:
    tensor, view = Tensor._empty(shape, dt)
    if values:
        if dt.name == "bfloat16":
            values = [_bf16_bits(v) for v in values]
        struct.pack_into(_pack_format(dt, len(values)), view, 0, *values)
    return tensor


# -- reading values -------------------------------------------------------------


def _to_scalar(value: Any) -> _Scalar | None:
    """A numeric Python scalar for ``value``, or None if it is not one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    # numpy.bool_ and ml_dtypes scalars are not registered with `numbers`. A
    # size-1 array has item() too, but it is not a scalar: its shape matters.
    item = getattr(value, "item", None)
    if callable(item) and hasattr(value, "dtype") and getattr(value, "shape", ()) == ():
        try:
            out = item()
        except (TypeError, ValueError):
            return None
        if isinstance(out, (bool, int, float)):
            return out
    return None


def _flatten_nested(value: Any, convert: Any) -> tuple[tuple[int, ...], list[Any]]:
    """Flatten a rectangular nest of lists/tuples into (shape, flat values).

    Raises:
        ValueError: the nest is ragged or deeper than the rank limit.
    """
    shape: list[int] = []
    level: list[Any] = [value]
    while level and isinstance(level[0], (list, tuple)):
        width = len(level[0])
        if any(not isinstance(x, (list, tuple)) or len(x) != width for x in level):
            raise ValueError("ragged nested sequence")
        shape.append(width)
        if len(shape) > _MAX_RANK:
            raise ValueError(f"nested deeper than {_MAX_RANK} levels")
        level = [y for x in level for y in x]
    if any(isinstance(x, (list, tuple)) for x in level):
        raise ValueError("ragged nested sequence")
    return tuple(shape), [convert(x) for x in level]


def _tensor_kind(tensor: Tensor) -> str:
    dt = dtype_info(tensor.dtype)
    if dt.dlpack_code == DLPACK_BOOL:
        return "bool"
    return "int" if is_integer(dt) else "float"


def _tensor_values(tensor: Tensor) -> list[Any]:
    if tensor.size == 0:
        return []
    return cast(list[Any], tensor.reshape(-1).tolist())


def _kind_of(values: list[Any]) -> str | None:
    kind: str | None = None
    rank = {"bool": 0, "int": 1, "float": 2}
    for v in values:
        k = "bool" if isinstance(v, bool) else "int" if isinstance(v, int) else "float"
        if kind is None or rank[k] > rank[kind]:
            kind = k
    return kind


class _NotNumeric(Exception):
    pass


def _strict_scalar(value: Any) -> _Scalar:
    out = _to_scalar(value)
    if out is None:
        raise _NotNumeric
    return out


def _as_array(value: Any) -> tuple[tuple[int, ...], str | None, list[Any]] | None:
    """Read an array-like (Tensor, DLPack producer, scalar, nested list).

    Returns (shape, kind, flat values) where kind is "bool", "int", "float", or
    None for an empty nest of lists; None when ``value`` is not numeric data.
    """
    if isinstance(value, Tensor):
        return value.shape, _tensor_kind(value), _tensor_values(value)
    if hasattr(value, "__dlpack__"):
        try:
            tensor = Tensor.from_dlpack(value)
        except (BufferError, TypeError, ValueError):
            # ml_dtypes' bfloat16 arrays, for one, cannot be exported by DLPack.
            tensor = None
        if tensor is not None:
            return tensor.shape, _tensor_kind(tensor), _tensor_values(tensor)
    if isinstance(value, (str, bytes, bytearray)):
        return None
    if not isinstance(value, (list, tuple)):
        scalar = _to_scalar(value)
        if scalar is not None:
            return (), _kind_of([scalar]), [scalar]
        tolist = getattr(value, "tolist", None)
        if not callable(tolist):
            return None
        try:
            value = tolist()
        except (TypeError, ValueError):
            return None
        if not isinstance(value, (list, tuple)):
            scalar = _to_scalar(value)
            return None if scalar is None else ((), _kind_of([scalar]), [scalar])
    try:
        shape, flat = _flatten_nested(value, _strict_scalar)
    except (ValueError, _NotNumeric):
        return None
    return shape, _kind_of(flat), flat


def _user_bound_scalar(value: Any) -> _Scalar:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("inf", "+inf", "infinity", "+infinity"):
            return math.inf
        if text in ("-inf", "-infinity"):
            return -math.inf
        if text == "nan":
            raise ValueError("Box bounds cannot be NaN")
        raise ValueError(f"a string bound must be 'inf' or '-inf', got {value!r}")
    out = _to_scalar(value)
    if out is None:
        raise TypeError(f"a bound must be a real number, got {type(value).__name__}")
    return out


def _user_array(value: Any, what: str) -> tuple[tuple[int, ...], list[Any]] | None:
    """Read a user-supplied array-like; None when ``value`` is a scalar.

    Raises:
        ValueError: a ragged nest or a bad string element.
        TypeError: an element is not a real number.
    """
    if isinstance(value, Tensor):
        return value.shape, _tensor_values(value)
    if hasattr(value, "__dlpack__"):
        try:
            tensor = Tensor.from_dlpack(value)
        except (BufferError, TypeError, ValueError):
            tensor = None
        if tensor is not None:
            return tensor.shape, _tensor_values(tensor)
    if isinstance(value, (str, bytes)) or _to_scalar(value) is not None:
        return None
    if not isinstance(value, (list, tuple)):
        tolist = getattr(value, "tolist", None)
        if not callable(tolist):
            raise TypeError(f"{what} must be a number, a sequence or an array, got {type(value).__name__}")
        value = tolist()
        if not isinstance(value, (list, tuple)):
            return None
    try:
        return _flatten_nested(value, _user_bound_scalar)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


# -- nesting --------------------------------------------------------------------


def _nest(values: list[Any], shape: tuple[int, ...]) -> Any:
    if not shape:
        return values[0]
    if len(shape) == 1:
        return values
    step = len(values) // shape[0] if shape[0] else 0
    return [_nest(values[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]
