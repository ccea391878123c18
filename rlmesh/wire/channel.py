"""Channels: how one session's messages travel after the handshake.

:class:`SocketChannel` sends frames on the socket (tensors inline in the
frame tail). :class:`RingChannel` sends messages through two shared-memory
message rings (tensors as slab handles) and keeps the socket as the
session's lifeline: a peer that dies closes its socket, which the waiting
side notices within one liveness interval (50 ms) even while asleep on a
futex. A message too large for a ring goes on the socket, announced by a
ring record tagged SPILL so the order of messages is kept.

The channel segment's layout::

    offset          size                 field
    0               64                   segment header
    64              64                   token (32 random bytes, then zeros)
    128             ring(req capacity)   client -> server ring
    ...             ring(resp capacity)  server -> client ring
"""

from __future__ import annotations

import abc
import secrets
import time
from collections.abc import Callable
from typing import Any, ClassVar

from .._deadline import Deadline
from .._lifecycle import Lifecycle, State
from .._native import STEP_RECORD_TAG, ok_recv, ok_send, step_recv, step_send
from ..errors import BrokenError, ClosedError, OperationTimeout
from ..net.stream import SocketStream
from ..shm import MessageRing, Segment, SpinPolicy
from ..shm._layout import CACHE_LINE, align_up
from .codec import TailBuilder

__all__ = ["Channel", "Message", "RingChannel", "SocketChannel", "channel_layout"]

#: The per-step state check compares against this (one global, no enum attribute lookup).
_OPEN = State.OPEN

_EMPTY = memoryview(b"")
_TOKEN_OFFSET = 64
_TOKEN_SIZE = 32
_RINGS_OFFSET = 128


#: Once a message has begun to arrive, the rest must arrive within this many
#: seconds, even where the caller waits for messages without a deadline (a
#: server waiting for its client's next request): a peer that trickles a frame
#: a byte at a time must not hold a session thread forever.
FRAME_DEADLINE = 60.0


class Message:
    """One received message: its head and tail views.

    Call :meth:`done` once decoded: for a ring message the views point into
    the ring and become invalid then.
    """

    __slots__ = ("head", "tail", "tail_address", "_done")

    def __init__(
        self, head: memoryview, tail: memoryview, tail_address: int, done: Callable[[], None] | None
    ) -> None:
        self.head = head
        self.tail = tail
        self.tail_address = tail_address
        self._done = done

    @property
    def in_ring(self) -> bool:
        """True if the views point into a ring (copy what must outlive done())."""
        return self._done is not None

    def done(self) -> None:
        """Release the message's memory."""
        done, self._done = self._done, None
        if done is not None:
            self.head.release()
            if self.tail is not _EMPTY:
                self.tail.release()
            done()


class Channel(abc.ABC):
    """Sends and receives the messages of one session: one interface over every transport.

    A message is a msgpack head and an optional tail of tensor bytes (a
    :class:`~rlmesh.wire.codec.TailBuilder`). Messages arrive whole and in
    the order they were sent. Every channel keeps the session's socket as its
    lifeline: a peer that dies closes it, and a waiting call notices.

    One thread may send while another receives; two senders (or two
    receivers) at once are not supported.

    Lifetime: owns nothing but views of its rings; the session owns the
    stream and the segments, and closes them after :meth:`close`. So a
    channel has no finalizer: what it uses is released by its owner's.
    :meth:`close` is idempotent and wins over a :meth:`recv` (or a send
    waiting for ring room) blocked in another thread, which raises
    ClosedError at once; every call after close raises ClosedError.
    """

    #: The session's socket.
    stream: SocketStream
    #: How tensors travel: "shm" (slab handles) or "inline" (in the tail).
    data_plane: ClassVar[str] = "inline"
    _life: Lifecycle

    @property
    def state(self) -> State:
        """OPEN, CLOSING or CLOSED (see :mod:`rlmesh._lifecycle`)."""
        return self._life.state

    def _closed_error(self) -> ClosedError:
        return ClosedError("the channel was closed")

    @abc.abstractmethod
    def send(self, head: bytes, tail: TailBuilder | None = None, *, timeout: float | None = None) -> None:
        """Send one message.

        Args:
            head: the msgpack head.
            tail: tensor bytes to send after it (None or empty: none).
            timeout: seconds to wait for room; None waits forever.

        Raises:
            OperationTimeout: the peer did not make room in time.
            BrokenError: the peer is gone.
            FramingError: the message exceeds the stream's frame limit.
            ClosedError: the channel is closed, or was closed while waiting.
        """

    def send_fds(self, head: bytes, fds: list[int], *, timeout: float | None = None) -> None:
        """Send one message (no tail) with descriptors, as a frame on the socket (SCM_RIGHTS).

        The receiver takes them from its stream (``stream.take_fds()``) right
        after the message. Over rings, a SPILL record keeps the message in order.

        Raises:
            As :meth:`send`; ValueError: the stream cannot carry descriptors (TCP).
        """
        if self._life.state is not _OPEN:
            raise self._closed_error()
        self._send_fds(head, fds, timeout)

    def _send_fds(self, head: bytes, fds: list[int], timeout: float | None) -> None:
        self.stream.send(head, (), timeout=timeout, fds=fds)

    def recv(self, timeout: float | None = None, check: Callable[[], None] | None = None) -> Message:
        """Receive one message; call its ``done()`` once decoded.

        Args:
            timeout: seconds to wait for a message to start; None waits forever.
                Once one has started, the rest must come within the
                remaining time (:data:`FRAME_DEADLINE` without a deadline).
            check: called now and then while waiting; what it raises ends the wait.

        Raises:
            OperationTimeout: nothing arrived before the deadline.
            BrokenError: the peer is gone.
            FramingError: the peer sent a malformed frame; the stream is broken.
            ClosedError: the channel is closed, or was closed while waiting.
        """
        if self._life.state is not _OPEN:
            raise self._closed_error()
        try:
            return self._recv(timeout, check)
        except BrokenError:
            if self._life.state is not _OPEN:
                # The end-of-file or closed ring our own close() caused, not the peer's.
                raise self._closed_error() from None
            raise

    @abc.abstractmethod
    def _recv(self, timeout: float | None, check: Callable[[], None] | None) -> Message:
        """The transport's receive, under :meth:`recv`'s closed-state handling."""

    def peer_check(self) -> None:
        """Raise BrokenError if the peer has gone away (closed its socket)."""
        if self.stream.peer_gone():
            raise BrokenError("the peer closed the connection")

    @abc.abstractmethod
    def close(self) -> None:
        """Stop using the channel and tell the peer, where the transport can. Idempotent.

        A receive blocked in another thread wakes with ClosedError: the
        stream's read side is shut down (see
        :meth:`~rlmesh.net.stream.SocketStream.shutdown_read`); otherwise the
        stream stays open: its owner closes it.
        """


class SocketChannel(Channel):
    """Messages as frames on the socket; tensors travel inline in the frame tail."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self._life = Lifecycle("the socket channel")

    def close(self) -> None:
        """Stop receiving (waking a blocked receive); the socket's owner closes it. Idempotent."""
        if not self._life.begin_close():
            return
        try:
            self.stream.shutdown_read()
        finally:
            self._life.finish_close()

    def send(self, head: bytes, tail: TailBuilder | None = None, *, timeout: float | None = None) -> None:  # noqa: D102
        if self._life.state is not _OPEN:
            raise self._closed_error()
        self.stream.send(head, tail.parts if tail is not None and tail.size else (), timeout=timeout)

    def _recv(self, timeout: float | None, check: Callable[[], None] | None) -> Message:
        if check is None:
            head, tail, address = self.stream.recv_frame(timeout)
            return Message(head, tail, address, None)
        # Wake up now and then to run `check` (the server's stop flag).
        deadline = None if timeout is None else time.monotonic() + timeout
        first = True
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise OperationTimeout(f"no message within {timeout:.3g}s", timeout=timeout)
            if self.stream.wait_readable(0.1 if remaining is None else min(0.1, remaining), spin=first):
                rest = FRAME_DEADLINE if remaining is None else remaining
                head, tail, address = self.stream.recv_frame(rest)
                return Message(head, tail, address, None)
            first = False
            check()


def channel_layout(req_capacity: int, resp_capacity: int) -> tuple[int, int, int]:
    """``(segment size, request ring offset, response ring offset)``."""
    req_offset = _RINGS_OFFSET
    resp_offset = align_up(req_offset + MessageRing.footprint(req_capacity), CACHE_LINE)
    size = align_up(resp_offset + MessageRing.footprint(resp_capacity), 4096)
    return size, req_offset, resp_offset


def write_token(segment: Segment) -> str:
    """Write a fresh random token into a channel segment and return it (hex)."""
    token = secrets.token_bytes(_TOKEN_SIZE)
    segment.buf[_TOKEN_OFFSET : _TOKEN_OFFSET + _TOKEN_SIZE] = token
    return token.hex()


def read_token(segment: Segment) -> str:
    """Read the token a server wrote into a channel segment (hex)."""
    return bytes(segment.buf[_TOKEN_OFFSET : _TOKEN_OFFSET + _TOKEN_SIZE]).hex()


class RingChannel(Channel):
    """Messages through two shared-memory rings; the socket stays the lifeline.

    Args:
        stream: the session's socket.
        segment: the channel segment.
        tx: ``(offset, capacity)`` of the ring this side writes.
        rx: ``(offset, capacity)`` of the ring this side reads.
        spin: the receive side's spin policy.
    """

    data_plane: ClassVar[str] = "shm"

    def __init__(
        self,
        stream: SocketStream,
        segment: Segment,
        tx: tuple[int, int],
        rx: tuple[int, int],
        spin: SpinPolicy | None,
    ) -> None:
        self.stream = stream
        self.segment = segment
        buf, address = segment.buf, segment.address
        self.tx = MessageRing(buf, address, tx[0], tx[1], spin=spin)
        self.rx = MessageRing(buf, address, rx[0], rx[1], spin=spin)
        # The native rings themselves, for the step codec's reads and writes.
        self._tx_core, self._rx_core = self.tx._core, self.rx._core
        self._life = Lifecycle("the ring channel")
        self._extra_check: Callable[[], None] | None = None
        self._both_checks: Callable[[], None] = self.peer_check
        #: Whether :meth:`recv` may drop compact OK records (stale answers): a
        #: client that sends compact steps sets it; for anyone else one is a BrokenError.
        self.skip_compact = False

    # A ring record's tag says how to read it: 0, the record is the head (no
    # tail); n > 0, the head is the first n - 1 bytes and the tail follows at
    # the next 64-byte offset; SPILL_TAG, the message follows on the socket.
    SPILL_TAG = 0xFFFFFFFF

    def send(self, head: bytes, tail: TailBuilder | None = None, *, timeout: float | None = None) -> None:  # noqa: D102
        if self._life.state is not _OPEN:
            raise self._closed_error()
        try:
            self._send(head, tail, timeout)
        except BrokenError:
            if self._life.state is not _OPEN:
                raise self._closed_error() from None  # our own close() woke the wait
            raise

    def _send(self, head: bytes, tail: TailBuilder | None, timeout: float | None) -> None:
        tx = self.tx
        tail_size = tail.size if tail is not None else 0
        head_len = len(head)
        if not tail_size:
            if head_len <= tx.max_message:
                tx.put(head, timeout, check=self.peer_check)
                return
        else:
            start = (head_len + 63) & ~63
            if start + tail_size <= tx.max_message:
                assert tail is not None
                parts = [head, bytes(start - head_len), *tail.parts]
                tx.put(b"".join(parts), timeout, check=self.peer_check, tag=head_len + 1)
                return
        tx.put(b"", timeout, check=self.peer_check, tag=self.SPILL_TAG)
        self.stream.send(head, tail.parts if tail is not None and tail_size else (), timeout=timeout)

    # -- the fixed-shape step codec (compact STEP / OK records, see _native_step.c) ---------

    #: The tag of a compact record (a STEP in the request ring, its OK in the response ring).
    STEP_TAG = STEP_RECORD_TAG

    def send_step(self, rid: int, action: Any, nbytes: int, timeout: float | None) -> None:
        """Send a compact STEP: ``action`` an int (a Discrete) or exactly ``nbytes`` bytes.

        Raises:
            As :meth:`send`; ValueError or OverflowError: the action does not fit the record.
        """
        if self._life.state is not _OPEN:
            raise self._closed_error()
        need = step_send(self._tx_core, rid, action, nbytes)
        if need:
            self._room_for(step_send, (rid, action, nbytes), timeout, need)

    def send_ok(
        self, rid: int, reward: float, terminated: bool, truncated: bool, obs: Any, nbytes: int
    ) -> None:
        """Send a compact OK: ``obs`` an int (a Discrete) or exactly ``nbytes`` bytes.

        Raises:
            As :meth:`send`; ValueError or OverflowError: the observation does
            not fit the record; TypeError: the reward is no number.
        """
        if self._life.state is not _OPEN:
            raise self._closed_error()
        need = ok_send(self._tx_core, rid, reward, terminated, truncated, obs, nbytes)
        if need:
            self._room_for(ok_send, (rid, reward, terminated, truncated, obs, nbytes), None, need)

    def _room_for(
        self, put: Callable[..., int], args: tuple[Any, ...], timeout: float | None, need: int
    ) -> None:
        # The ring was full (nothing was written): wait for room, then write the record.
        tx = self.tx
        try:
            tx.wait_room(need, timeout, self.peer_check)
            if put(tx._core, *args):
                raise BrokenError("corrupt ring: the consumer's tail moved backwards")
        except BrokenError:
            if self._life.state is not _OPEN:
                raise self._closed_error() from None  # our own close() woke the wait
            raise

    def recv_step(
        self, nbytes: int, discrete: bool, timeout: float | None, check: Callable[[], None] | None = None
    ) -> tuple[int, Any] | None:
        """The next message if it is a compact STEP, consumed: ``(rid, action)``; None for any other.

        The action is an int (``discrete``) or a new bytearray of ``nbytes``.
        Any other message stays in the ring for :meth:`recv`. Waits as :meth:`recv`.

        Raises:
            As :meth:`recv`; BrokenError for a compact record of the wrong size.
        """
        if self._life.state is not _OPEN:
            raise self._closed_error()
        found = step_recv(self._rx_core, nbytes, discrete)
        if found is None:
            found = self._await_compact(step_recv, nbytes, discrete, timeout, self._combined(check))
        return found if found is not False else None

    def recv_ok(
        self, nbytes: int, discrete: bool, timeout: float | None
    ) -> tuple[int, float, bool, bool, Any] | None:
        """The next message if it is a compact OK, consumed: ``(rid, reward, terminated, truncated, obs)``.

        None when the next message is another kind (it stays for :meth:`recv`).
        ``obs`` is an int (``discrete``) or a new bytearray of ``nbytes``.

        Raises:
            As :meth:`recv`; BrokenError for a compact record of the wrong size or flags.
        """
        if self._life.state is not _OPEN:
            raise self._closed_error()
        found = ok_recv(self._rx_core, nbytes, discrete)
        if found is None:
            found = self._await_compact(ok_recv, nbytes, discrete, timeout, self.peer_check)
        return found if found is not False else None

    def _await_compact(
        self,
        take: Callable[[Any, int, bool], Any],
        nbytes: int,
        discrete: bool,
        timeout: float | None,
        check: Callable[[], None],
    ) -> Any:
        # Wait for the next message (the ring was empty), then take it if it is a compact one.
        try:
            self.rx.await_message(timeout, check)
            found = take(self._rx_core, nbytes, discrete)
            if found is None:
                raise BrokenError("the ring's producer has closed")
        except BrokenError:
            if self._life.state is not _OPEN:
                raise self._closed_error() from None
            raise
        return found

    def _combined(self, check: Callable[[], None] | None) -> Callable[[], None]:
        # The liveness check, and the caller's (a server's stop flag), combined once.
        if check is None:
            return self.peer_check
        if check is self._extra_check:
            return self._both_checks
        extra, peer_check = check, self.peer_check

        def both() -> None:
            extra()
            peer_check()

        self._extra_check, self._both_checks = extra, both
        return both

    def _send_fds(self, head: bytes, fds: list[int], timeout: float | None) -> None:
        try:
            self.tx.put(b"", timeout, check=self.peer_check, tag=self.SPILL_TAG)
            self.stream.send(head, (), timeout=timeout, fds=fds)
        except BrokenError:
            if self._life.state is not _OPEN:
                raise self._closed_error() from None
            raise

    def _recv(self, timeout: float | None, check: Callable[[], None] | None) -> Message:
        rx = self.rx
        # A server passes the same check on every receive: combined once.
        check = self._combined(check)
        view = rx.peek(timeout, check=check)
        tag = rx.tag
        if tag == 0:
            return Message(view, _EMPTY, 0, rx.pop)
        if tag == STEP_RECORD_TAG:
            view.release()
            view = self._skip_compact(timeout, check)
            tag = rx.tag
            if tag == 0:
                return Message(view, _EMPTY, 0, rx.pop)
        if tag == self.SPILL_TAG:
            view.release()
            rx.pop()
            # The SPILL record is consumed: a deadline of 0 must not cut the frame it announced.
            rest = timeout if timeout else FRAME_DEADLINE
            frame_head, frame_tail, address = self.stream.recv_frame(rest)
            return Message(frame_head, frame_tail, address, None)
        head_len = tag - 1
        start = (head_len + 63) & ~63
        if head_len > len(view) or start > len(view):
            view.release()
            rx.pop()
            raise BrokenError("corrupt ring record: its head overruns it")
        # Ring tails die at done(): receivers copy inline tensors out of them,
        # so no address is needed.
        head, tail = view[:head_len], view[start:]
        view.release()
        return Message(head, tail, 0, rx.pop)

    def _skip_compact(self, timeout: float | None, check: Callable[[], None]) -> memoryview:
        """Consume compact records (answers to steps that timed out) and peek at the next message.

        Only where :attr:`skip_compact` says they may come (a client using
        the step codec); elsewhere a compact record breaks the session.
        """
        rx = self.rx
        deadline = Deadline.of(timeout)  # stale answers must not extend the caller's deadline
        while True:
            rx.pop()
            if not self.skip_compact:
                raise BrokenError("a compact step record on a session that did not agree to them")
            view = rx.peek(deadline, check=check)
            if rx.tag != STEP_RECORD_TAG:
                return view
            view.release()

    def close(self) -> None:
        """Tell the peer this side is done with both rings. Idempotent.

        Closing our ends also wakes a receive or send of this side waiting on
        a ring in another thread (ClosedError), and the stream's read side is
        shut down for one waiting on a spilled frame.
        """
        if not self._life.begin_close():
            return
        try:
            self.tx.close_producer()
            self.rx.close_consumer()
        except (ValueError, TypeError):
            pass  # the segment's memory is already gone
        finally:
            self.stream.shutdown_read()
            self._life.finish_close()
