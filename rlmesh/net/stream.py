"""Socket streams and listeners: frames over Unix and TCP sockets, with deadlines.

This is the only module that touches sockets. It translates OS errors at the
edge: a refused or unreachable connect is :class:`ConnectError`, a peer that
goes away mid-conversation is :class:`BrokenError`, a deadline is
:class:`OperationTimeout`. TCP sockets get ``TCP_NODELAY`` (small request and
response frames must not wait for Nagle) and keep-alive.

Timeouts have rlmesh's one meaning (:mod:`rlmesh._deadline`): None waits
forever, 0 never waits (one poll(2) with a zero timeout), a positive number
is a deadline shared by every part of the call (a frame's prefix and body;
every chunk of a send).
"""

from __future__ import annotations

import array
import os
import select
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

from .._buffers import buffer_address
from .._deadline import LONGEST_SLEEP, Deadline, check_timeout
from .._lifecycle import Lifecycle, State
from .._spin import SpinPolicy
from ..errors import BrokenError, ClosedError, ConnectError, FramingError, OperationTimeout
from .address import Address
from .framing import DEFAULT_MAX_FRAME, PREFIX, aligned_buffer, body_layout, check_body_length, split_body

__all__ = ["MAX_FDS", "SocketStream", "close_fds", "connect", "tune_keepalive"]

#: The per-step state check compares against this (one global, no enum attribute lookup).
_OPEN = State.OPEN

_ZEROS = bytes(64)

#: Socket buffer size asked for (the kernel caps it at net.core.[rw]mem_max).
SOCKET_BUFFER = 4 << 20

#: Frames at least this large get their receive buffer reused when free.
_REUSE_MIN = 64 << 10
_SO_PEERCRED = getattr(socket, "SO_PEERCRED", 17)


#: TCP keep-alive, per socket: the first probe after this many idle seconds,
#: then one every KEEPALIVE_INTERVAL seconds; KEEPALIVE_COUNT unanswered probes
#: end the connection. An idle connection to a host that vanished (powered off,
#: unplugged, partitioned: no FIN, no RST) fails in about 3 s instead of the
#: kernel default's 2 h 11 min. The kernel takes whole seconds here. A stopped
#: process on a live host still answers probes (its kernel does): the
#: application heartbeat (:mod:`rlmesh.wire.server_session`) covers that.
KEEPALIVE_IDLE = 1
KEEPALIVE_INTERVAL = 1
KEEPALIVE_COUNT = 2


def tune_keepalive(sock: socket.socket) -> None:
    """Turn TCP keep-alive on for ``sock`` with rlmesh's short timings (where the OS has them)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:
                pass  # an OS that refuses the option keeps its default


def _wait(poller: select.poll, deadline: Deadline) -> bool:
    """Sleep in poll(2) until the socket is ready (True) or ``deadline`` passes (False).

    An expired deadline (a timeout of 0) polls once without sleeping.
    """
    while True:
        # Whole milliseconds, rounded up, so a wait never ends early.
        if poller.poll(deadline.poll_ms()):
            return True
        if deadline.expired():
            return False


#: The most descriptors one frame may carry (a session's offer: its channel,
#: a few slab segments and a vector segment). A frame carrying more is refused.
MAX_FDS = 16


def close_fds(fds: list[int]) -> None:
    """Close every descriptor in ``fds`` once, emptying the list (so that no number is closed twice)."""
    while fds:
        fd = fds.pop()
        try:
            os.close(fd)
        except OSError:
            pass


def _close_socket(sock: socket.socket, fds: list[int] | None = None) -> None:
    # The finalizer of a stream never closed: the socket and any descriptors
    # received and not taken, never the stream.
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
    if fds:
        close_fds(fds)


def _unexported(raw: bytearray) -> bool:
    """True if no buffer export of ``raw`` (a memoryview, an array over one) is alive.

    A bytearray refuses to change its size while any export of its buffer is
    alive (BufferError, before anything changes): that rule, the buffer
    protocol's promise to every consumer, is the probe. Taking the last byte
    off and putting it back leaves the contents as they were.
    """
    try:
        last = raw.pop()
    except BufferError:
        return False
    raw.append(last)
    return True


class SocketStream:
    """A connected socket that sends and receives frames.

    Lifetime: owns the socket; :meth:`close` closes it and is idempotent.
    A close from another thread wins over a send or receive blocked in this
    one: it shuts the socket down, which wakes the poll(2) at once, and the
    blocked call raises ClosedError. Every call after close raises
    ClosedError. A stream never closed closes its socket when garbage
    collected, with a ``ResourceWarning``. After a deadline passes in the
    middle of a frame, or the peer breaks the connection, the stream is
    *broken* (still OPEN, see :attr:`state`): every later call raises
    BrokenError.

    The socket is non-blocking, and waits go through poll(2) with the
    caller's deadline: a frame that is already there costs one ``recv`` per
    part, not the ``ioctl`` and ``poll`` that a socket timeout adds to every
    call. Before sleeping, a receiver waiting for a new frame spins for an
    adaptive budget (``spin``), as the shared-memory doorbells do: a peer
    with a core of its own answers a small request in tens of microseconds,
    less than a sleep and kernel wake-up cost. Spinning stops by itself on a
    machine where it does not pay (see :class:`~rlmesh._spin.SpinPolicy`).

    Not thread-safe for concurrent sends or concurrent receives; one sender
    and one receiver thread may work at the same time.

    Args:
        sock: a connected stream socket; the stream owns it from now on.
        max_frame: the largest frame accepted or sent, in bytes.
        spin: the receive spin policy; the default never spins. Spin only
            where the peer is another process: a peer thread in this process
            needs the GIL that the spinning thread keeps taking back.
    """

    def __init__(
        self, sock: socket.socket, *, max_frame: int = DEFAULT_MAX_FRAME, spin: SpinPolicy | None = None
    ) -> None:
        self._sock = sock
        self.max_frame = max_frame
        self.is_unix = sock.family == socket.AF_UNIX
        self.spin = spin if spin is not None else SpinPolicy(0)
        self._broken: str | None = None
        self._life = Lifecycle("the socket stream")
        self._spare: tuple[bytearray, int, int] | None = None
        #: Receive descriptors (SCM_RIGHTS) with each frame, at most this many
        #: (0: never; the kernel then closes any a peer sends). Unix sockets only.
        self.accept_fds = 0
        # Descriptors that came with the last frame, until take_fds() (closed by the next recv_frame).
        self._fds: list[int] = []
        #: True when the last frame came with descriptors that could not all be
        #: received (more than ``accept_fds``, or this process ran out of
        #: descriptors): the kernel dropped some, and the rest were closed.
        self.fds_dropped = False
        self._life.watch(self, _close_socket, sock, self._fds)
        sock.setblocking(False)
        # One poll object per direction: a sender thread and a receiver thread
        # may wait at the same time, and a poll object refuses concurrent use.
        self._readable = select.poll()
        self._readable.register(sock, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(sock, select.POLLOUT)
        if not self.is_unix:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tune_keepalive(sock)
        # Large frames move in fewer, larger chunks (one wake-up per chunk);
        # these are limits, not allocations, and the kernel caps them.
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            except OSError:
                pass

    # -- state -----------------------------------------------------------------

    @property
    def state(self) -> State:
        """OPEN, CLOSING or CLOSED (see :mod:`rlmesh._lifecycle`); a broken stream stays OPEN."""
        return self._life.state

    @property
    def closed(self) -> bool:
        """True once :meth:`close` began."""
        return self._life.closed

    def fileno(self) -> int:
        """The socket's descriptor (-1 once closed)."""
        return -1 if self._life.closed else self._sock.fileno()

    @property
    def peer_uid(self) -> int | None:
        """The peer process's uid (Unix sockets on Linux), else None."""
        if not self.is_unix:
            return None
        try:
            creds = self._sock.getsockopt(socket.SOL_SOCKET, _SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
        return int(struct.unpack("3i", creds)[1])

    @property
    def peer_name(self) -> str:
        """A printable name of the peer."""
        try:
            name = self._sock.getpeername()
        except OSError:
            return "?"
        return str(name) if name else "unix peer"

    def _check(self) -> None:
        if self._life.state is not _OPEN:
            raise ClosedError("the connection is closed")
        if self._broken is not None:
            raise BrokenError(f"the connection is broken: {self._broken}")

    def _break(self, reason: str) -> BrokenError | ClosedError:
        """The error for a failed send or receive: ClosedError if our own close caused it."""
        if self._life.state is not _OPEN:
            return ClosedError("the connection was closed while a call was waiting on it")
        self._broken = reason
        return BrokenError(f"the connection to the peer was lost: {reason}")

    def peer_gone(self) -> bool:
        """True if the peer closed or reset the connection (never blocks).

        A readable socket whose next byte is end-of-file means the peer is
        gone. A peer that sent data is alive; the data stays queued.
        """
        if self._life.state is not _OPEN or self._broken is not None:
            return True
        try:
            return self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def wait_readable(self, timeout: float | Deadline | None, *, spin: bool = True) -> bool:
        """Wait until a frame (or EOF) can be read; False on timeout.

        Spins first, within the spin budget (unless ``spin`` is false: a caller
        waking up every so often to run a check spins on its first wait only),
        then sleeps in poll(2).

        Args:
            timeout: seconds to wait; None waits forever; 0 polls once and
                never spins or sleeps; a running Deadline is kept.
            spin: whether to spin before sleeping.

        Raises:
            ClosedError: the stream is closed.
            BrokenError: the stream is broken.
            ValueError: ``timeout`` is negative or NaN.
        """
        self._check()
        return self._await_frame(Deadline.of(timeout), spin=spin)

    def _await_frame(self, deadline: Deadline, *, spin: bool = True) -> bool:
        """Wait for the start of a frame until ``deadline``: a bounded spin, then poll(2).

        The spin is what the policy grants now (:meth:`SpinPolicy.current`:
        nothing on an oversubscribed machine, as for the rings). Every wait
        that spun teaches the policy, a timed-out one too: an idle connection
        is a wait that spinning does not catch, so its budget shrinks instead
        of burning a slice of a core on every wake-up.
        """
        # No poll(0) up front: on the per-step path the caller's recv has just
        # found the socket empty, and the spin's first poll checks again anyway.
        poll = self._readable.poll
        start = time.monotonic()
        policy = self.spin
        # An expired deadline (a timeout of 0) never spins: one poll below.
        budget = policy.current(start) if spin and (deadline.at is None or deadline.at > start) else 0.0
        if budget > 0:
            spin_until = start + budget
            if deadline.at is not None:
                spin_until = min(spin_until, deadline.at)
            while True:
                if poll(0):
                    policy.record(time.monotonic() - start)
                    return True
                if time.monotonic() >= spin_until:
                    break
        ready = _wait(self._readable, deadline)
        if budget > 0:
            policy.record(time.monotonic() - start)
        return ready

    # -- sending ---------------------------------------------------------------

    def send(
        self,
        head: Any,
        tail: Sequence[Any] = (),
        *,
        timeout: float | Deadline | None = None,
        fds: Sequence[int] = (),
    ) -> None:
        """Send one frame: ``head`` and the concatenation of ``tail`` buffers.

        The caller lays tail buffers out itself (padding them to 64-byte
        offsets if it wants aligned tensors on the other side).

        Args:
            head: the head bytes.
            tail: buffers sent after the head, from the next 64-byte offset.
            timeout: seconds for the whole frame; None waits forever for
                room; 0 sends what the socket buffer takes now and never waits;
                a running Deadline (one shared by a larger call) is kept.
            fds: descriptors to pass with the frame (SCM_RIGHTS, Unix sockets
                only, at most :data:`MAX_FDS`); the peer gets duplicates, and
                the caller keeps its own.

        Raises:
            FramingError: the frame exceeds ``max_frame``.
            OperationTimeout: the deadline passed (the stream is then broken
                if part of the frame was sent).
            BrokenError: the peer went away.
            ClosedError: the stream is closed, or was closed by another thread
                while this call waited.
            ValueError: ``timeout`` is negative or NaN; ``fds`` on a TCP stream
                or more than :data:`MAX_FDS` of them.
        """
        self._check()
        if fds and (not self.is_unix or len(fds) > MAX_FDS):
            raise ValueError(
                f"at most {MAX_FDS} descriptors travel with a frame, and only over a Unix socket"
            )
        deadline = Deadline.of(timeout)
        head_len = len(head)
        tail_len = sum(memoryview(t).nbytes for t in tail)
        body, padding = body_layout(head_len, tail_len)
        if body > self.max_frame:
            raise FramingError(
                f"a {body:,}-byte message exceeds the limit of {self.max_frame:,} bytes "
                "(raise max_message_bytes on both sides if this is expected)"
            )
        parts: list[Any] = [PREFIX.pack(body) + struct.pack("<I", head_len), head]
        if tail_len:
            if padding:
                parts.append(_ZEROS[:padding])
            parts.extend(tail)
        self._sendall(parts, 4 + body, deadline, fds)

    def _sendall(self, parts: list[Any], total: int, deadline: Deadline, fds: Sequence[int] = ()) -> None:
        sock = self._sock
        timeout = deadline.timeout
        # Empty parts would never be "sent" and stall the loop below.
        views = [v for v in (memoryview(p).cast("B") for p in parts) if v.nbytes]
        sent_total = 0
        # The descriptors ride on the first bytes sent (the frame's prefix), so
        # the receiver gets them with the prefix it reads first.
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        while views:
            try:
                sent = sock.sendmsg(views[:64], ancillary) if ancillary else sock.sendmsg(views[:64])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                raise self._break(f"send failed: {exc}") from exc
            if not sent:
                # The socket buffer is full: wait for room, within the deadline.
                if _wait(self._writable, deadline):
                    continue
                if sent_total:
                    raise OperationTimeout("timed out sending a frame", timeout=timeout) from self._break(
                        "a send timed out half-way"
                    )
                raise OperationTimeout("timed out sending a frame", timeout=timeout)
            sent_total += sent
            ancillary = []
            while sent and views:
                if sent >= len(views[0]):
                    sent -= len(views[0])
                    views.pop(0)
                else:
                    views[0] = views[0][sent:]
                    sent = 0

    # -- receiving -------------------------------------------------------------

    def recv_frame(
        self, timeout: float | Deadline | None = None, *, limit: int | None = None
    ) -> tuple[memoryview, memoryview, int]:
        """Receive one frame and return ``(head, tail, tail_address)``.

        The views share one fresh buffer; the tail starts on a 64-byte
        boundary in memory, at ``tail_address``.

        Args:
            timeout: seconds for the whole frame; None waits forever; 0 takes
                a frame only if its bytes are already there and never waits; a
                running Deadline (one shared by a larger call) is kept.
            limit: a tighter cap on this frame's size than ``max_frame``.

        Raises:
            OperationTimeout: no frame started before the deadline (the stream
                stays usable), or a frame stopped half-way (it is then broken).
            FramingError: the length prefix is invalid or over the limit; the
                stream is broken.
            BrokenError: the peer closed or reset the connection.
            ClosedError: the stream is closed, or was closed by another thread
                while this call waited.
            ValueError: ``timeout`` is negative or NaN.
        """
        self._check()
        if self._fds:
            close_fds(self._fds)  # the last frame's descriptors, never taken
        self.fds_dropped = False
        deadline = Deadline.of(timeout)
        prefix = bytearray(4)
        got = self._recv_into(memoryview(prefix), deadline, started=False, fds=self.accept_fds)
        if got == 0:
            raise self._break("the peer closed the connection")
        (length,) = PREFIX.unpack(prefix)
        try:
            check_body_length(length, self.max_frame if limit is None else min(limit, self.max_frame))
        except FramingError as exc:
            self._broken = str(exc)
            raise
        body, address = self._buffer(length)
        if self._recv_into(body, deadline, started=True) != length:
            raise self._break("the peer closed the connection in the middle of a frame")
        try:
            head, tail = split_body(body)
        except FramingError as exc:
            self._broken = str(exc)
            raise
        return head, tail, address + (len(body) - len(tail))

    def _buffer(self, length: int) -> tuple[memoryview, int]:
        """A 64-byte-aligned buffer for a body: the last large one if nothing uses it any more.

        Fresh multi-megabyte buffers cost a page fault per 4 KiB; the frame's
        tensors (wrapping the buffer without a copy) usually die before the
        next frame, and then the buffer is reused. Every view of a frame (the
        head and tail memoryviews, anything built on them) holds a buffer
        export of the bytearray until it is released or dies, so the buffer
        is free exactly when it has no export (see :func:`_unexported`), on
        any interpreter version. Only views are handed out, never the
        bytearray itself.
        """
        spare = self._spare
        if spare is not None:
            raw, offset, address = spare
            if len(raw) - offset >= length and _unexported(raw):
                if buffer_address(raw) + offset == address:
                    return memoryview(raw)[offset : offset + length], address
                # The probe moved the bytes (an interpreter that reallocates
                # on a one-byte resize): the alignment is gone, so drop it.
                self._spare = None
        view, address = aligned_buffer(length)
        if length >= _REUSE_MIN:
            owner = view.obj
            assert isinstance(owner, bytearray)
            self._spare = (owner, address - buffer_address(owner), address)
        return view, address

    def take_fds(self) -> list[int]:
        """The descriptors that came with the last frame (close-on-exec); the caller owns them now.

        Descriptors not taken before the next :meth:`recv_frame` (or
        :meth:`close`) are closed then: a peer cannot make this process
        hoard descriptors by sending them where none are expected.
        """
        fds = list(self._fds)
        self._fds.clear()
        return fds

    def _recv_fds(self, view: memoryview, max_fds: int) -> int:
        """``recv_into`` that also takes up to ``max_fds`` descriptors into ``_fds``.

        ``recvmsg`` with ``MSG_CMSG_CLOEXEC`` (``socket.recv_fds`` drops its
        flags, cpython#128881, and descriptors would leak into subprocesses).

        When they do not all fit (the peer sent more than ``max_fds``, or this
        process is out of descriptors: MSG_CTRUNC), the kernel drops the rest
        and those that came are closed too, so the frame has none
        (:attr:`fds_dropped`): whoever expected them fails on its own terms
        (a session goes inline), and the stream stays usable.
        """
        n, ancillary, flags, _ = self._sock.recvmsg_into(
            [view], socket.CMSG_SPACE(4 * max_fds), socket.MSG_CMSG_CLOEXEC
        )
        got = self._fds
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got.extend(array.array("i", data[: len(data) - len(data) % 4]))
        if flags & socket.MSG_CTRUNC or len(got) > max_fds:
            close_fds(got)
            self.fds_dropped = True
        return n

    def _recv_into(self, view: memoryview, deadline: Deadline, *, started: bool, fds: int = 0) -> int:
        sock = self._sock
        total = 0
        size = len(view)
        while total < size:
            try:
                if fds:
                    n = self._recv_fds(view[total:] if total else view, fds)
                else:
                    n = sock.recv_into(view[total:] if total else view)
            except (BlockingIOError, InterruptedError):
                n = -1
            except OSError as exc:
                raise self._break(f"receive failed: {exc}") from exc
            if n < 0:
                mid_frame = started or total > 0
                if _wait(self._readable, deadline) if mid_frame else self._await_frame(deadline):
                    continue
                timeout = deadline.timeout
                if mid_frame:
                    raise OperationTimeout(
                        "timed out in the middle of a frame", timeout=timeout
                    ) from self._break("a receive timed out half-way through a frame")
                raise OperationTimeout(f"no reply within {timeout:.3g}s", timeout=timeout)
            if n == 0:
                if total == 0 and not started:
                    return 0
                return total
            total += n
        return total

    # -- closing ---------------------------------------------------------------

    def close(self) -> None:
        """Shut the socket down and close it. Idempotent.

        The shutdown wakes a call blocked on the socket in another thread,
        which then raises ClosedError.
        """
        if not self._life.begin_close():
            return
        try:
            self._life.release()  # _close_socket: shutdown, then close
        finally:
            self._life.finish_close()

    def shutdown_read(self) -> None:
        """Wake a receive blocked on this stream in another thread; receiving ends here.

        Shuts the socket's read side down: a waiting poll(2) returns at once
        and every later receive sees end-of-file. Sending still works (a Unix
        socket's peer can no longer send to us). For a channel that stops
        receiving before its owner closes the stream. A no-op once closed.
        """
        if self._life.state is not _OPEN:
            return
        try:
            self._sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass  # not connected any more: nothing waits on it

    def detach(self) -> socket.socket:
        """Stop owning the socket and return it, open; the stream is then CLOSED.

        Raises:
            ClosedError: the stream is closed.
        """
        if not self._life.begin_close():
            raise ClosedError("the connection is closed")
        self._life.forget()
        self._life.finish_close()
        return self._sock

    def __enter__(self) -> SocketStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self._life.state.name.lower()
        if self._broken and self._life.state is State.OPEN:
            state = "broken"
        return f"<SocketStream {'unix' if self.is_unix else 'tcp'} {state}>"


def connect(address: Address, *, timeout: float | None, max_frame: int = DEFAULT_MAX_FRAME) -> SocketStream:
    """Open a connection to ``address``.

    Args:
        address: where to connect.
        timeout: seconds for the connection to be made; None waits as long
            as the OS does; 0 never waits: a Unix socket connects if the
            server's queue has room now, a TCP connection (which needs a
            round trip) always times out.
        max_frame: the stream's largest frame.

    Raises:
        ConnectError: refused, unreachable, no such socket file, or timed out.
        ValueError: ``timeout`` is negative or NaN.
    """
    timeout = check_timeout(timeout)
    # socket.settimeout reads None, 0 and a positive number the way rlmesh
    # does, but refuses very long ones (OverflowError); no OS keeps trying a
    # connect for a day anyway.
    os_timeout = None if timeout is None or timeout > LONGEST_SLEEP else timeout
    family = socket.AF_UNIX if address.transport == "unix" else None
    try:
        if family == socket.AF_UNIX:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(os_timeout)
            try:
                sock.connect(address.sockaddr)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection(address.sockaddr, timeout=os_timeout)
    except (TimeoutError, BlockingIOError) as exc:
        # BlockingIOError: a timeout of 0 made the connect non-blocking, and
        # it could not finish at once.
        raise ConnectError(f"connecting to {address} timed out after {timeout}s") from exc
    except OSError as exc:
        raise ConnectError(f"could not connect to {address}: {exc.strerror or exc}") from exc
    sock.settimeout(None)
    return SocketStream(sock, max_frame=max_frame)
