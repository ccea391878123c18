"""Length-prefixed frames with an aligned binary tail.

A frame carries one message: a small *head* (msgpack, built by the caller)
and an optional *tail* of raw bytes (inline tensor data)::

    offset        size      field
    0             4         body length L (u32, little-endian), checked against
                            the receiver's limit before anything is allocated
    4             4         head length H (u32)
    8             H         head
    8 + H         pad       zeros up to the next 64-byte boundary of the body
    T             L - T     tail (T = align64(4 + H) relative to the body)

The receiver reads the body into 64-byte-aligned memory, so the tail, and
every tensor the sender placed at a 64-byte offset inside it, is aligned and
can be wrapped without a copy (XLA:CPU aliases only 64-byte-aligned buffers).
"""

from __future__ import annotations

import ctypes
import struct

from ..errors import FramingError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "FRAME_ALIGN",
    "PREFIX",
    "aligned_buffer",
    "body_layout",
    "check_body_length",
    "split_body",
    "tail_offset",
]

#: The default limit on a frame's body (256 MiB, as the published package).
DEFAULT_MAX_FRAME = 256 << 20

#: Tail and tensor alignment inside a frame.
FRAME_ALIGN = 64

PREFIX = struct.Struct("<I")
_HEAD_LEN = struct.Struct("<I")
_U32_MAX = 0xFFFFFFFF


def tail_offset(head_len: int) -> int:
    """Offset of the tail inside the body for a head of ``head_len`` bytes."""
    return (4 + head_len + FRAME_ALIGN - 1) & ~(FRAME_ALIGN - 1)


def body_layout(head_len: int, tail_len: int) -> tuple[int, int]:
    """Return ``(body_length, padding)`` for a head and a tail.

    Raises:
        FramingError: the body would not fit a u32 length.
    """
    if tail_len:
        start = tail_offset(head_len)
        body = start + tail_len
        padding = start - 4 - head_len
    else:
        body = 4 + head_len
        padding = 0
    if body > _U32_MAX:
        raise FramingError(f"a {body:,}-byte frame does not fit the 4 GiB frame format")
    return body, padding


def check_body_length(length: int, limit: int) -> None:
    """Reject a body length before anything is allocated for it.

    Raises:
        FramingError: the length is below the minimum or above ``limit``.
    """
    if length < 4:
        raise FramingError(f"frame body of {length} bytes is shorter than its own header")
    if length > limit:
        raise FramingError(
            f"frame of {length:,} bytes exceeds the limit of {limit:,} bytes "
            "(raise max_message_bytes on both sides if this is expected)"
        )


def split_body(body: memoryview) -> tuple[memoryview, memoryview]:
    """Split a received body into ``(head, tail)`` views.

    Raises:
        FramingError: the head length points outside the body.
    """
    (head_len,) = _HEAD_LEN.unpack_from(body, 0)
    if head_len > len(body) - 4:
        raise FramingError(f"frame head of {head_len} bytes overruns a {len(body)}-byte body")
    head = body[4 : 4 + head_len]
    if len(body) > 4 + head_len:
        start = tail_offset(head_len)
        if start > len(body):
            raise FramingError("frame tail starts past the end of the body")
        return head, body[start:]
    return head, body[len(body) :]


def aligned_buffer(nbytes: int) -> tuple[memoryview, int]:
    """A writable, zeroed, 64-byte-aligned buffer of ``nbytes`` bytes, and its address."""
    raw = bytearray(nbytes + FRAME_ALIGN)
    base = ctypes.addressof(ctypes.c_char.from_buffer(raw))
    offset = -base % FRAME_ALIGN
    return memoryview(raw)[offset : offset + nbytes], base + offset
