"""The wire codec: value trees to msgpack and back, tensors inline or in shm.

A message is a msgpack *head* plus a binary *tail* (see ``net/framing``).
Tensors never pass through msgpack as data; the head holds an ext record:

* ``EXT_INLINE`` (1): the tensor's bytes are in the tail at a 64-byte offset::

      u8 dtype code, u8 ndim, u16 reserved, u64 tail offset, ndim x u64 dims

* ``EXT_HANDLE`` (2): the tensor lives in a block of the sender's slab::

      u8 dtype code, u8 ndim, u16 reserved, u32 segment, u64 generation,
      u64 offset, ndim x u64 dims

The byte count is never sent: it is ``prod(dims) * itemsize``, computed and
checked against the tail or the segment before anything is touched. Dims,
rank and sizes are bounded, so a forged record cannot make the receiver
allocate or map anything it should not.

Tuples travel as msgpack arrays; receivers restore them from the space
(:func:`restructure`).
"""

from __future__ import annotations

import struct
import threading
from typing import Any

import msgpack

from .._dtypes import DTYPES, DType
from ..errors import DecodeError, InvalidHandle
from ..net.framing import FRAME_ALIGN
from ..shm import Handle, PeerMemory
from ..tensor import Tensor

__all__ = [
    "EXT_HANDLE",
    "EXT_INLINE",
    "DTYPE_BY_CODE",
    "MAX_DIMS",
    "TailBuilder",
    "decode",
    "handle_record",
    "inline_ext",
    "pack",
]

EXT_INLINE = 1
EXT_HANDLE = 2

#: The dtype codes on the wire: a fixed order, never reordered.
_WIRE_ORDER = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
)
DTYPE_BY_CODE: tuple[DType, ...] = tuple(DTYPES[name] for name in _WIRE_ORDER)
CODE_BY_NAME = {name: code for code, name in enumerate(_WIRE_ORDER)}

#: Largest rank a tensor on the wire may have.
MAX_DIMS = 32
#: Largest element count a tensor on the wire may have (2**40: a terabyte of
#: bytes; the frame or segment limit bites long before).
MAX_ELEMENTS = 1 << 40

_INLINE = struct.Struct("<BBxxQ")
_HANDLE = struct.Struct("<BBxxIQQ")
_DIMS = [struct.Struct(f"<{n}Q") for n in range(MAX_DIMS + 1)]


# ExtType's constructor checks its arguments in Python (most of a record's cost);
# the per-step records are built from checked ints and bytes, so they skip it.
_new_ext = tuple.__new__


def inline_ext(dtype_code: int, shape: tuple[int, ...], offset: int) -> msgpack.ExtType:
    """The ext record of a tensor whose bytes sit at ``offset`` in the tail."""
    data = _INLINE.pack(dtype_code, len(shape), offset) + _DIMS[len(shape)].pack(*shape)
    return _new_ext(msgpack.ExtType, (EXT_INLINE, data))


#: The whole EXT_HANDLE record of each rank, one struct (one pack call per tensor).
_HANDLE_RECORD = [struct.Struct(f"<BBxxIQQ{n}Q") for n in range(MAX_DIMS + 1)]


def handle_record(
    dtype_code: int, shape: tuple[int, ...], segment: int, generation: int, offset: int
) -> msgpack.ExtType:
    """The ext record of a tensor in a slab block (built without a Handle: the per-step path)."""
    data = _HANDLE_RECORD[len(shape)].pack(dtype_code, len(shape), segment, generation, offset, *shape)
    return _new_ext(msgpack.ExtType, (EXT_HANDLE, data))


class TailBuilder:
    """Collects tensor bytes for a frame tail, each at a 64-byte offset.

    Buffers are kept by reference (no copy): the frame is sent with
    scatter-gather I/O straight from them.
    """

    __slots__ = ("parts", "size")

    _PAD = bytes(FRAME_ALIGN)

    def __init__(self) -> None:
        self.parts: list[Any] = []
        self.size = 0

    def add(self, buffer: Any, nbytes: int) -> int:
        """Append ``nbytes`` bytes from ``buffer``; return their tail offset."""
        pad = -self.size % FRAME_ALIGN
        if pad:
            self.parts.append(self._PAD[:pad])
            self.size += pad
        offset = self.size
        if nbytes:
            self.parts.append(buffer)
            self.size += nbytes
        return offset

    def add_tensor(self, tensor: Tensor) -> msgpack.ExtType:
        """Append a tensor's bytes and return its inline ext record."""
        offset = self.add(tensor._view, tensor.nbytes)
        return inline_ext(CODE_BY_NAME[tensor._dtype.name], tensor._shape, offset)


class _Packers(threading.local):
    """One reusable msgpack Packer per thread.

    ``msgpack.packb`` builds a Packer on every call, which costs several
    times the encoding of a step message; a Packer cannot be shared between
    threads (sessions each run on their own), so each thread keeps one. Its
    ``default`` hook finds the tail of the message being packed here.
    """

    def __init__(self) -> None:
        self.tail: TailBuilder | None = None
        self.packer = msgpack.Packer(use_bin_type=True, default=self.default, autoreset=True)

    def default(self, value: Any) -> Any:
        tail = self.tail
        if tail is not None and isinstance(value, Tensor):
            return tail.add_tensor(value)
        if isinstance(value, Tensor):
            raise TypeError("cannot send a Tensor without a tail to put it in")
        raise TypeError(f"cannot send {type(value).__name__} over the wire")


_PACKERS = _Packers()


def pack(obj: Any, tail: TailBuilder | None = None) -> bytes:
    """Encode a head with msgpack. Tensors left in ``obj`` go inline into ``tail``.

    Raises:
        TypeError: ``obj`` holds something msgpack cannot encode, or a Tensor
            and no tail to put it in.
    """
    packers = _PACKERS
    packer = packers.packer
    if tail is None:
        return packer.pack(obj)  # type: ignore[no-any-return]
    packers.tail = tail
    try:
        return packer.pack(obj)  # type: ignore[no-any-return]
    finally:
        packers.tail = None


def _dims(data: bytes, start: int, ndim: int) -> tuple[tuple[int, ...], int]:
    if ndim > MAX_DIMS:
        raise DecodeError(f"tensor rank {ndim} exceeds {MAX_DIMS}")
    layout = _DIMS[ndim]
    if len(data) != start + layout.size:
        raise DecodeError("malformed tensor record")
    shape = layout.unpack_from(data, start)
    count = 1
    for dim in shape:
        if dim > MAX_ELEMENTS:
            raise DecodeError(f"tensor dimension {dim} is too large")
        count *= dim
        if count > MAX_ELEMENTS:
            raise DecodeError("tensor has too many elements")
    return shape, count


#: Checked (dtype, shape, byte count) of handle records, by their dtype, rank and dims bytes.
_SHAPES: dict[bytes, tuple[DType, tuple[int, ...], int]] = {}
_SHAPES_KEPT = 1024
_HANDLE_FIELDS = struct.Struct("<IQQ")  # segment, generation, offset (after dtype, rank, reserved)


def _dtype(code: int) -> DType:
    if code >= len(DTYPE_BY_CODE):
        raise DecodeError(f"unknown tensor dtype code {code}")
    return DTYPE_BY_CODE[code]


def decode(
    head: Any,
    *,
    tail: memoryview | None = None,
    tail_address: int = 0,
    peer: PeerMemory | None = None,
    copy_inline: bool = False,
) -> Any:
    """Decode a head, rebuilding tensors from the tail or from shared memory.

    Args:
        head: the msgpack bytes.
        tail: the frame tail inline tensors point into.
        tail_address: the tail's address (for zero-copy inline tensors).
        peer: the table of the sender's segments, for handle tensors.
        copy_inline: copy inline tensors instead of wrapping the tail (for a
            tail that is about to be reused, such as a ring message).

    Raises:
        DecodeError: malformed msgpack, an unknown ext type, a bad tensor record.
        InvalidHandle: a handle tensor naming memory the peer table rejects.
    """

    def ext_hook(code: int, data: bytes) -> Any:
        if code == EXT_INLINE:
            if len(data) < _INLINE.size:
                raise DecodeError("malformed inline tensor record")
            dcode, ndim, offset = _INLINE.unpack_from(data, 0)
            dtype = _dtype(dcode)
            shape, count = _dims(data, _INLINE.size, ndim)
            nbytes = count * dtype.itemsize
            if tail is None or offset % FRAME_ALIGN or offset > len(tail) or nbytes > len(tail) - offset:
                raise DecodeError("inline tensor points outside the message")
            view = tail[offset : offset + nbytes]
            if copy_inline:
                return Tensor(view, shape, dtype)
            return Tensor._from_parts(view.toreadonly(), shape, dtype, view, tail_address + offset)
        if code == EXT_HANDLE:
            if len(data) < _HANDLE.size:
                raise DecodeError("malformed handle tensor record")
            # The dtype, rank and dims of a session's observations repeat every
            # step: their checked reading is kept, keyed by those very bytes.
            key = data[:2] + data[_HANDLE.size :]
            known = _SHAPES.get(key)
            if known is None:
                dcode, ndim = data[0], data[1]
                dtype = _dtype(dcode)
                shape, count = _dims(data, _HANDLE.size, ndim)
                known = (dtype, shape, count * dtype.itemsize)
                if len(_SHAPES) < _SHAPES_KEPT:
                    _SHAPES[key] = known
            dtype, shape, nbytes = known
            if peer is None:
                raise InvalidHandle("received a shared-memory handle on a connection without shared memory")
            segment, generation, offset = _HANDLE_FIELDS.unpack_from(data, 4)
            view, lease, address = peer.lease(Handle(segment, generation, offset, nbytes))
            return Tensor._from_parts(view, shape, dtype, lease, address)
        raise DecodeError(f"unknown msgpack ext type {code}")

    try:
        return msgpack.unpackb(head, raw=False, ext_hook=ext_hook, strict_map_key=True, use_list=True)
    except (DecodeError, InvalidHandle):
        raise
    except Exception as exc:  # msgpack raises several unrelated classes
        raise DecodeError(f"malformed message: {exc}") from exc
