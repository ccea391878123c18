"""The NumPy backend: Tensor leaves become writable NumPy arrays.

Conversion semantics (the published NumPy backend page):

* :func:`asarray` returns a **writable copy**, as Gymnasium's observations are
  writable (``obs /= 255.0`` works). The zero-copy, read-only view is
  ``numpy.from_dlpack(tensor)`` (or ``numpy.asarray(tensor)``).
* :func:`from_array` always copies into a fresh tensor; array scalars and 0-d
  arrays become Python scalars.
* bfloat16 needs ``ml_dtypes`` (``pip install "rlmesh[bfloat16]"``).

NumPy is imported on first use, so importing this module costs nothing.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from .._bridge import TreeBridge
from .._dtypes import dtype_info
from ..errors import BackendUnavailable
from ..tensor import Tensor

__all__ = ["BRIDGE", "NumpyBridge", "asarray", "ensure_available", "from_array", "space_from_spec"]

_np: ModuleType | None = None
_dtypes: dict[str, Any] = {}


def _numpy() -> ModuleType:
    global _np
    if _np is None:
        try:
            _np = importlib.import_module("numpy")
        except ImportError as exc:
            raise BackendUnavailable('the NumPy backend needs numpy: pip install "rlmesh[numpy]"') from exc
    return _np


def ensure_available() -> None:
    """Raise if NumPy is not installed.

    Raises:
        BackendUnavailable: (an ImportError) numpy cannot be imported.
    """
    _numpy()


def numpy_dtype(name: str) -> Any:
    """The numpy dtype for an rlmesh dtype name (bfloat16 through ml_dtypes).

    Raises:
        BackendUnavailable: bfloat16 was asked for and ml_dtypes is missing.
    """
    dtype = _dtypes.get(name)
    if dtype is None:
        np = _numpy()
        if name == "bfloat16":
            try:
                ml_dtypes = importlib.import_module("ml_dtypes")
            except ImportError as exc:
                raise BackendUnavailable(
                    'bfloat16 tensors need ml_dtypes to become NumPy arrays: pip install "rlmesh[bfloat16]"'
                ) from exc
            dtype = np.dtype(ml_dtypes.bfloat16)
        else:
            dtype = np.dtype(name).newbyteorder("<")
        _dtypes[name] = dtype
    return dtype


def asarray(tensor: Tensor | bool | int | float) -> Any:
    """Return a writable NumPy array holding a copy of the tensor's data.

    Args:
        tensor: the tensor to convert, or a Python bool, int or float (a
            decoded Discrete leaf, say), which becomes a 0-d array.

    Returns:
        A new, writable ``numpy.ndarray`` of the tensor's shape and dtype.

    Raises:
        TypeError: ``tensor`` is neither an :class:`rlmesh.Tensor` nor a
            Python scalar.
        BackendUnavailable: numpy is missing, or ml_dtypes for a bfloat16 tensor
            (the message names ``rlmesh[bfloat16]``).
    """
    if not isinstance(tensor, Tensor):
        if isinstance(tensor, (bool, int, float)):
            return _numpy().asarray(tensor)
        raise TypeError(f"asarray() expects an rlmesh.Tensor or a Python scalar, got {type(tensor).__name__}")
    np = _numpy()
    flat = np.frombuffer(tensor._view, dtype=numpy_dtype(tensor._dtype.name))
    return flat.reshape(tensor._shape).copy()


def from_array(array: Any) -> Any:
    """Encode a NumPy array or scalar as an rlmesh value, always copying.

    Args:
        array: a ``numpy.ndarray`` or NumPy scalar.

    Returns:
        A fresh :class:`rlmesh.Tensor` for arrays with at least one dimension,
        or a Python scalar for NumPy scalars and 0-d arrays.

    Raises:
        TypeError: ``array`` is not a NumPy array or scalar.
        ValueError: the dtype is not one rlmesh carries (complex, object, str).
    """
    np = _numpy()
    if isinstance(array, np.generic):
        _check_dtype(array.dtype)
        return array.item()
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_array() expects a numpy.ndarray, got {type(array).__name__}")
    info = _check_dtype(array.dtype)
    if array.ndim == 0:
        return array.item()
    tensor, target = Tensor._empty(array.shape, info)
    if tensor.nbytes:
        out = np.frombuffer(target, dtype=numpy_dtype(info.name)).reshape(array.shape)
        # One copy, whatever the source's strides or byte order.
        np.copyto(out, array, casting="equiv")
    return tensor


def _check_dtype(dtype: Any) -> Any:
    name = "bfloat16" if dtype.name == "bfloat16" else dtype.name
    try:
        return dtype_info(name)
    except ValueError:
        raise ValueError(
            f"unsupported tensor dtype {dtype}; rlmesh carries bool, (u)int8-64, float16, "
            "bfloat16, float32 and float64"
        ) from None


class NumpyBridge(TreeBridge):
    """Tensor leaves <-> NumPy arrays (writable copies on the way in)."""

    name = "numpy"

    def decode_tensor(self, tensor: Tensor) -> Any:
        """A writable NumPy copy of the tensor."""
        return asarray(tensor)

    def encode_leaf(self, value: Any) -> Any:
        """NumPy arrays and scalars as Tensors and primitives; other leaves unchanged.

        Raises:
            ValueError: an array has a dtype rlmesh does not carry.
        """
        np = _numpy()
        if isinstance(value, (np.ndarray, np.generic)):
            return from_array(value)
        return value


BRIDGE = NumpyBridge()


def space_from_spec(spec: Any) -> Any:
    """Create a NumPy-adapted space for a space spec: samples are NumPy arrays.

    Args:
        spec: a :class:`rlmesh.spaces.SpaceSpec`, its dict form, or a space.

    Raises:
        BackendUnavailable: numpy is not installed.
    """
    from .. import spaces

    ensure_available()
    if isinstance(spec, spaces.Space):
        spec = spec.spec
    return spaces.space_from_spec(spec, bridge=BRIDGE)
