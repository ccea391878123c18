"""``Slab``: blocks sub-allocated from a few large segments.

Every block starts on an ALIGNMENT (64-byte) boundary. The slab grows by
adding segments, never one segment per block: one session uses a handful of
segments whatever it sends.

Allocation is first fit over a sorted free list per segment, with coalescing
on free. Each allocation gets a fresh *generation*, so a handle to a block
that was freed and handed out again is recognisably stale.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from typing import Any

from .._lifecycle import Lifecycle, State
from ..errors import InvalidHandle, ShmCapacityError
from ._layout import ALIGNMENT, SEGMENT_HEADER, SegmentKind, align_up
from .handle import Handle
from .segment import Segment, close_all_when_unpinned

__all__ = ["Block", "Slab"]

DEFAULT_SEGMENT_SIZE = 16 << 20


def _release_slab(segments: dict[int, Segment], live: dict[tuple[int, int], Block]) -> None:
    # The finalizer of a slab never closed: the slab's own tables, never the slab.
    for block in live.values():
        block.view.release()
    live.clear()
    close_all_when_unpinned(segments)


class Block:
    """An allocated block: where it is and which allocation it belongs to.

    Attributes:
        segment: the slab's id for the segment.
        offset: byte offset in the segment (a multiple of ALIGNMENT).
        capacity: bytes reserved (a multiple of ALIGNMENT).
        nbytes: bytes in use, <= capacity.
        generation: this allocation's number.
        address: the first byte's address in this process.
    """

    __slots__ = ("segment", "offset", "capacity", "nbytes", "generation", "address", "view")

    def __init__(
        self, segment: int, offset: int, capacity: int, generation: int, address: int, view: memoryview
    ) -> None:
        self.segment = segment
        self.offset = offset
        self.capacity = capacity
        self.nbytes = capacity
        self.generation = generation
        self.address = address
        #: A writable view of the whole block (capacity bytes), made once.
        self.view = view

    @property
    def handle(self) -> Handle:
        """The handle a peer uses to name this block (with the current nbytes)."""
        return Handle(self.segment, self.generation, self.offset, self.nbytes)

    def __repr__(self) -> str:
        return (
            f"<Block seg={self.segment} off={self.offset} nbytes={self.nbytes}/{self.capacity} "
            f"gen={self.generation}>"
        )


class _FreeList:
    """Free extents of one segment, sorted by offset."""

    __slots__ = ("offsets", "sizes")

    def __init__(self, start: int, size: int) -> None:
        self.offsets = [start]
        self.sizes = [size]

    def take(self, size: int) -> int | None:
        for i, free in enumerate(self.sizes):
            if free >= size:
                offset = self.offsets[i]
                if free == size:
                    del self.offsets[i], self.sizes[i]
                else:
                    self.offsets[i] += size
                    self.sizes[i] -= size
                return offset
        return None

    def give(self, offset: int, size: int) -> None:
        i = bisect.bisect_left(self.offsets, offset)
        # Merge with the following extent, then with the preceding one.
        if i < len(self.offsets) and offset + size == self.offsets[i]:
            size += self.sizes[i]
            del self.offsets[i], self.sizes[i]
        if i > 0 and self.offsets[i - 1] + self.sizes[i - 1] == offset:
            self.sizes[i - 1] += size
            return
        self.offsets.insert(i, offset)
        self.sizes.insert(i, size)

    def free_bytes(self) -> int:
        return sum(self.sizes)


class Slab:
    """An allocator of aligned blocks over a few shared-memory segments.

    Args:
        segment_size: bytes of each new segment (a block larger than this gets
            a segment of its own, sized to fit).
        max_bytes: a cap on the total size of all segments (None: no cap
            beyond what /dev/shm holds).
        kind: the kind recorded in each segment's header.
        memfd: make each segment a sealed memfd (:meth:`Segment.create_memfd`,
            passed to peers as descriptors over a Unix socket) instead of a
            named POSIX segment.

    Lifetime:
        The slab creates its segments and owns them; :meth:`close` unlinks
        and unmaps them all. It is safe to call twice. Blocks are invalid
        after close, and :meth:`alloc` raises ClosedError. A slab never
        closed releases its segments when garbage collected, with a
        ``ResourceWarning`` (:mod:`rlmesh._lifecycle`).

    Thread safety:
        ``alloc``, ``free`` and ``resolve`` may be called from several threads.
    """

    def __init__(
        self,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        max_bytes: int | None = None,
        kind: SegmentKind = SegmentKind.SLAB,
        memfd: bool = False,
    ) -> None:
        if segment_size < ALIGNMENT:
            raise ValueError(f"segment_size must be >= {ALIGNMENT}")
        self._segment_size = align_up(segment_size, 4096)
        self._max_bytes = max_bytes
        self._kind = kind
        self.memfd = memfd
        self._segments: dict[int, Segment] = {}
        self._free: dict[int, _FreeList] = {}
        self._live: dict[tuple[int, int], Block] = {}
        self._new: list[int] = []
        self._next_id = 1
        self._generations = itertools.count(1)
        self._lock = threading.Lock()
        self._life = Lifecycle("the slab")
        self._life.watch(self, _release_slab, self._segments, self._live)

    # -- introspection ---------------------------------------------------------

    @property
    def segments(self) -> dict[int, Segment]:
        """Segment id -> segment (a copy)."""
        return dict(self._segments)

    @property
    def total_bytes(self) -> int:
        """Bytes of all segments together."""
        return sum(s.size for s in self._segments.values())

    @property
    def live_blocks(self) -> int:
        """Blocks allocated and not freed."""
        return len(self._live)

    @property
    def state(self) -> State:
        """OPEN; CLOSING from a close that found views alive; CLOSED."""
        return self._life.state

    @property
    def closed(self) -> bool:
        """True once closing began."""
        return self._life.closed

    @property
    def has_new_segments(self) -> bool:
        """True if :meth:`take_new_segments` has something to report (no lock taken)."""
        return bool(self._new)

    def take_new_segments(self) -> list[tuple[int, str, int]]:
        """Segments added since the last call, as ``(id, name, size)``, to announce to peers."""
        with self._lock:
            new, self._new = self._new, []
        segments = self._segments
        return [(i, segments[i].name, segments[i].size) for i in new if i in segments]

    # -- allocation ------------------------------------------------------------

    def alloc(self, nbytes: int) -> Block:
        """Allocate a block of at least ``nbytes`` bytes, 64-byte aligned.

        Raises:
            ValueError: ``nbytes`` is negative.
            ShmCapacityError: /dev/shm is full, or ``max_bytes`` would be exceeded.
            ClosedError: the slab is closed.
        """
        if nbytes < 0:
            raise ValueError(f"cannot allocate {nbytes} bytes")
        capacity = align_up(max(nbytes, 1))
        with self._lock:
            self._life.check_open()
            for seg_id, free in self._free.items():
                offset = free.take(capacity)
                if offset is not None:
                    return self._record(seg_id, offset, capacity, nbytes)
            seg_id = self._grow(capacity)
            offset = self._free[seg_id].take(capacity)
            assert offset is not None
            return self._record(seg_id, offset, capacity, nbytes)

    def _record(self, seg_id: int, offset: int, capacity: int, nbytes: int) -> Block:
        segment = self._segments[seg_id]
        view = segment.buf[offset : offset + capacity]
        block = Block(seg_id, offset, capacity, next(self._generations), segment.address + offset, view)
        block.nbytes = nbytes
        self._live[(seg_id, offset)] = block
        return block

    def _grow(self, capacity: int) -> int:
        size = max(self._segment_size, align_up(SEGMENT_HEADER + capacity, 4096))
        if self._max_bytes is not None and self.total_bytes + size > self._max_bytes:
            raise ShmCapacityError(
                f"this slab may use at most {self._max_bytes:,} bytes of shared memory; "
                f"{self.total_bytes:,} are in use and a block of {capacity:,} more does not fit",
                needed=size,
                available=max(self._max_bytes - self.total_bytes, 0),
            )
        segment = Segment.create_memfd(size, self._kind) if self.memfd else Segment.create(size, self._kind)
        seg_id = self._next_id
        self._next_id += 1
        self._segments[seg_id] = segment
        self._free[seg_id] = _FreeList(SEGMENT_HEADER, size - SEGMENT_HEADER)
        self._new.append(seg_id)
        return seg_id

    def free(self, block: Block) -> None:
        """Return a block to the slab.

        Raises:
            InvalidHandle: the block is not live in this slab (freed twice,
                or from another slab).
        """
        with self._lock:
            if self._life.state is not State.OPEN:
                return  # close() took every block back
            live = self._live.get((block.segment, block.offset))
            if live is not block:
                raise InvalidHandle(f"{block!r} is not a live block of this slab")
            del self._live[(block.segment, block.offset)]
            block.view.release()
            self._free[block.segment].give(block.offset, block.capacity)

    def renew(self, block: Block) -> None:
        """Give a live block a fresh generation (before handing it out again).

        Handles to its previous use become stale.
        """
        # itertools.count's next() is atomic under the GIL: no lock on this per-step path.
        block.generation = next(self._generations)

    def resolve(self, handle: Handle) -> Block:
        """Return the live block a handle names, checking it against the table.

        Raises:
            InvalidHandle: unknown segment or block, a stale generation, or a
                length beyond the block (all checks overflow-safe).
        """
        block = self._live.get((handle.segment, handle.offset))
        if block is None:
            if handle.segment not in self._segments:
                raise InvalidHandle(f"handle names unknown segment id {handle.segment}")
            raise InvalidHandle(f"handle names no live block at offset {handle.offset}")
        if block.generation != handle.generation:
            raise InvalidHandle(
                f"stale handle: generation {handle.generation}, the block is at {block.generation}"
            )
        if handle.nbytes < 0 or handle.nbytes > block.capacity:
            raise InvalidHandle(f"handle length {handle.nbytes} exceeds the block's {block.capacity} bytes")
        return block

    def view(self, block: Block, nbytes: int | None = None) -> memoryview:
        """A writable view of a block (first ``nbytes`` bytes; default its nbytes).

        Release it (or drop it) before :meth:`close`.
        """
        size = block.nbytes if nbytes is None else nbytes
        if size > block.capacity:
            raise ValueError(f"{size} bytes do not fit a block of {block.capacity}")
        return block.view[:size]

    # -- closing ---------------------------------------------------------------

    def close(self) -> None:
        """Unlink and unmap every segment. Idempotent.

        Raises:
            BusyError: views of a segment are still alive; segments that could
                be closed are closed, the others stay until :meth:`close` is
                called again (the slab stays CLOSING until then).
        """
        with self._lock:
            # Not begin_close()'s one winner: a close that met live views is
            # retried by the next one (the lock orders them).
            if self._life.state is State.CLOSED:
                return
            self._life.begin_close()
            for block in self._live.values():
                block.view.release()
            self._live.clear()
            errors = []
            for seg_id, segment in list(self._segments.items()):
                try:
                    segment.close()
                except Exception as exc:  # BusyError: keep it for a later close
                    errors.append(exc)
                    continue
                del self._segments[seg_id]
                self._free.pop(seg_id, None)
            if not errors:
                self._life.forget()
                self._life.finish_close()
        if errors:
            raise errors[0]

    def __enter__(self) -> Slab:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self._life.state.name.lower() if self._life.closed else f"live={len(self._live)}"
        return f"<Slab segments={len(self._segments)} bytes={self.total_bytes} {state}>"
