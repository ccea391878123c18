"""Value trees and the metadata rules.

Two kinds of data cross the wire:

* **values** (observations, actions, samples): trees of None, bool, int, float,
  str, bytes, :class:`~rlmesh.tensor.Tensor`, list, tuple and ``dict[str, ...]``;
* **metadata** (env ``metadata``, ``info`` dicts, reset ``options``): JSON-like
  trees with no tensors. Arrays become nested lists, array scalars become
  Python scalars, enums become their value, tuples become lists.

:func:`encode_metadata` applies the metadata rules strictly and raises
``TypeError`` for anything else; :func:`sanitize_metadata` is the lossy
variant a user can call first (unknown objects become their ``str()``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from .tensor import Tensor

__all__ = ["MAX_DEPTH", "check_value", "encode_metadata", "sanitize_metadata"]

#: Deepest nesting accepted in a value or metadata tree.
MAX_DEPTH = 64

_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1  # msgpack carries uint64 too

_SCALARS = (type(None), bool, int, float, str, bytes)


def _exact_builtin(obj: Any) -> Any:
    """``obj`` as its exact builtin type if it subclasses one (None otherwise)."""
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, bytes):
        return bytes(obj)
    return None


def _fail(obj: object, path: str) -> TypeError:
    where = f" at {path}" if path else ""
    return TypeError(
        f"value of type {type(obj).__module__}.{type(obj).__qualname__}{where} is not supported "
        "in RLMesh metadata; pass the dict through rlmesh.sanitize_metadata(...) first"
    )


def encode_metadata(obj: Any) -> Any:
    """Apply the metadata rules strictly, returning a msgpack-able tree.

    None, bool, int, float, str and bytes pass unchanged (ints must fit in 64
    bits). Dicts must have string keys; tuples and lists become lists.
    Objects with ``_asdict()`` (named tuples) become dicts, objects with
    ``tolist()`` (numpy arrays, tensors) nested lists, objects with ``item()``
    (array scalars) Python scalars, and enums their ``value`` (their ``name``
    where the value fits none of these rules).

    Raises:
        TypeError: an object fits none of the rules, or a dict key is not a
            string; the message names :func:`rlmesh.sanitize_metadata`.
        ValueError: the tree is cyclic or nested deeper than :data:`MAX_DEPTH`.
    """
    if type(obj) is dict:
        # The common case, per step: a flat dict of str keys and plain scalars.
        for key, value in obj.items():
            if type(key) is not str or type(value) not in _PLAIN:
                break
        else:
            return dict(obj)
    return _encode(obj, 0, "", set())


_PLAIN = frozenset((str, float, bool, type(None), bytes))


def _encode(obj: Any, depth: int, path: str, active: set[int]) -> Any:
    kind = type(obj)
    if kind is str or kind is float or kind is bool or obj is None or kind is bytes:
        return obj
    if kind is int:
        if not _INT_MIN <= obj <= _INT_MAX:
            raise TypeError(
                f"integer {obj}{' at ' + path if path else ''} does not fit in 64 bits; "
                "pass the dict through rlmesh.sanitize_metadata(...) first"
            )
        return obj
    if depth >= MAX_DEPTH:
        raise ValueError(f"metadata nested deeper than {MAX_DEPTH} levels")
    if isinstance(obj, (dict, Mapping)):
        ident = id(obj)
        if ident in active:
            raise ValueError(f"metadata contains a cycle{' at ' + path if path else ''}")
        active.add(ident)
        try:
            out: dict[str, Any] = {}
            for key, value in obj.items():
                if type(key) is not str:
                    raise TypeError(
                        f"metadata keys must be str, got {type(key).__name__} key {key!r}"
                        f"{' at ' + path if path else ''}; pass the dict through "
                        "rlmesh.sanitize_metadata(...) first"
                    )
                out[key] = _encode(value, depth + 1, f"{path}.{key}" if path else key, active)
            return out
        finally:
            active.discard(ident)
    if isinstance(obj, enum.Enum):
        # The published rule: the value if it can be carried, else the name.
        try:
            return _encode(obj.value, depth + 1, path, active)
        except TypeError:
            return obj.name
    if isinstance(obj, tuple) and hasattr(obj, "_asdict"):
        return _encode(obj._asdict(), depth + 1, path, active)
    if isinstance(obj, (list, tuple)):
        ident = id(obj)
        if ident in active:
            raise ValueError(f"metadata contains a cycle{' at ' + path if path else ''}")
        active.add(ident)
        try:
            return [_encode(v, depth + 1, f"{path}[{i}]", active) for i, v in enumerate(obj)]
        finally:
            active.discard(ident)
    exact = _exact_builtin(obj)
    if exact is not None:
        # Subclasses (numpy.float64 is a float) travel as the exact builtin.
        return _encode(exact, depth, path, active)
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return _encode(obj.tolist(), depth + 1, path, active)
    if hasattr(obj, "item") and callable(obj.item):
        return _encode(obj.item(), depth + 1, path, active)
    raise _fail(obj, path)


def sanitize_metadata(obj: Any) -> Any:
    """Make any object acceptable as RLMesh metadata, losing what does not fit.

    Follows the rules of :func:`encode_metadata`, and where they fail: dict
    keys become ``str(key)``, sets and other iterables of unknown kind stay
    unknown and become ``str(obj)``, integers beyond 64 bits become strings,
    and an enum whose value cannot be carried becomes its name.

    Args:
        obj: a mapping (an info dict, env metadata, reset options).

    Returns:
        A new dict of None, bool, int, float, str, bytes, list and dict.

    Raises:
        TypeError: ``obj`` is not a mapping (metadata is a dict at the top).
        ValueError: the tree is cyclic or nested deeper than :data:`MAX_DEPTH`.
    """
    if not isinstance(obj, Mapping):
        raise TypeError(f"sanitize_metadata() takes a mapping, got {type(obj).__name__}")
    return _sanitize(obj, 0, set())


def _sanitize(obj: Any, depth: int, active: set[int]) -> Any:
    kind = type(obj)
    if obj is None or kind in (bool, float, str, bytes):
        return obj
    if kind is int:
        return obj if _INT_MIN <= obj <= _INT_MAX else str(obj)
    if depth >= MAX_DEPTH:
        raise ValueError(f"metadata nested deeper than {MAX_DEPTH} levels")
    if isinstance(obj, (dict, Mapping)):
        ident = id(obj)
        if ident in active:
            raise ValueError("metadata contains a cycle")
        active.add(ident)
        try:
            return {
                (key if type(key) is str else str(key)): _sanitize(value, depth + 1, active)
                for key, value in obj.items()
            }
        finally:
            active.discard(ident)
    if isinstance(obj, enum.Enum):
        # The value only if it is carried as it is, else the name: a rich value's
        # str() would be noise (published rule: ``.value`` then ``.name``).
        try:
            return _encode(obj.value, depth + 1, "", set())
        except (TypeError, ValueError):
            return obj.name
    if isinstance(obj, tuple) and hasattr(obj, "_asdict"):
        return _sanitize(obj._asdict(), depth + 1, active)
    if isinstance(obj, (list, tuple)):
        ident = id(obj)
        if ident in active:
            raise ValueError("metadata contains a cycle")
        active.add(ident)
        try:
            return [_sanitize(v, depth + 1, active) for v in obj]
        finally:
            active.discard(ident)
    exact = _exact_builtin(obj)
    if exact is not None:
        return _sanitize(exact, depth, active)
    try:
        if hasattr(obj, "tolist") and callable(obj.tolist):
            return _sanitize(obj.tolist(), depth + 1, active)
        if hasattr(obj, "item") and callable(obj.item):
            return _sanitize(obj.item(), depth + 1, active)
    except Exception:  # a broken tolist() is just another unknown object
        pass
    return str(obj)


def check_value(value: Any) -> None:
    """Check that ``value`` is a wire value tree.

    Raises:
        TypeError: a leaf is not None, bool, int, float, str, bytes or Tensor,
            or a dict key is not a string.
        ValueError: the tree is cyclic or deeper than :data:`MAX_DEPTH`.
    """
    _check(value, 0, set())


def _check(value: Any, depth: int, active: set[int]) -> None:
    if isinstance(value, _SCALARS) or isinstance(value, Tensor):
        return
    if depth >= MAX_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, (list, tuple, dict)):
        ident = id(value)
        if ident in active:
            raise ValueError("value contains a cycle")
        active.add(ident)
        try:
            if isinstance(value, dict):
                for key, item in value.items():
                    if type(key) is not str:
                        raise TypeError(f"value dict keys must be str, got {key!r}")
                    _check(item, depth + 1, active)
            else:
                for item in value:
                    _check(item, depth + 1, active)
        finally:
            active.discard(ident)
        return
    raise TypeError(
        f"{type(value).__name__} is not an rlmesh value (None, bool, int, float, str, bytes, "
        "Tensor, list, tuple or dict[str, ...]); convert arrays with rlmesh.numpy.from_array"
    )
