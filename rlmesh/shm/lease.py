"""Leases: zero-copy views of a peer's blocks, and their release.

The owner of a slab hands a peer handles. The peer maps the owner's segments
(announced by the owner, checked by :class:`PeerMemory`) and turns each
handle into a read-only view. The view's memory belongs to a *lease*: it
stays valid, and the owner never reuses the block, while the view or anything
made from it (a Tensor, a numpy array, a JAX array, a DLPack capsule) is
alive. When the last of those dies the lease queues the handle; the peer
sends queued releases to the owner in batches (piggybacked on its next
request), so a release costs no message of its own.

How a view keeps its lease: the memoryview's exporter is a ctypes array over
the block that carries the lease as an attribute, so every derived view
(casts, slices, numpy arrays) keeps the lease alive through it. A weakref
callback on the lease queues the release. Each lease also pins its segment,
so the mapping outlives every view even after the peer closes.
"""

from __future__ import annotations

import collections
import os
import weakref
from typing import Any

from .._buffers import keepalive_view
from .._lifecycle import Lifecycle, State
from ..errors import InvalidHandle, ShmError
from ._layout import ALIGNMENT
from .handle import Handle
from .segment import Segment, close_all_when_unpinned

__all__ = ["Lease", "PeerMemory"]


def _detach_all(segments: dict[int, Segment]) -> None:
    # Close (or, while views are alive, defer closing) every attached segment;
    # the finalizer of a PeerMemory never closed runs it too, holding only the table.
    close_all_when_unpinned(segments)


class Lease:
    """A peer's hold on one block. Alive while any view of the block is."""

    __slots__ = ("handle", "segment", "memory", "__weakref__")

    def __init__(self, handle: Handle, segment: Segment, memory: PeerMemory) -> None:
        self.handle = handle
        self.segment = segment
        # The PeerMemory must outlive its leases: it runs their release callback.
        self.memory = memory

    def __repr__(self) -> str:
        return f"<Lease {self.handle}>"


class PeerMemory:
    """A peer's table of an owner's segments, and the leases it holds on them.

    Args:
        readonly: map announced segments read-only (the default: a peer only
            reads the owner's blocks).

    Lifetime:
        :meth:`close` detaches from every segment as soon as no view of it is
        alive; views the user still holds stay valid until they die. It is
        idempotent; after it, :meth:`add_segment`, :meth:`view` and
        :meth:`lease` raise ClosedError. Releases still queued at close are
        dropped: the owner reclaims every lease of a peer that goes away. A
        table never closed detaches when garbage collected, with a
        ``ResourceWarning``.

    Thread safety: views may die on any thread (a JAX deleter, the garbage
    collector); the release queue is a thread-safe deque.
    """

    def __init__(self, *, readonly: bool = True) -> None:
        self._readonly = readonly
        self._segments: dict[int, Segment] = {}
        self._refs: dict[weakref.ref[Lease], tuple[Handle, Segment]] = {}
        self._pending: collections.deque[Handle] = collections.deque()
        self._life = Lifecycle("the peer memory table")
        self._life.watch(self, _detach_all, self._segments)

    @property
    def state(self) -> State:
        """OPEN or CLOSED (see :mod:`rlmesh._lifecycle`)."""
        return self._life.state

    @property
    def segment_ids(self) -> list[int]:
        """Ids of the segments attached."""
        return list(self._segments)

    @property
    def outstanding(self) -> int:
        """Leases whose views are still alive."""
        return len(self._refs)

    def add_segment(self, segment_id: int, name: str, size: int) -> Segment:
        """Attach a segment the owner announced, under the owner's id for it.

        Raises:
            ShmError: the id is taken, or the segment fails the checks of
                :meth:`Segment.attach` (name, owner, mode, size).
            ClosedError: this table is closed.
        """
        self._life.check_open()
        if type(segment_id) is not int or segment_id < 0:
            raise ShmError(f"invalid segment id {segment_id!r}")
        if segment_id in self._segments:
            raise ShmError(f"segment id {segment_id} is already attached")
        segment = Segment.attach(name, size, readonly=self._readonly)
        self._segments[segment_id] = segment
        return segment

    def add_memfd(self, segment_id: int, fd: int, size: int) -> Segment:
        """Map a sealed memfd the owner passed (descriptor ``fd``), under the owner's id for it.

        ``fd`` is consumed whatever happens: mapped and closed, or refused and closed.

        Raises:
            ShmError: the id is taken, or the descriptor fails the checks of
                :meth:`Segment.attach_memfd` (a memfd, sealed, of ``size`` bytes, an rlmesh header).
            ClosedError: this table is closed.
        """
        try:
            self._life.check_open()
            if type(segment_id) is not int or segment_id < 0:
                raise ShmError(f"invalid segment id {segment_id!r}")
            if segment_id in self._segments:
                raise ShmError(f"segment id {segment_id} is already attached")
        except BaseException:
            os.close(fd)
            raise
        segment = Segment.attach_memfd(fd, size, readonly=self._readonly)
        self._segments[segment_id] = segment
        return segment

    def view(self, handle: Handle) -> memoryview:
        """A read-only, leased, zero-copy view of the block a handle names.

        Raises:
            InvalidHandle: unknown segment, misaligned offset, or a range
                outside the segment. Nothing is mapped for a bad handle.
            ClosedError: the table is closed.
        """
        segment = self._check(handle)
        lease = Lease(handle, segment, self)
        segment.pin()
        self._refs[weakref.ref(lease, self._on_release)] = (handle, segment)
        return keepalive_view(segment.address + handle.offset, handle.nbytes, lease)

    def lease(self, handle: Handle) -> tuple[memoryview, Lease, int]:
        """Like :meth:`view`, but also return the lease and the block's address.

        For owners (a Tensor) that keep the lease themselves and need the
        address. The view keeps the lease alive like :meth:`view`'s: it is
        never a plain slice of the mapping, whose export would block the
        deferred unmap (a dying Tensor may drop its lease before its view).

        Raises:
            InvalidHandle: as :meth:`view`.
            ClosedError: the segment is closed.
        """
        segment = self._check(handle)
        lease = Lease(handle, segment, self)
        segment.pin()  # raises if the segment closed; after it the fields below are valid
        self._refs[weakref.ref(lease, self._on_release)] = (handle, segment)
        address = segment._address + handle.offset
        return keepalive_view(address, handle.nbytes, lease), lease, address

    def _check(self, handle: Handle) -> Segment:
        segment = self._segments.get(handle.segment)
        if segment is None:
            self._life.check_open()  # a closed table has no segments: say so
            raise InvalidHandle(f"handle names segment id {handle.segment}, which was never announced")
        offset, nbytes = handle.offset, handle.nbytes
        if type(offset) is not int or type(nbytes) is not int or offset < 0 or nbytes < 0:
            raise InvalidHandle(f"handle offset and length must be non-negative ints, got {handle}")
        if offset % ALIGNMENT:
            raise InvalidHandle(f"handle offset {offset} is not {ALIGNMENT}-byte aligned")
        if offset < segment.payload_offset or offset > segment.size or nbytes > segment.size - offset:
            raise InvalidHandle(
                f"handle range [{offset}, +{nbytes}) is outside segment id {handle.segment} "
                f"({segment.size} bytes)"
            )
        return segment

    def _on_release(self, ref: weakref.ref[Lease]) -> None:
        # Runs when a lease dies, on whatever thread dropped the last view;
        # the lease itself is gone, so its handle was kept beside the weakref.
        info = self._refs.pop(ref, None)
        if info is not None:
            handle, segment = info
            self._pending.append(handle)
            segment.unpin()

    def take_releases(self) -> list[Handle]:
        """Handles whose views all died since the last call, to send to the owner."""
        out = []
        pending = self._pending
        while pending:
            try:
                out.append(pending.popleft())
            except IndexError:  # another thread drained it concurrently
                break
        return out

    def close(self) -> None:
        """Detach from every segment once its views are gone. Idempotent."""
        if not self._life.begin_close():
            return
        try:
            self._life.release()  # _detach_all(self._segments), without a warning
            self._pending.clear()
        finally:
            self._life.finish_close()

    @property
    def closed(self) -> bool:
        """True once closing began."""
        return self._life.closed

    def __enter__(self) -> PeerMemory:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PeerMemory segments={len(self._segments)} leases={self.outstanding}>"
