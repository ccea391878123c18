"""The JAX backend (experimental): Tensor leaves become ``jax.Array``.

Conversion semantics (the published JAX backend page):

* :func:`asarray` imports over DLPack. XLA:CPU aliases 64-byte-aligned
  buffers, and every rlmesh tensor is aligned, so an observation that arrived
  through shared memory becomes a ``jax.Array`` over the shared-memory block
  itself: no copy, at every size. The block's lease is held until the array
  is garbage collected, so observations kept across many steps never change.
  JAX arrays are immutable either way.
* The import's cost is mostly ``jnp.from_dlpack``'s own Python (a backend
  lookup, a stream query that raises on CPU, a dtype pass): about 55 us a
  leaf here, against 6 us for jaxlib's import call behind it, and 40 us for
  a copy (``jnp.array``) even of a 4 KiB leaf. So leaves whose dtype JAX
  keeps as it is in either x64 mode (32 bits and less) go straight to that
  call (:func:`_probe_fast_import`, checked once against a known tensor, else not
  used); 64-bit leaves go through ``jnp.from_dlpack``, which demotes them
  without x64 mode. For a leaf already in shared memory, zero-copy beats a
  copy at every size measured.
* The size threshold is the transport's: over shared memory, leaves under
  16 KiB (``rlmesh.specs.SHM_INLINE_LIMIT``) travel inside the ring record
  and are copied out of it, and those of 16 KiB and more stay zero-copy views
  of the slab. A one-leaf observation under the limit that came by the
  fixed-shape step codec is made straight from its bytes by jaxlib's device
  put (:func:`bytes_importer`): one copy, about 6 us, where a Tensor plus an
  import costs about 33.
* :func:`from_array` moves the array to the CPU if needed, blocks until it
  is ready, and copies it into a fresh tensor; 0-d arrays become Python scalars.
* int64, uint64 and float64 need JAX's 64-bit mode
  (``jax.config.update("jax_enable_x64", True)``); without it JAX itself
  demotes them to 32 bits (a copy).
* bfloat16 crosses bit for bit, both ways.
* jax >= 0.4.24 is required (the first release with DLPack bool support);
  :func:`ensure_available` enforces it.

JAX is imported on first use, so importing this module costs nothing.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from types import ModuleType
from typing import Any, Literal

from .._bridge import TreeBridge
from ..errors import BackendUnavailable
from ..tensor import Tensor

__all__ = [
    "BRIDGE",
    "JAX_FLOOR",
    "JaxBridge",
    "array_importer",
    "asarray",
    "bytes_importer",
    "ensure_available",
    "from_array",
    "space_from_spec",
]

#: The oldest jax release supported.
JAX_FLOOR = (0, 4, 24)

_jax: ModuleType | None = None
_jnp: ModuleType | None = None


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        match = re.match(r"\d+", piece)
        parts.append(int(match.group()) if match else 0)
    return tuple(parts)


def _modules() -> tuple[ModuleType, ModuleType]:
    global _jax, _jnp
    if _jax is None or _jnp is None:
        try:
            jax = importlib.import_module("jax")
            jnp = importlib.import_module("jax.numpy")
        except ImportError as exc:
            raise BackendUnavailable('the JAX backend needs jax: pip install "rlmesh[jax]"') from exc
        version = getattr(jax, "__version__", "0")
        if _version_tuple(version) < JAX_FLOOR:
            raise BackendUnavailable(
                f"the JAX backend needs jax >= {'.'.join(map(str, JAX_FLOOR))} (the first release with "
                f"DLPack bool support); jax {version} is installed"
            )
        _jax, _jnp = jax, jnp
    return _jax, _jnp


def ensure_available() -> None:
    """Raise if JAX is not installed or is older than 0.4.24.

    Raises:
        BackendUnavailable: (an ImportError) jax is missing or too old; the
            message names the floor.
    """
    global _jax, _jnp, _fast, _put
    # Re-check every time: the version may have been swapped (tests do).
    _jax = _jnp = None
    _fast = _put = False
    _modules()


def asarray(tensor: Tensor | bool | int | float) -> Any:
    """Return a ``jax.Array`` for a tensor, imported over DLPack.

    Aligned buffers (every rlmesh tensor) are shared without a copy; the
    array keeps the tensor's memory, and any shared-memory lease on it,
    alive. 64-bit dtypes without JAX's x64 mode are demoted by JAX (a copy).
    A Python bool, int or float becomes a 0-d array (``jnp.asarray``).

    Raises:
        TypeError: ``tensor`` is neither an :class:`rlmesh.Tensor` nor a
            Python scalar.
        BackendUnavailable: jax is missing or too old.
    """
    if not isinstance(tensor, Tensor):
        if isinstance(tensor, (bool, int, float)):
            return _jax_modules()[1].asarray(tensor)
        raise TypeError(f"asarray() expects an rlmesh.Tensor or a Python scalar, got {type(tensor).__name__}")
    if tensor._dtype.name in _NARROW:
        fast = _fast if _fast is not False else _probe_fast_import()
        if fast is not None:
            return fast(tensor)
    _, jnp = _jax_modules()
    return jnp.from_dlpack(tensor)


#: Dtypes JAX keeps as they are whether or not x64 mode is on (the fast import's).
_NARROW = frozenset(
    ("bool", "int8", "int16", "int32", "uint8", "uint16", "uint32", "float16", "bfloat16", "float32")
)

#: The fast import once probed (None: unavailable); False before the probe.
_fast: Callable[[Tensor], Any] | None | Literal[False] = False


def _probe_fast_import() -> Callable[[Tensor], Any] | None:
    """Import a CPU tensor with the call behind ``jnp.from_dlpack``, without its per-call Python.

    This is the call ``jnp.from_dlpack`` makes for a CPU tensor without a
    device or copy request; what it skips (backend and stream lookups, a
    dtype canonicalization that does nothing for 32-bit dtypes, placement on
    the same device) changes nothing for rlmesh's tensors. It is a private
    jaxlib entry point, so it is used only where it exists and imports a
    known tensor correctly; otherwise None, and every import takes the public
    path.
    """
    global _fast
    _fast = None
    try:
        jax, jnp = _jax_modules()
        from jax._src.lib import _jax as jaxlib_ext, jaxlib_extension_version  # type: ignore[attr-defined]

        to_buffer = jaxlib_ext.dlpack_managed_tensor_to_buffer
        device = jax.devices("cpu")[0]
    except Exception:
        return None

    if jaxlib_extension_version >= 467:

        def fast_import(tensor: Tensor) -> Any:
            return to_buffer(tensor.__dlpack__(), device, None, None, _KDL_CPU)

    else:

        def fast_import(tensor: Tensor) -> Any:
            return to_buffer(tensor.__dlpack__(), device, None, None)

    try:
        probe = Tensor(memoryview(bytearray(b"\x01\x00\x00\x00\xfe\xff\xff\xff")), (2,), "int32")
        result = fast_import(probe)
        if not (
            isinstance(result, jax.Array)
            and result.shape == (2,)
            and result.dtype == jnp.int32
            and result.tolist() == [1, -2]
        ):
            return None
    except Exception:
        return None
    _fast = fast_import
    return fast_import


_KDL_CPU = 1

#: jaxlib's host-to-device put and its fixed arguments once probed (None: unavailable);
#: False before the probe.
_put: tuple[Any, Any, list[Any], Any] | None | Literal[False] = False


def bytes_importer(shape: tuple[int, ...], dtype_name: str) -> Callable[[Any], Any] | None:
    """A maker of ``jax.Array`` s of ``shape`` and ``dtype_name`` from a leaf's bytes, or None.

    For the fixed-shape step codec's small observations, which arrive as a
    fresh ``bytearray`` the client owns: the array is a copy of those bytes
    on the CPU, uncommitted, as ``jnp.asarray`` makes it. The copy is made
    by jaxlib's ``batched_device_put`` (the call behind ``jax.device_put``)
    with the abstract value and placement built once: about 6 us a leaf on
    the 2-core VM, against about 40 us for ``jnp.asarray``'s per-call Python
    and about 33 us for a Tensor plus a DLPack import. It is a private
    jaxlib entry point, probed once against a known value; None where it is
    missing or disagrees (or for a 64-bit dtype, which JAX demotes without
    x64 mode), and the caller takes the public path.
    """
    if dtype_name not in _NARROW:
        return None
    parts = _put if _put is not False else _probe_put()
    if parts is None:
        return None
    try:
        import numpy as np

        _, jnp = _jax_modules()
        np_dtype = np.dtype(jnp.dtype(dtype_name))
        from jax._src import core

        aval = core.ShapedArray(shape, np_dtype)
    except Exception:
        return None
    batched_device_put, sharding, devices, semantics = parts
    ndarray = np.ndarray

    # One Python frame a step: the numpy array over the bytes and the put, every other
    # argument built once (each extra frame or attribute lookup is a visible share of a
    # step of about 12 us).
    def make(data: Any) -> Any:
        return batched_device_put(
            aval, sharding, [ndarray(shape, np_dtype, data)], devices, False, True, semantics
        )

    return make


#: The 64-bit dtypes and what JAX makes of them without x64 mode.
_DEMOTED = {"float64": "float32", "int64": "int32", "uint64": "uint32"}


def array_importer(
    shape: tuple[int, ...], dtype_name: str, *, committed: bool
) -> Callable[[Any], Any] | None:
    """A maker of ``jax.Array`` s from NumPy arrays of ``shape`` and ``dtype_name``, or None.

    For the small per-batch arrays of a vector step (rewards, flags, lane
    ids), fresh copies the client owns: each becomes a CPU ``jax.Array`` by
    jaxlib's ``batched_device_put`` (one copy), with the abstract value and
    placement built once, ``committed`` as asked. A 64-bit dtype follows
    JAX's x64 mode at each call: kept in x64 mode, else converted by NumPy
    first to the 32-bit dtype JAX itself would demote it to (the same
    rounding and wrap-around as XLA's conversion). This is about 5 us an
    array where a DLPack import costs about 20, and a demoting import (an
    XLA conversion) over 100. None where jaxlib's entry point is missing or
    failed its probe (see :func:`bytes_importer`), or for other dtypes: the
    caller takes the public path.

    Every array given to the maker must be a native-byte-order NumPy array of
    exactly ``shape`` and ``dtype_name`` (jaxlib trusts the abstract value:
    a mismatch is not checked, and can crash it).
    """
    if dtype_name not in _NARROW and dtype_name not in _DEMOTED:
        return None
    parts = _put if _put is not False else _probe_put()
    if parts is None:
        return None
    try:
        import numpy as np
        from jax._src import config, core

        np_dtype = np.dtype(dtype_name)
        aval = core.ShapedArray(shape, np_dtype)
        narrow = _DEMOTED.get(dtype_name)
        small_dtype = np.dtype(narrow) if narrow is not None else None
        small_aval = core.ShapedArray(shape, small_dtype) if small_dtype is not None else None
        x64 = config.enable_x64
    except Exception:
        return None
    batched_device_put, sharding, devices, semantics = parts

    if small_dtype is None:

        def make(array: Any) -> Any:
            return batched_device_put(aval, sharding, [array], devices, committed, True, semantics)

    else:
        errstate = np.errstate

        def make(array: Any) -> Any:
            if x64.value:
                return batched_device_put(aval, sharding, [array], devices, committed, True, semantics)
            # XLA's conversion gives inf for a float64 past float32's range, silently; so here.
            with errstate(over="ignore"):
                small = array.astype(small_dtype)
            return batched_device_put(small_aval, sharding, [small], devices, committed, True, semantics)

    return make


def _probe_put() -> tuple[Any, Any, list[Any], Any] | None:
    """Return jaxlib's ``batched_device_put`` with its fixed arguments, if it exists and copies right.

    The tuple is ``(batched_device_put, sharding, devices, semantics)`` for
    one CPU device, the arguments ``jax.device_put`` gives it for a NumPy
    array without a device; None where the entry point is missing or its
    result differs from ``jnp.asarray``'s for a known value.
    """
    global _put
    _put = None
    try:
        import numpy as np

        jax, jnp = _jax_modules()
        from jax._src import core
        from jax._src.lib import xla_client as xc  # type: ignore[attr-defined]

        device = jax.devices("cpu")[0]
        sharding = jax.sharding.SingleDeviceSharding(device)
        semantics = xc.HostBufferSemantics.IMMUTABLE_ONLY_DURING_CALL
        batched_device_put = xc.batched_device_put
        devices = [device]

        data = bytearray(b"\x01\x00\x00\x00\xfe\xff\xff\xff")
        aval = core.ShapedArray((2,), np.dtype(np.int32))
        result = batched_device_put(
            aval, sharding, [np.frombuffer(data, np.int32)], devices, False, True, semantics
        )
        reference = jnp.asarray(np.frombuffer(data, np.int32))
        data[0] = 7  # a copy: the array must not see later writes to the bytes
        if not (
            isinstance(result, jax.Array)
            and result.shape == (2,)
            and result.dtype == jnp.int32
            and result.tolist() == [1, -2]
            and result.sharding == reference.sharding
            and getattr(result, "_committed", None) == getattr(reference, "_committed", None)
        ):
            return None
    except Exception:
        return None
    _put = (batched_device_put, sharding, devices, semantics)
    return _put


def _jax_modules() -> tuple[ModuleType, ModuleType]:
    if _jax is not None and _jnp is not None:
        return _jax, _jnp
    return _modules()


def from_array(array: Any) -> Any:
    """Encode a ``jax.Array`` as an rlmesh value, always copying.

    Args:
        array: the JAX array (on any device).

    Returns:
        A fresh :class:`rlmesh.Tensor`, or a Python scalar for 0-d arrays.

    Raises:
        TypeError: ``array`` is not a ``jax.Array``.
        BufferError: the dtype has no rlmesh equivalent (complex).
    """
    jax, _ = _jax_modules()
    if not isinstance(array, jax.Array):
        raise TypeError(f"from_array() expects a jax.Array, got {type(array).__name__}")
    if array.ndim == 0:
        return array.item()
    cpu = jax.devices("cpu")[0]
    if any(device.platform != "cpu" for device in array.devices()):
        array = jax.device_put(array, cpu)
    array.block_until_ready()
    return Tensor.from_dlpack(array)


class JaxBridge(TreeBridge):
    """Tensor leaves <-> JAX arrays (zero-copy imports, copying exports)."""

    name = "jax"

    def decode_tensor(self, tensor: Tensor) -> Any:
        """A ``jax.Array`` over the tensor's memory."""
        return asarray(tensor)

    def encode_leaf(self, value: Any) -> Any:
        """JAX (and NumPy) arrays and scalars as Tensors and primitives."""
        jax, _ = _jax_modules()
        if isinstance(value, jax.Array):
            return from_array(value)
        if type(value).__module__ == "numpy":
            # A JAX policy may hand back NumPy values (jax.device_get does).
            from .numpy import BRIDGE as NUMPY

            return NUMPY.encode_leaf(value)
        return value


BRIDGE = JaxBridge()


def space_from_spec(spec: Any) -> Any:
    """Create a JAX-adapted space for a space spec: samples are ``jax.Array``.

    Raises:
        BackendUnavailable: jax is missing or too old.
    """
    from .. import spaces

    ensure_available()
    if isinstance(spec, spaces.Space):
        spec = spec.spec
    return spaces.space_from_spec(spec, bridge=BRIDGE)
