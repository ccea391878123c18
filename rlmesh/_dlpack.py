"""A DLPack producer and consumer for CPU memory, written with ctypes.

rlmesh exports its own capsules instead of going through numpy because numpy
cannot export read-only arrays over the legacy protocol and cannot name
bfloat16 at all; JAX receives ``kDLBfloat`` directly from here.

Ownership, as the DLPack spec lays it down:

* The producer (:func:`export`) allocates a managed-tensor struct and keeps
  the memory's owner alive in :data:`_LIVE` until the struct's deleter runs.
* A consumer renames the capsule to ``used_dltensor[_versioned]`` and later
  calls the deleter. A capsule dropped unconsumed still has its original name,
  so its destructor calls the deleter itself.

The deleter is a ctypes callback, so a consumer may call it from any thread:
ctypes takes the GIL around it.
"""

from __future__ import annotations

import ctypes
import itertools
from typing import Any

from ._buffers import buffer_address
from ._dtypes import DLPACK_BOOL, DLPACK_FLOAT, DLPACK_INT, DLPACK_UINT, DTYPES, DType

__all__ = ["CPU_DEVICE", "ImportedBuffer", "buffer_address", "export", "import_capsule", "live_exports"]

KDL_CPU = 1
KDL_CUDA_HOST = 3
CPU_DEVICE = (KDL_CPU, 0)

# DLPack 1.0 flag bits (dlpack.h).
FLAG_READ_ONLY = 1 << 0
FLAG_IS_COPIED = 1 << 1

# The version our versioned capsules declare.
DLPACK_MAJOR = 1
DLPACK_MINOR = 0


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


_Deleter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _Deleter)]


class _DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [
        ("version", _DLPackVersion),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", _Deleter),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", _DLTensor),
    ]


_api = ctypes.pythonapi
_Destructor = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_api.PyCapsule_New.restype = ctypes.py_object
_api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, _Destructor]
_api.PyCapsule_IsValid.restype = ctypes.c_int
_api.PyCapsule_IsValid.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_GetName.restype = ctypes.c_char_p
_api.PyCapsule_GetName.argtypes = [ctypes.py_object]
_api.PyCapsule_SetName.restype = ctypes.c_int
_api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]

# PyCapsule_New keeps the name pointer, not a copy: these buffers live forever.
_NAME_LEGACY = ctypes.create_string_buffer(b"dltensor")
_NAME_VERSIONED = ctypes.create_string_buffer(b"dltensor_versioned")
_NAME_USED_LEGACY = ctypes.create_string_buffer(b"used_dltensor")
_NAME_USED_VERSIONED = ctypes.create_string_buffer(b"used_dltensor_versioned")


class _Export:
    """What one exported capsule keeps alive until its deleter runs."""

    __slots__ = ("managed", "shape", "strides", "owner")

    def __init__(self, managed: ctypes.Structure, shape: Any, strides: Any, owner: object) -> None:
        self.managed = managed
        self.shape = shape
        self.strides = strides
        self.owner = owner


# Struct address -> the export it belongs to. An entry is removed exactly once,
# by the deleter, which drops the last reference to the owner.
_LIVE: dict[int, _Export] = {}


def live_exports() -> int:
    """The number of exported DLPack tensors whose deleter has not run yet."""
    return len(_LIVE)


def _delete_managed_impl(address: int | None) -> None:
    if address:
        _LIVE.pop(address, None)


_delete_managed = _Deleter(_delete_managed_impl)


def _destroy_capsule_impl(capsule: int | None) -> None:
    # Runs while the capsule is being deallocated. Only an unconsumed capsule
    # still carries our name; a consumer renamed it and owns the deleter call.
    if not capsule:
        return
    for name in (_NAME_LEGACY, _NAME_VERSIONED):
        if _api.PyCapsule_IsValid(capsule, name):
            address = _pointer_of_raw_capsule(capsule, name)
            if address:
                _LIVE.pop(address, None)
            return


_destroy_capsule = _Destructor(_destroy_capsule_impl)


# A second prototype of PyCapsule_GetPointer taking a raw pointer: in the
# destructor the capsule is mid-deallocation (refcount zero) and must not be
# wrapped in a py_object, which would resurrect it.
_raw_get_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi)
)


def _pointer_of_raw_capsule(capsule: int, name: Any) -> int:
    return int(_raw_get_pointer(capsule, name) or 0)


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
    ndim = len(shape)
    c_shape = (ctypes.c_int64 * max(ndim, 1))(*shape)
    c_strides = (ctypes.c_int64 * max(ndim, 1))(*_c_strides(shape))
    managed: _DLManagedTensor | _DLManagedTensorVersioned
    if versioned:
        managed = _DLManagedTensorVersioned()
        managed.version.major = DLPACK_MAJOR
        managed.version.minor = DLPACK_MINOR
        managed.flags = (FLAG_READ_ONLY if read_only else 0) | (FLAG_IS_COPIED if copied else 0)
        name = _NAME_VERSIONED
    else:
        managed = _DLManagedTensor()
        name = _NAME_LEGACY
    dl = managed.dl_tensor
    dl.data = address
    dl.device.device_type = KDL_CPU
    dl.device.device_id = 0
    dl.ndim = ndim
    dl.dtype.code = dtype.dlpack_code
    dl.dtype.bits = dtype.itemsize * 8
    dl.dtype.lanes = 1
    dl.shape = ctypes.cast(c_shape, ctypes.POINTER(ctypes.c_int64))
    dl.strides = ctypes.cast(c_strides, ctypes.POINTER(ctypes.c_int64))
    dl.byte_offset = 0
    managed.deleter = _delete_managed
    struct_address = ctypes.addressof(managed)
    managed.manager_ctx = struct_address
    _LIVE[struct_address] = _Export(managed, c_shape, c_strides, owner)
    try:
        return _api.PyCapsule_New(struct_address, name, _destroy_capsule)
    except BaseException:
        _LIVE.pop(struct_address, None)
        raise


def _c_strides(shape: tuple[int, ...]) -> list[int]:
    # DLPack strides count elements, not bytes.
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * max(shape[i + 1], 1)
    return strides


class ImportedBuffer:
    """A consumed DLPack tensor: its metadata plus a deleter to call when done.

    Attributes:
        address: the first element's address (byte offset applied).
        shape: the shape.
        strides: element strides, or None for C-contiguous.
        dtype: the rlmesh dtype.
        read_only: the producer flagged the memory read-only.
    """

    __slots__ = ("address", "shape", "strides", "dtype", "read_only", "_deleter", "_managed")

    def __init__(
        self,
        address: int,
        shape: tuple[int, ...],
        strides: tuple[int, ...] | None,
        dtype: DType,
        read_only: bool,
        deleter: Any,
        managed: int,
    ) -> None:
        self.address = address
        self.shape = shape
        self.strides = strides
        self.dtype = dtype
        self.read_only = read_only
        self._deleter = deleter
        self._managed = managed

    def release(self) -> None:
        """Call the producer's deleter once; later calls do nothing."""
        deleter, self._deleter = self._deleter, None
        if deleter:
            deleter(self._managed)


def _dtype_from_dl(code: int, bits: int, lanes: int) -> DType:
    if lanes != 1:
        raise BufferError(f"DLPack tensors with {lanes} lanes are not supported")
    for dtype in DTYPES.values():
        if dtype.dlpack_code == code and dtype.itemsize * 8 == bits:
            return dtype
    if code == DLPACK_UINT and bits == 8:  # pragma: no cover - covered by the table
        return DTYPES["uint8"]
    kinds = {DLPACK_INT: "int", DLPACK_UINT: "uint", DLPACK_FLOAT: "float", DLPACK_BOOL: "bool"}
    raise BufferError(f"unsupported DLPack dtype {kinds.get(code, f'code {code}')}{bits}")


def import_capsule(capsule: object) -> ImportedBuffer:
    """Consume a DLPack capsule (legacy or versioned) holding CPU memory.

    The capsule is renamed to its ``used_`` name, so it cannot be consumed
    again; the caller must call :meth:`ImportedBuffer.release` when done.

    Raises:
        BufferError: the capsule was already consumed, is not a DLPack
            capsule, lives on a non-CPU device, or has an unsupported dtype.
    """
    name = _capsule_name(capsule)
    if name == b"dltensor_versioned":
        address = _api.PyCapsule_GetPointer(capsule, _NAME_VERSIONED)
        versioned = _DLManagedTensorVersioned.from_address(address)
        if versioned.version.major > DLPACK_MAJOR:
            raise BufferError(
                f"DLPack version {versioned.version.major}.{versioned.version.minor} "
                f"is newer than the {DLPACK_MAJOR}.x this build understands"
            )
        dl = versioned.dl_tensor
        read_only = bool(versioned.flags & FLAG_READ_ONLY)
        deleter_ptr = ctypes.cast(versioned.deleter, ctypes.c_void_p).value
        used = _NAME_USED_VERSIONED
    elif name == b"dltensor":
        address = _api.PyCapsule_GetPointer(capsule, _NAME_LEGACY)
        legacy = _DLManagedTensor.from_address(address)
        dl = legacy.dl_tensor
        read_only = False
        deleter_ptr = ctypes.cast(legacy.deleter, ctypes.c_void_p).value
        used = _NAME_USED_LEGACY
    elif name is not None and name.startswith(b"used_"):
        raise BufferError("this DLPack capsule was already consumed; a capsule can be consumed once")
    else:
        raise BufferError(f"not a DLPack capsule (capsule name {name!r})")

    if dl.device.device_type not in (KDL_CPU, KDL_CUDA_HOST):
        raise BufferError(
            f"DLPack tensor lives on device type {dl.device.device_type}; only CPU memory can be "
            "imported (move it to the CPU first)"
        )
    dtype = _dtype_from_dl(dl.dtype.code, dl.dtype.bits, dl.dtype.lanes)
    ndim = int(dl.ndim)
    if ndim < 0 or ndim > 64:
        raise BufferError(f"DLPack tensor has an invalid rank {ndim}")
    shape = tuple(int(dl.shape[i]) for i in range(ndim))
    if any(d < 0 for d in shape):
        raise BufferError(f"DLPack tensor has a negative dimension: {shape}")
    strides: tuple[int, ...] | None = None
    if ndim and dl.strides:
        strides = tuple(int(dl.strides[i]) for i in range(ndim))
        if strides == tuple(_c_strides(shape)):
            strides = None
    data = int(dl.data or 0) + int(dl.byte_offset)
    # The capsule is ours now: rename it first so its destructor leaves the
    # deleter call to us.
    _api.PyCapsule_SetName(capsule, used)
    deleter = _Deleter(deleter_ptr) if deleter_ptr else None
    return ImportedBuffer(data, shape, strides, dtype, read_only, deleter, address)


def _capsule_name(obj: object) -> bytes | None:
    if type(obj).__name__ != "PyCapsule":
        raise BufferError(f"expected a DLPack capsule, got {type(obj).__name__}")
    name = _api.PyCapsule_GetName(obj)
    return bytes(name) if name is not None else None


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
