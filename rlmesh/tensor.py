"""``rlmesh.Tensor``: an immutable, C-contiguous, little-endian CPU tensor.

A Tensor is the leaf of every value rlmesh moves. It needs no array library:
it carries its bytes, shape and dtype, and hands them to numpy or JAX without a
copy through DLPack, ``__array_interface__`` and the buffer protocol (on every
Python, through the C base type :class:`rlmesh._native.TensorBase`). Every
export is read-only, except a DLPack export asked to copy.

Storage comes in two kinds:

* owned memory, allocated here and aligned to :data:`ALIGNMENT` bytes so that
  XLA:CPU can alias it (its minimum alignment is 64 bytes);
* external memory wrapped without a copy (:meth:`Tensor.wrap`), such as a
  leased block of a shared-memory slab. The tensor, and every view or DLPack
  capsule made from it, keeps the memory's owner alive, so a lease is held
  until the last of them is gone.
"""

from __future__ import annotations

import ctypes
import math
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from . import _dlpack
from ._dtypes import DType, dtype_info
from ._native import TensorBase
from ._shape import Shape

__all__ = ["ALIGNMENT", "Tensor"]

# XLA:CPU aliases imported buffers only at 64-byte alignment (openxla/xla#16505);
# it is also one cache line.
ALIGNMENT = 64


def _c_strides(shape: tuple[int, ...], itemsize: int) -> Shape:
    strides = []
    step = itemsize
    for dim in reversed(shape):
        strides.append(step)
        step *= max(dim, 1)
    return Shape(reversed(strides))


def _validate_shape(shape: Iterable[int] | int) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of ints, got {type(shape).__name__}") from None
    out = []
    for dim in dims:
        if isinstance(dim, bool) or not hasattr(dim, "__index__"):
            raise TypeError(f"shape entries must be ints, got {dim!r}")
        value = dim.__index__()
        if value < 0:
            raise ValueError(f"shape entries must be >= 0, got {dims}")
        out.append(value)
    return tuple(out)


def _allocate(nbytes: int) -> tuple[memoryview, int, bytearray]:
    """Allocate ``nbytes`` of zeroed memory aligned to ALIGNMENT.

    Returns a writable byte view, its address, and the object that owns it.
    """
    raw = bytearray(nbytes + ALIGNMENT)
    base = ctypes.addressof(ctypes.c_char.from_buffer(raw))
    offset = -base % ALIGNMENT
    # The view exports `raw`, so the bytearray can never be resized (and move)
    # while any view of it is alive.
    view = memoryview(raw)[offset : offset + nbytes]
    return view, base + offset, raw


class Tensor(TensorBase):
    """An immutable, C-contiguous, little-endian tensor in CPU memory.

    ``Tensor(buffer, shape, dtype)`` copies ``buffer``'s bytes into fresh
    64-byte-aligned memory. :meth:`wrap` shares memory instead, and
    :meth:`from_dlpack` imports (and copies) any DLPack producer.

    Args:
        buffer: any C-contiguous buffer-protocol object (bytes, bytearray,
            memoryview, array.array, a numpy array) holding exactly
            ``prod(shape) * itemsize`` bytes, little-endian.
        shape: the dimensions.
        dtype: one of bool, int8, int16, int32, int64, uint8, uint16, uint32,
            uint64, float16, bfloat16, float32, float64.

    Raises:
        ValueError: the dtype is unsupported, or the byte length does not
            match the shape and dtype ("tensor byte length mismatch").
        TypeError: ``buffer`` does not support the buffer protocol, or
            ``shape`` is not a sequence of ints.
    """

    # The fields live in the C base, which also exports the buffer protocol:
    # ``memoryview(t)`` is read-only, shaped, typed with the struct formats of
    # the published API (float16 is "e"), and keeps ``t`` (and so its lease)
    # alive. bfloat16 has no format: its buffer request raises BufferError.
    __slots__ = ()

    _view: memoryview
    _shape: tuple[int, ...]
    _dtype: DType
    _owner: object
    _address: int

    def __init__(self, buffer: Any, shape: Sequence[int] | int, dtype: Any) -> None:
        info = dtype_info(dtype)
        dims = _validate_shape(shape)
        try:
            source = memoryview(buffer)
        except TypeError:
            raise TypeError(f"Tensor() needs a buffer-protocol object, got {type(buffer).__name__}") from None
        if not source.c_contiguous:
            raise ValueError("Tensor() needs a C-contiguous buffer")
        expected = math.prod(dims) * info.itemsize
        if source.nbytes != expected:
            raise ValueError(
                f"tensor byte length mismatch: shape {list(dims)} of {info.name} needs "
                f"{expected} bytes, got {source.nbytes}"
            )
        view, address, owner = _allocate(expected)
        if expected:
            view[:] = source.cast("B")
        self._init(view.toreadonly(), dims, info, owner, address)

    def _init(
        self, view: memoryview, shape: tuple[int, ...], dtype: DType, owner: object, address: int
    ) -> None:
        self._view = view
        self._shape = shape
        self._dtype = dtype
        self._owner = owner
        self._address = address

    # -- constructors -------------------------------------------------------

    @classmethod
    def _empty(cls, shape: Sequence[int], dtype: Any) -> tuple[Tensor, memoryview]:
        """A zeroed tensor plus a writable view to fill before anyone sees it."""
        info = dtype_info(dtype)
        dims = _validate_shape(shape)
        view, address, owner = _allocate(math.prod(dims) * info.itemsize)
        return cls._from_parts(view.toreadonly(), dims, info, owner, address), view

    @classmethod
    def zeros(cls, shape: Sequence[int] | int, dtype: Any = "float32") -> Tensor:
        """A tensor of zeros.

        Raises:
            ValueError: the dtype is unsupported or a dimension is negative.
        """
        return cls._empty(_validate_shape(shape), dtype)[0]

    @classmethod
    def wrap(
        cls,
        buffer: Any,
        shape: Sequence[int] | int,
        dtype: Any,
        *,
        owner: object = None,
        address: int | None = None,
    ) -> Tensor:
        """Wrap existing memory without copying it.

        The tensor keeps ``buffer`` (and ``owner``, if given) alive for as long
        as it, or any view or DLPack capsule made from it, lives. The caller
        promises that nobody writes to the memory during that time: a Tensor
        is immutable, and JAX assumes imported buffers never change.

        Args:
            buffer: a C-contiguous buffer-protocol object with exactly
                ``prod(shape) * itemsize`` bytes.
            shape: the dimensions.
            dtype: the element type.
            owner: an extra object to keep alive (a lease, say).
            address: the buffer's address, if the caller knows it already.

        Raises:
            ValueError: unsupported dtype, non-contiguous buffer, or a byte
                length that does not match.
        """
        info = dtype_info(dtype)
        dims = _validate_shape(shape)
        view = memoryview(buffer)
        if not view.c_contiguous:
            raise ValueError("Tensor.wrap() needs a C-contiguous buffer")
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        expected = math.prod(dims) * info.itemsize
        if view.nbytes != expected:
            raise ValueError(
                f"tensor byte length mismatch: shape {list(dims)} of {info.name} needs "
                f"{expected} bytes, got {view.nbytes}"
            )
        if address is None:
            address = _dlpack.buffer_address(view) if expected else 0
        keep = owner if owner is not None else buffer
        return cls._from_parts(view.toreadonly(), dims, info, keep, address)

    @classmethod
    def from_dlpack(cls, obj: Any) -> Tensor:
        """Import a DLPack tensor (or a raw DLPack capsule) by copying it.

        A capsule is consumed: importing it a second time raises. Strided
        sources are copied into C order.

        Raises:
            BufferError: a consumed capsule, non-CPU memory, or an unsupported dtype.
            TypeError: ``obj`` is neither a capsule nor a ``__dlpack__`` producer.
        """
        if hasattr(obj, "__dlpack__"):
            device = obj.__dlpack_device__() if hasattr(obj, "__dlpack_device__") else None
            if device is not None and int(device[0]) not in (_dlpack.KDL_CPU, _dlpack.KDL_CUDA_HOST):
                raise BufferError(
                    f"cannot import a tensor on DLPack device {tuple(device)}; move it to the CPU first"
                )
            try:
                capsule = obj.__dlpack__(max_version=(1, 0))
            except TypeError:
                # A producer older than DLPack 1.0 does not know max_version.
                capsule = obj.__dlpack__()
        elif type(obj).__name__ == "PyCapsule":
            capsule = obj
        else:
            raise TypeError(
                f"from_dlpack() needs an object with __dlpack__ or a DLPack capsule, got {type(obj).__name__}"
            )
        imported = _dlpack.import_capsule(capsule)
        try:
            tensor, target = cls._empty(imported.shape, imported.dtype)
            nbytes = tensor.nbytes
            if nbytes:
                dst = _dlpack.buffer_address(target)
                if imported.strides is None:
                    ctypes.memmove(dst, imported.address, nbytes)
                else:
                    _dlpack.strided_copy(
                        dst,
                        imported.address,
                        imported.shape,
                        imported.strides,
                        imported.dtype.itemsize,
                    )
            return tensor
        finally:
            imported.release()

    # -- attributes ---------------------------------------------------------

    @property
    def shape(self) -> Shape:
        """The dimensions: a tuple that also equals the list of the same ints."""
        # Kept as a plain tuple inside: numpy takes exact tuples on a fast path.
        return Shape(self._shape)

    @property
    def ndim(self) -> int:
        """The number of dimensions."""
        return len(self._shape)

    @property
    def size(self) -> int:
        """The number of elements."""
        return math.prod(self._shape)

    @property
    def nbytes(self) -> int:
        """The number of bytes of data."""
        return self._view.nbytes

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return self._dtype.itemsize

    @property
    def strides(self) -> tuple[int, ...]:
        """C-order strides in bytes."""
        return _c_strides(self._shape, self._dtype.itemsize)

    @property
    def dtype(self) -> str:
        """The element type's canonical name, such as "float32"."""
        return self._dtype.name

    @property
    def device(self) -> str:
        """Always "cpu"."""
        return "cpu"

    @property
    def address(self) -> int:
        """The address of the first byte (for zero-copy checks and debugging)."""
        return self._address

    @property
    def buffer(self) -> memoryview:
        """A read-only memoryview of the data, shaped and typed like the tensor.

        The same as ``memoryview(tensor)``: struct formats ``? b B h H i I q Q
        e f d`` (float16 is "e"; before Python 3.12 ``memoryview`` itself
        cannot index or ``tolist()`` "e", numpy reads it). bfloat16 has no
        format, so its view holds raw 16-bit words (format "H"); reinterpret
        them with ml_dtypes' bfloat16. The view keeps the tensor, and any
        lease on its memory, alive until it is released.
        """
        if self._dtype.struct_format is None and self._dtype.name == "bfloat16":
            if self.size == 0:
                return self._view
            words: Any = self._view  # memoryview.cast's stubs only take literal formats
            return words.cast("H", self._shape)  # type: ignore[no-any-return]
        return memoryview(self)

    @property
    def __array_interface__(self) -> dict[str, Any]:
        """Numpy's array interface: ``numpy.asarray(t)`` is a read-only, zero-copy view."""
        return {
            "version": 3,
            "shape": self._shape,
            "typestr": self._dtype.typestr,
            "data": (self._address, True),
            "strides": None,
        }

    def is_contiguous(self) -> bool:
        """Always True: tensors are C-contiguous."""
        return True

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d tensor")
        return self._shape[0]

    def __getitem__(self, index: int) -> Any:
        """Index the first axis: a Python scalar for a 1-d tensor, else a sub-tensor.

        Only integers (negative ones count from the end) are accepted; for
        slices and fancy indexing, convert with ``rlmesh.numpy.asarray``. A
        sub-tensor shares this tensor's memory.

        Raises:
            TypeError: a 0-d tensor, or an index that is not an integer.
            IndexError: the index is out of range.
        """
        if not self._shape:
            raise TypeError("a 0-d tensor cannot be indexed; use item()")
        if isinstance(index, bool) or not hasattr(index, "__index__"):
            raise TypeError(f"tensor indices must be integers, got {type(index).__name__}")
        i = index.__index__()
        length = self._shape[0]
        if i < 0:
            i += length
        if not 0 <= i < length:
            raise IndexError(f"index {index} is out of range for a first axis of {length}")
        inner = self._shape[1:]
        if not inner:
            return self._element(i)
        step = math.prod(inner) * self._dtype.itemsize
        view = self._view[i * step : (i + 1) * step]
        return Tensor._from_parts(view, inner, self._dtype, self._owner, self._address + i * step)

    def __iter__(self) -> Iterator[Any]:
        """Iterate the first axis, as :meth:`__getitem__` indexes it.

        Raises:
            TypeError: a 0-d tensor.
        """
        if not self._shape:
            raise TypeError("iteration over a 0-d tensor")
        if len(self._shape) == 1:
            return iter(self._flat_values())
        return (self[i] for i in range(self._shape[0]))

    def _element(self, i: int) -> Any:
        itemsize = self._dtype.itemsize
        return Tensor._from_parts(
            self._view[i * itemsize : (i + 1) * itemsize],
            (),
            self._dtype,
            self._owner,
            self._address + i * itemsize,
        ).item()

    # -- transformations ----------------------------------------------------

    def reshape(self, *shape: int | Sequence[int]) -> Tensor:
        """Return a tensor with the same data and a new shape, without copying.

        One dimension may be -1; it is inferred.

        Raises:
            ValueError: more than one -1, or the sizes do not match.
        """
        dims_in: Sequence[Any] = shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape
        dims = [int(d) for d in dims_in]
        if dims.count(-1) > 1:
            raise ValueError("reshape accepts at most one -1")
        if -1 in dims:
            known = math.prod(d for d in dims if d != -1)
            if known == 0 or self.size % known:
                raise ValueError(f"cannot reshape a tensor of size {self.size} into {tuple(dims)}")
            dims[dims.index(-1)] = self.size // known
        new_shape = _validate_shape(dims)
        if math.prod(new_shape) != self.size:
            raise ValueError(f"cannot reshape a tensor of size {self.size} into {new_shape}")
        return Tensor._from_parts(self._view, new_shape, self._dtype, self._owner, self._address)

    def copy(self) -> Tensor:
        """Return a tensor with its own freshly allocated copy of the data."""
        tensor, target = Tensor._empty(self._shape, self._dtype)
        if self.nbytes:
            target[:] = self._view
        return tensor

    def tobytes(self) -> bytes:
        """The data as bytes, little-endian, C order."""
        return self._view.tobytes()

    def tolist(self) -> Any:
        """The data as (nested) Python lists of bool, int or float."""
        flat = self._flat_values()
        if not self._shape:
            return flat[0]

        def nest(values: list[Any], dims: tuple[int, ...]) -> list[Any]:
            if len(dims) == 1:
                return values
            step = len(values) // dims[0] if dims[0] else 0
            return [nest(values[i * step : (i + 1) * step], dims[1:]) for i in range(dims[0])]

        return nest(flat, self._shape)

    def item(self) -> Any:
        """The single element of a size-1 tensor as a Python scalar.

        Raises:
            ValueError: the tensor does not hold exactly one element.
        """
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, this one has {self.size}")
        return self._flat_values()[0]

    def _flat_values(self) -> list[Any]:
        name = self._dtype.name
        if name == "float16":
            return [v[0] for v in struct.iter_unpack("<e", self._view)]
        if name == "bfloat16":
            words = self._view.cast("H").tolist() if self.nbytes else []
            return [struct.unpack("<f", struct.pack("<I", w << 16))[0] for w in words]
        if self.nbytes == 0:
            return []
        typed: Any = self._view
        return typed.cast(self._dtype.view_format).tolist()  # type: ignore[no-any-return]

    # -- DLPack ---------------------------------------------------------------

    def __dlpack__(
        self,
        *,
        stream: Any = None,
        max_version: tuple[int, int] | None = None,
        dl_device: tuple[int, int] | None = None,
        copy: bool | None = None,
    ) -> Any:
        """Export the tensor as a DLPack capsule.

        By default the capsule is a legacy ``dltensor`` one. A consumer that
        asks for ``max_version >= (1, 0)`` gets a ``dltensor_versioned`` capsule,
        flagged read-only unless ``copy=True`` asked for a fresh copy, which the
        consumer then owns (DLPack 1.0). The capsule keeps the tensor's memory
        (and any lease on it) alive until the consumer's deleter runs.

        Raises:
            BufferError: a stream was requested (CPU memory has none), or a
                device other than the CPU.
        """
        if stream is not None:
            raise BufferError("rlmesh tensors live in CPU memory and take no stream")
        if dl_device is not None and tuple(dl_device) != _dlpack.CPU_DEVICE:
            raise BufferError(f"rlmesh tensors live on the CPU, not DLPack device {tuple(dl_device)}")
        source = self.copy() if copy else self
        versioned = max_version is not None and tuple(max_version)[0] >= 1
        return _dlpack.export(
            address=source._address,
            shape=source._shape,
            dtype=source._dtype,
            owner=source,
            versioned=versioned,
            read_only=not copy,
            copied=bool(copy),
        )

    def __dlpack_device__(self) -> tuple[int, int]:
        """``(kDLCPU, 0)``."""
        return _dlpack.CPU_DEVICE

    # -- misc -----------------------------------------------------------------

    def __repr__(self) -> str:
        if self.size <= 8:
            data = self.tolist()
            return f"Tensor({data!r}, shape={list(self._shape)}, dtype={self.dtype!r})"
        return f"Tensor(shape={list(self._shape)}, dtype={self.dtype!r})"

    def __reduce__(self) -> Any:
        # Pickling a tensor (not on any wire: for multiprocessing users) copies it.
        return (Tensor, (self.tobytes(), self._shape, self._dtype.name))
