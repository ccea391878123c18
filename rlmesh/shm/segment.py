"""``Segment``: one shared-memory object (a named POSIX segment or a sealed memfd), mapped here."""

from __future__ import annotations

import os
import threading
from mmap import mmap
from typing import Any

from .._buffers import buffer_address
from .._lifecycle import Lifecycle, State
from ..errors import BusyError, ClosedError, ShmError
from . import _memfd, _posix
from ._layout import SEGMENT_HEADER, SegmentKind

__all__ = ["Segment", "close_all_when_unpinned"]

#: The per-step state check compares against this (one global, no enum attribute lookup).
_OPEN = State.OPEN


def _close_fd(fd_box: list[int]) -> None:
    """Close the descriptor in ``fd_box`` once; the box then holds -1.

    A box, not an int, because the descriptor may be closed early (see
    :meth:`Segment.unlink`): a finalizer holding the bare number would later
    close whatever file had been given that number since.
    """
    fd, fd_box[0] = fd_box[0], -1
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


def _release(fd_box: list[int], mapping: mmap, name: str | None, pid: int) -> None:
    # Captures only raw resources, never the Segment (weakref.finalize rule);
    # the Lifecycle's finalizer warns after it, when the GC ran it.
    try:
        mapping.close()
    except BufferError:
        # Views are still exported; they keep the mapping alive on their own.
        pass
    _close_fd(fd_box)
    if name is not None and os.getpid() == pid:
        _posix.unlink(name)


class Segment:
    """A shared-memory segment mapped into this process.

    Two kinds: a named POSIX segment in ``/dev/shm`` (:meth:`create`,
    :meth:`attach`), which any process of the user can open by name (for
    TCP sessions on one host), and a sealed memfd (:meth:`create_memfd`,
    :meth:`attach_memfd`), which has no name and reaches a peer only as a
    descriptor passed over a Unix socket (:mod:`rlmesh.shm._memfd`). For a
    memfd, "unlink" closes the creator's descriptor: nothing is named, so
    nothing can be left behind.

    Lifetime:
        :meth:`create` makes a new segment; this process is its *creator* and
        the only one that may :meth:`unlink` its name. :meth:`attach` maps a
        segment someone else created. :meth:`close` lets go of the mapping (a
        creator's close also unlinks the name, unless it was unlinked
        already). A segment left unclosed is cleaned up when garbage
        collected, with a ``ResourceWarning``; after ``fork()`` the child
        never unlinks its parent's segments. :attr:`state` follows
        :mod:`rlmesh._lifecycle`: CLOSING while a close waits for the last
        pinned view (:meth:`close_when_unpinned`), CLOSED once unmapped.

        While views handed out through :meth:`pin` are alive, the mapping must
        stay: :meth:`close` raises :class:`BusyError`, and
        :meth:`close_when_unpinned` defers the close to the last unpin.

    The first 64 bytes hold the header (see ``_layout``); ``payload_offset``
    is where usable memory starts.
    """

    # Class defaults make close() safe on a half-built object.
    _fd_box: list[int] = [-1]  # noqa: RUF012 - replaced per instance, never mutated here
    _mapping: mmap | None = None
    _name = ""
    _size = 0
    _address = 0
    _creator = False
    _unlinked = False
    _readonly = False
    _memfd = False
    _pid = 0
    _pins = 0
    _close_pending = False
    _life: Lifecycle
    _lock: threading.Lock
    _buf: memoryview

    payload_offset = SEGMENT_HEADER

    def __init__(self) -> None:
        raise TypeError("use Segment.create() or Segment.attach()")

    @classmethod
    def create(cls, size: int, kind: SegmentKind = SegmentKind.OTHER) -> Segment:
        """Create and map a new segment of ``size`` bytes (header included).

        Raises:
            ShmCapacityError: /dev/shm has no room; nothing is left behind.
            ShmError: the segment could not be created.
        """
        name, fd, mapping = _posix.create(size, kind)
        return cls._wrap(name, fd, mapping, creator=True, readonly=False)

    @classmethod
    def attach(cls, name: str, size: int | None = None, *, readonly: bool = False) -> Segment:
        """Map an existing rlmesh segment after checking its name, owner, mode and size.

        Raises:
            ShmError: the segment is missing, not ours, or not what was announced.
        """
        fd, mapping = _posix.attach(name, size, readonly=readonly)
        return cls._wrap(name.lstrip("/"), fd, mapping, creator=False, readonly=readonly)

    @classmethod
    def create_memfd(cls, size: int, kind: SegmentKind = SegmentKind.OTHER) -> Segment:
        """Create and map a new sealed memfd segment of ``size`` bytes (header included).

        The creator keeps the descriptor (:meth:`fileno`, to send to a peer)
        until :meth:`unlink` or :meth:`close`.

        Raises:
            ShmCapacityError: no memory for it; nothing is left behind.
            ShmError: memfds are unavailable, or it could not be sealed or mapped.
        """
        label = _posix.new_name()
        fd, mapping = _memfd.create(size, kind, label)
        return cls._wrap("memfd:" + label, fd, mapping, creator=True, readonly=False, memfd=True)

    @classmethod
    def attach_memfd(cls, fd: int, size: int, *, readonly: bool = False) -> Segment:
        """Map the sealed memfd a peer passed on descriptor ``fd``, after checking it; ``fd`` is closed.

        The descriptor is always consumed, mapped or refused: the caller never
        closes it. The checks are :func:`rlmesh.shm._memfd.check`'s (a memfd,
        sealed against shrinking and growing, of ``size`` bytes, with an rlmesh
        header), so a peer cannot shrink it under the mapping.

        Raises:
            ShmError: the descriptor is not such a segment.
        """
        try:
            mapping = _memfd.check(fd, size, readonly=readonly, what=f"the memfd segment on descriptor {fd}")
        except BaseException:
            _close_fd([fd])  # even one that was not open: the caller learns why from the ShmError
            raise
        return cls._wrap(f"memfd:fd{fd}", fd, mapping, creator=False, readonly=readonly, memfd=True)

    @classmethod
    def attach_fd(cls, fd: int, name: str, size: int | None = None) -> Segment:
        """Map the segment open on descriptor ``fd``, with :meth:`attach`'s checks; ``fd`` is closed.

        The descriptor comes from the creator (:meth:`dup_fd`), whose name for
        the segment may already be unlinked.

        Raises:
            ShmError: the descriptor is not an rlmesh segment of ours, or not what was announced.
        """
        name = _posix.check_name(name)
        fd, mapping = _posix.attach_fd(fd, name, size)
        return cls._wrap(name, fd, mapping, creator=False, readonly=False)

    def dup_fd(self) -> int:
        """A new descriptor of the segment, for a child process to :meth:`attach_fd`; the caller closes it.

        The child can map the segment with it after the name is gone.

        Raises:
            ClosedError: the segment is closed. ShmError: its descriptor is gone
            (an attacher's, or a creator's after :meth:`unlink`).
        """
        return os.dup(self.fileno())

    def fileno(self) -> int:
        """The creator's descriptor of the segment (to pass to a peer); the segment keeps owning it.

        Raises:
            ClosedError: the segment is closed. ShmError: its descriptor is gone
            (an attacher's, or a creator's after :meth:`unlink`).
        """
        self._check_open()
        fd = self._fd_box[0]
        if fd < 0:
            raise ShmError(f"shared-memory segment {self._name} has no descriptor left")
        return fd

    @classmethod
    def _wrap(
        cls, name: str, fd: int, mapping: mmap, *, creator: bool, readonly: bool, memfd: bool = False
    ) -> Segment:
        self = cls.__new__(cls)
        self._life = Lifecycle(f"shared-memory segment {name.lstrip('/')}")
        self._lock = threading.Lock()
        # The descriptor is kept only while it does a job: a creator's shared
        # flock tells the janitor the owner is alive, for as long as the name
        # exists. A mapping needs no descriptor, so an attacher closes it now
        # and a creator at unlink(): a server with many sessions would
        # otherwise hold several descriptors per session and run out.
        self._fd_box = [fd]
        if not creator:
            _close_fd(self._fd_box)
        self._mapping = mapping
        self._name = name
        self._size = len(mapping)
        self._creator = creator
        self._readonly = readonly
        self._memfd = memfd
        self._pid = os.getpid()
        # Only a named segment has a name to unlink when it goes.
        unlink_name = name if creator and not memfd else None
        try:
            self._address = buffer_address(mapping)
            self._buf = memoryview(mapping)
        except BaseException:
            _release(self._fd_box, mapping, unlink_name, self._pid)
            raise
        self._life.watch(self, _release, self._fd_box, mapping, unlink_name, self._pid)
        return self

    # -- properties -----------------------------------------------------------

    @property
    def name(self) -> str:
        """The segment's name, without the leading slash."""
        return self._name

    @property
    def size(self) -> int:
        """Total bytes, header included."""
        return self._size

    @property
    def address(self) -> int:
        """The address of the first byte of the mapping in this process."""
        self._check_open()
        return self._address

    @property
    def buf(self) -> memoryview:
        """A view of the whole mapping (read-only for read-only attaches).

        Slices of it hold the mapping: :meth:`close` raises :class:`BusyError`
        until they are released.
        """
        self._check_open()
        return self._buf

    @property
    def is_creator(self) -> bool:
        """True in the process (and thread of ownership) that created it."""
        return self._creator and os.getpid() == self._pid

    @property
    def is_memfd(self) -> bool:
        """True for a sealed memfd (no name in /dev/shm), False for a named POSIX segment."""
        return self._memfd

    @property
    def readonly(self) -> bool:
        """True if mapped without write access."""
        return self._readonly

    @property
    def state(self) -> State:
        """OPEN, CLOSING (waiting for the last pinned view) or CLOSED."""
        return self._life.state

    @property
    def closed(self) -> bool:
        """True once closed (not while a deferred close waits for pinned views)."""
        return self._life.state is State.CLOSED

    @property
    def pins(self) -> int:
        """Views handed out through :meth:`pin` that are still alive."""
        return self._pins

    def _check_open(self) -> None:
        self._life.check_open()

    def check_range(self, offset: int, nbytes: int) -> None:
        """Check that ``[offset, offset + nbytes)`` lies inside the segment.

        Python ints do not overflow, but the checks are written as if they
        could (``nbytes <= size - offset``) so that they read the same in C.

        Raises:
            ShmError: the range is negative or out of bounds.
        """
        if (
            type(offset) is not int
            or type(nbytes) is not int
            or offset < 0
            or nbytes < 0
            or offset > self._size
            or nbytes > self._size - offset
        ):
            raise ShmError(
                f"range [{offset}, +{nbytes}) is outside segment {self._name} of {self._size} bytes"
            )

    # -- pins -------------------------------------------------------------------

    def pin(self) -> None:
        """Record one more live view that needs the mapping.

        Raises:
            ClosedError: the segment is closed, or closing once unpinned.
        """
        with self._lock:
            if self._life.state is not _OPEN:
                raise ClosedError(f"shared-memory segment {self._name} is closed")
            self._pins += 1

    def unpin(self) -> None:
        """Record that a pinned view died; may finish a deferred close."""
        with self._lock:
            self._pins -= 1
            finish = self._close_pending and self._pins == 0
        if finish:
            try:
                self._close_now()
            except BusyError:
                pass  # a stray slice is still alive; the finalizer unmaps later

    # -- closing ---------------------------------------------------------------

    def unlink(self) -> None:
        """Remove the segment's name now; mappings (ours and peers') stay valid.

        The descriptor is closed too: with the name gone, no janitor can find
        the segment, so the liveness lock it held has no more use.

        Raises:
            PermissionError: this process is not the segment's creator.
        """
        if not self.is_creator:
            raise PermissionError(f"only the creator of segment {self._name} may unlink it")
        if not self._unlinked:
            self._unlinked = True
            if not self._memfd:
                _posix.unlink(self._name)
            _close_fd(self._fd_box)

    def close(self) -> None:
        """Unmap the segment and close its descriptor; a creator also unlinks it.

        Idempotent; a close already deferred by :meth:`close_when_unpinned`
        stays deferred.

        Raises:
            BusyError: views of the segment are still alive (pinned views,
                memoryview slices, numpy arrays over them). Nothing is closed.
        """
        with self._lock:
            if self._life.state is not _OPEN:
                return
            if self._pins:
                raise BusyError(
                    f"{self._pins} view(s) of shared-memory segment {self._name} are still alive; "
                    "drop them (and any numpy or JAX arrays made from them) before close()"
                )
            self._life.begin_close()
        self._close_now()

    def close_when_unpinned(self) -> None:
        """Close now if no pinned views are alive, else when the last one dies.

        Never raises for live views; use it when the owner of the mapping goes
        away while the user may still hold arrays over it.
        """
        with self._lock:
            if not self._life.begin_close():
                return
            if self._pins:
                self._close_pending = True
                # Asked to close: if the garbage collector takes this segment before its
                # last view's release runs (a cycle can swallow the release callbacks),
                # the finalizer unmaps it without a "never closed" warning.
                self._life.quiet()
                return
        self._close_now()

    def _close_now(self) -> None:
        # Runs in CLOSING, once: after begin_close, or at the last unpin of a deferred close.
        try:
            self._buf.release()
            assert self._mapping is not None
            self._mapping.close()
        except BufferError:
            # Re-export the mapping: the segment stays usable after the failed close.
            self._buf = memoryview(self._mapping)  # type: ignore[arg-type]
            if not self._close_pending:
                self._life.abort_close()
            raise BusyError(
                f"views of shared-memory segment {self._name} are still alive (memoryview slices "
                "or arrays over them); release them before close()"
            ) from None
        self._life.forget()
        self._life.finish_close()
        _close_fd(self._fd_box)
        if self.is_creator and not self._unlinked:
            self._unlinked = True
            if not self._memfd:
                _posix.unlink(self._name)

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self._life.state.name.lower() if self._life.state is not _OPEN else f"pins={self._pins}"
        role = "creator" if self._creator else ("attached ro" if self._readonly else "attached")
        if self._memfd:
            role += " memfd"
        return f"<Segment {self._name!r} size={self._size} {role} {state}>"


def close_all_when_unpinned(segments: dict[int, Segment]) -> None:
    """Close every segment of a table (deferred while views are alive), then empty it.

    For owners of segment tables (a slab, a peer's memory), at close and in
    their finalizers: views the user still holds keep their mapping, which
    goes with the last one. Never raises for live views.
    """
    for segment in segments.values():
        try:
            segment.close_when_unpinned()
        except BusyError:
            pass  # a stray slice is alive: the segment's own finalizer unmaps it later
    segments.clear()
