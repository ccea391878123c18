"""Limits and argument checks shared by every space and by spec parsing.

A spec dict may come from an untrusted peer, so one function, :func:`_fail`,
decides the error class: SpecError for spec data, TypeError or ValueError for a
caller's argument. The limits bound everything proportional to a claimed size
before anything that size is allocated or iterated.
"""

from __future__ import annotations

import math
import operator
from typing import Any, NoReturn

from .._dtypes import DLPACK_BOOL, DTYPES, DType, dtype_info, is_integer
from ..errors import SpecError

# -- limits -------------------------------------------------------------------
# A spec dict may come from an untrusted peer. These bounds are checked before
# anything proportional to the claimed sizes is allocated or iterated.
_MAX_DEPTH = 32
_MAX_SUBSPACES = 4096
_MAX_RANK = 32
_MAX_ELEMENTS = 2**31
_MAX_CHARSET = 65536
_MAX_TEXT_LENGTH = 1 << 20


# -- error helpers --------------------------------------------------------------


def _fail(from_spec: bool, where: str, message: str, *, type_error: bool = False) -> NoReturn:
    """Raise the right error class for the calling context.

    A spec dict is untrusted data, so every problem with it is a SpecError; a
    bad argument from the caller is a TypeError or ValueError, as the stdlib does.
    """
    text = f"{where}: {message}" if where else message
    if from_spec:
        raise SpecError(text)
    if type_error:
        raise TypeError(text)
    raise ValueError(text)


def _short(value: Any) -> str:
    # Untrusted values go into messages; keep a hostile megabyte string out of them.
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _check_int(value: Any, where: str, from_spec: bool) -> int:
    # bool is an int subclass but never a meaningful count or bound.
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        _fail(from_spec, where, f"expected an int, got {type(value).__name__}", type_error=True)
    return operator.index(value)


def _check_seq(value: Any, where: str, from_spec: bool, limit: int, what: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        _fail(from_spec, where, f"expected a list, got {type(value).__name__}", type_error=True)
    if len(value) > limit:
        _fail(from_spec, where, f"too many {what}: {len(value)} > {limit}")
    return list(value)


def _check_shape(value: Any, where: str, from_spec: bool) -> tuple[int, ...]:
    if not from_spec and not isinstance(value, (list, tuple)) and hasattr(type(value), "__index__"):
        value = (value,)
    dims = _check_seq(value, where, from_spec, _MAX_RANK, "dimensions")
    shape: list[int] = []
    for i, dim in enumerate(dims):
        n = _check_int(dim, f"{where}[{i}]", from_spec)
        if n < 0:
            _fail(from_spec, where, f"dimensions must be >= 0, got {n}")
        if n > _MAX_ELEMENTS:
            _fail(from_spec, where, f"dimension {n} exceeds the limit of {_MAX_ELEMENTS} elements")
        shape.append(n)
    if math.prod(shape) > _MAX_ELEMENTS:
        _fail(from_spec, where, f"shape {tuple(shape)} exceeds the limit of {_MAX_ELEMENTS} elements")
    return tuple(shape)


def _check_spec_dtype(value: Any, where: str, from_spec: bool) -> DType:
    if from_spec:
        # A peer must send a canonical name; aliases are a convenience for callers.
        if not isinstance(value, str) or value not in DTYPES:
            _fail(True, where, f"unsupported dtype {_short(value)}; supported: {', '.join(DTYPES)}")
        return DTYPES[value]
    return dtype_info(value)


def _is_intlike_dtype(dt: DType) -> bool:
    return is_integer(dt) or dt.dlpack_code == DLPACK_BOOL
