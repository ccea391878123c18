"""A DLPack producer and consumer for CPU memory.

rlmesh exports its own capsules instead of going through numpy because numpy
cannot export read-only arrays over the legacy protocol and cannot name
bfloat16 at all; JAX receives ``kDLBfloat`` directly from here.

The capsules, their destructor and the managed-tensor deleters live in the C
extension (``rlmesh/_native.c``). A consumer may drop a capsule, or call its
deleter, with an exception pending (numpy refusing bfloat16 does), and only C
can save and restore it around the release. Nothing here sets ``argtypes`` on
the ctypes function objects of the Python C API, which every library in the
process shares: whoever set them last used to decide for everyone.

Ownership, as the DLPack spec lays it down:

* The producer (:func:`export`) allocates a managed-tensor struct that holds a
  reference to the memory's owner until the struct's deleter runs.
* A consumer renames the capsule to ``used_dltensor[_versioned]`` and later
  calls the deleter. A capsule dropped unconsumed still has its original name,
  so its destructor calls the deleter itself.
"""

from __future__ import annotations

import ctypes
import itertools
from typing import Any

from . import _native
from ._buffers import buffer_address
from ._dtypes import DLPACK_BOOL, DLPACK_FLOAT, DLPACK_INT, DLPACK_UINT, DTYPES, DType
from .errors import CapsuleConsumedError

__all__ = [
    "CPU_DEVICE",
    "ImportedBuffer",
    "buffer_address",
    "capsule_name",
    "export",
    "import_capsule",
    "live_exports",
]

KDL_CPU = 1
KDL_CUDA_HOST = 3
CPU_DEVICE = (KDL_CPU, 0)

# DLPack 1.0 flag bits (dlpack.h).
FLAG_READ_ONLY = 1 << 0
FLAG_IS_COPIED = 1 << 1


def live_exports() -> int:
    """The number of exported DLPack tensors whose deleter has not run yet."""
    return _native.live_exports()


def capsule_name(obj: object) -> bytes | None:
    """The name of a capsule (None if it has none).

    Raises:
        TypeError: ``obj`` is not a capsule.
    """
    return _native.capsule_name(obj)


def export(
    *,
    address: int,
    shape: tuple[int, ...],
    dtype: DType,
    owner: object,
    versioned: bool,
    read_only: bool = True,
    copied: bool = False,
) -> object:
    """Build a DLPack capsule over ``address`` that keeps ``owner`` alive.

    Args:
        address: the first byte of the C-contiguous data.
        shape: the tensor's shape.
        dtype: the element type.
        owner: any object whose lifetime keeps the memory valid.
        versioned: build a ``dltensor_versioned`` capsule (DLPack >= 1.0) instead
            of a legacy ``dltensor`` one.
        read_only: set the read-only flag (versioned capsules only).
        copied: set the is-copied flag (versioned capsules only).

    Returns:
        The capsule.
    """
    flags = (FLAG_READ_ONLY if read_only else 0) | (FLAG_IS_COPIED if copied else 0)
    return _native.dlpack_export(
        owner, address, tuple(shape), dtype.dlpack_code, dtype.itemsize * 8, versioned, flags
    )


def _c_strides(shape: tuple[int, ...]) -> list[int]:
    # DLPack strides count elements, not bytes.
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * max(shape[i + 1], 1)
    return strides


class ImportedBuffer:
    """A consumed DLPack tensor: its metadata plus the producer's deleter, run once.

    Attributes:
        address: the first element's address (byte offset applied).
        shape: the shape.
        strides: element strides, or None for C-contiguous.
        dtype: the rlmesh dtype.
        read_only: the producer flagged the memory read-only.
    """

    __slots__ = ("address", "shape", "strides", "dtype", "read_only", "_import")

    def __init__(
        self,
        address: int,
        shape: tuple[int, ...],
        strides: tuple[int, ...] | None,
        dtype: DType,
        read_only: bool,
        handle: Any,
    ) -> None:
        self.address = address
        self.shape = shape
        self.strides = strides
        self.dtype = dtype
        self.read_only = read_only
        self._import = handle

    def release(self) -> None:
        """Call the producer's deleter once; later calls do nothing.

        If it is never called, the deleter runs when this object is collected.
        """
        self._import.release()


def _dtype_from_dl(code: int, bits: int, lanes: int) -> DType:
    if lanes != 1:
        raise BufferError(f"DLPack tensors with {lanes} lanes are not supported")
    for dtype in DTYPES.values():
        if dtype.dlpack_code == code and dtype.itemsize * 8 == bits:
            return dtype
    kinds = {DLPACK_INT: "int", DLPACK_UINT: "uint", DLPACK_FLOAT: "float", DLPACK_BOOL: "bool"}
    raise BufferError(f"unsupported DLPack dtype {kinds.get(code, f'code {code}')}{bits}")


def import_capsule(capsule: object) -> ImportedBuffer:
    """Consume a DLPack capsule (legacy or versioned) holding CPU memory.

    The capsule is renamed to its ``used_`` name, so it cannot be consumed
    again; the caller should call :meth:`ImportedBuffer.release` when done.
    A capsule that fails a check is released at once and stays unusable.

    Raises:
        CapsuleConsumedError: the capsule was already consumed (both a
            ``BufferError`` and, as in the published API, a ``TypeError``).
        BufferError: not a DLPack capsule, a newer major version, a bad rank,
            a non-CPU device, or an unsupported dtype.
    """
    if type(capsule).__name__ != "PyCapsule":
        raise BufferError(f"expected a DLPack capsule, got {type(capsule).__name__}")
    name = capsule_name(capsule)
    if name is not None and name.startswith(b"used_dltensor"):
        raise CapsuleConsumedError("this DLPack capsule was already consumed; a capsule can be consumed once")
    if name not in (b"dltensor", b"dltensor_versioned"):
        raise BufferError(f"not a DLPack capsule (capsule name {name!r})")
    handle, data, shape, strides, code, bits, lanes, device_type, read_only = _native.dlpack_take(capsule)
    try:
        if device_type not in (KDL_CPU, KDL_CUDA_HOST):
            raise BufferError(
                f"DLPack tensor lives on device type {device_type}; only CPU memory can be "
                "imported (move it to the CPU first)"
            )
        dtype = _dtype_from_dl(code, bits, lanes)
        if any(d < 0 for d in shape):
            raise BufferError(f"DLPack tensor has a negative dimension: {shape}")
        if strides is not None and strides == tuple(_c_strides(shape)):
            strides = None
    except BaseException:
        handle.release()
        raise
    return ImportedBuffer(data, shape, strides, dtype, read_only, handle)


def strided_copy(dst: int, src: int, shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> None:
    """Copy a strided source (element strides) into C-contiguous memory at ``dst``."""
    if not shape or 0 in shape:
        if not shape:
            ctypes.memmove(dst, src, itemsize)
        return
    inner = shape[-1]
    inner_contiguous = strides[-1] == 1
    row_bytes = inner * itemsize
    out = dst
    for index in itertools.product(*(range(n) for n in shape[:-1])):
        base = src + sum(i * s for i, s in zip(index, strides[:-1], strict=True)) * itemsize
        if inner_contiguous:
            ctypes.memmove(out, base, row_bytes)
            out += row_bytes
        else:
            step = strides[-1] * itemsize
            for j in range(inner):
                ctypes.memmove(out, base + j * step, itemsize)
                out += itemsize
