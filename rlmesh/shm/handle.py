"""Handles: capabilities naming a block of an owner's slab.

A handle is ``(segment, generation, offset, nbytes)``: small integers that only
mean something to the owner's table (:meth:`rlmesh.shm.Slab.resolve`) or to a
peer's table of segments the owner announced (:class:`rlmesh.shm.PeerMemory`).
A handle never carries a segment name, so a peer cannot make anyone open an
arbitrary segment, and a forged or stale handle is rejected, never mapped.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import InvalidHandle

__all__ = ["MAX_FIELD", "Handle"]

#: Every field must be a non-negative int below this (fits an int64).
MAX_FIELD = 1 << 63


class Handle(NamedTuple):
    """A reference to ``nbytes`` bytes at ``offset`` of segment ``segment``.

    Attributes:
        segment: the owner's id for the segment (not its name).
        generation: the block's allocation number; a reused block gets a new one.
        offset: byte offset of the block in the segment.
        nbytes: bytes of data in the block.
    """

    segment: int
    generation: int
    offset: int
    nbytes: int

    def encode(self) -> list[int]:
        """The msgpack-able form: a list of four ints."""
        return [self.segment, self.generation, self.offset, self.nbytes]

    @classmethod
    def decode(cls, obj: Any) -> Handle:
        """Rebuild a handle from its encoded form, checking every field.

        Raises:
            InvalidHandle: not four non-negative ints below 2**63.
        """
        if not isinstance(obj, (list, tuple)) or len(obj) != 4:
            raise InvalidHandle(f"a handle is four integers, got {obj!r}"[:200])
        for value in obj:
            if type(value) is not int or not 0 <= value < MAX_FIELD:
                raise InvalidHandle(f"handle fields must be ints in [0, 2**63), got {obj!r}"[:200])
        return cls(obj[0], obj[1], obj[2], obj[3])
