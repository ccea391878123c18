"""Layout constants of rlmesh's shared memory: names, headers, alignment.

Every segment starts with a 64-byte header, so that ``rlmesh shm ls`` can tell
what a segment is and who made it without trusting its name::

    offset  size  field
    0       8     magic b"RLMSEG01"
    8       4     layout version (LAYOUT_VERSION)
    12      4     kind (SegmentKind)
    16      8     total size in bytes, header included
    24      8     creator pid (in the creator's pid namespace)
    32      8     inode of the creator's pid namespace (/proc/self/ns/pid)
    40      8     creation time, ns since the epoch
    48      16    reserved, zero

The payload starts at SEGMENT_HEADER (64), so the first block of a slab is
aligned like every other block.
"""

from __future__ import annotations

import enum
import re
import struct

__all__ = [
    "ALIGNMENT",
    "CACHE_LINE",
    "HEADER",
    "LAYOUT_VERSION",
    "MAGIC",
    "NAME_PREFIX",
    "NAME_RE",
    "SEGMENT_HEADER",
    "SegmentKind",
    "align_up",
]

#: Every name rlmesh gives a segment starts with this. Short, because some
#: systems cap shm names at 31 characters (CPython keeps its own at <= 14).
NAME_PREFIX = "rlm-"

#: A valid rlmesh segment name: the prefix and 20 lowercase hex digits (80
#: random bits, so names cannot be guessed or squatted).
NAME_RE = re.compile(r"^/?rlm-[0-9a-f]{20}\Z")  # \Z: `$` would accept a trailing newline

#: Avoid false sharing between counters written by different processes.
CACHE_LINE = 64

#: Every block starts on this boundary: XLA:CPU aliases imported buffers only
#: when they are 64-byte aligned, and it is one cache line.
ALIGNMENT = 64

MAGIC = b"RLMSEG01"

#: Bumped whenever the header or a ring layout changes incompatibly.
LAYOUT_VERSION = 1

SEGMENT_HEADER = 64

HEADER = struct.Struct("<8sIIQqQQ16x")
assert HEADER.size == SEGMENT_HEADER


class SegmentKind(enum.IntEnum):
    """What a segment holds (stored in its header)."""

    #: A slab: tensor blocks handed out by an allocator.
    SLAB = 1
    #: A channel: two message rings and their doorbells.
    CHANNEL = 2
    #: A probe proving that a peer shares our /dev/shm.
    PROBE = 3
    #: Anything else (tests, benchmarks).
    OTHER = 9


def align_up(value: int, alignment: int = ALIGNMENT) -> int:
    """Round ``value`` up to a multiple of ``alignment`` (a power of two)."""
    return (value + alignment - 1) & ~(alignment - 1)
