"""Conformance checks for channel implementations (in the style of ``trio.testing``'s stream checks).

Every :class:`~rlmesh.wire.channel.Channel` must pass :func:`check_channel`:
the socket channel and the shared-memory ring channel today, the batch
channel and the native ring when they come. Each check opens a fresh pair of
connected channels from the caller's ``make_pair`` and drives both ends from
this process (a helper thread sends where a send could block):

* **order**: messages of every size arrive whole and in order, one way, the
  other way, and both ways at once;
* **sizes**: empty heads, empty tails, heads and tails larger than a ring
  (they spill to the socket) and the same small message around them; a tail
  received from a frame starts on a 64-byte boundary;
* **peer death**: a peer that dies in the middle of a message (its socket
  closes, nothing more is said) makes the receiver raise
  :class:`~rlmesh.errors.BrokenError`, never hand out a truncated message;
* **close**: after either side closes, the other receives what was sent
  before the close, then :class:`~rlmesh.errors.BrokenError`; ``close`` is
  idempotent;
* **deadlines**: a receive with nothing to read and a send the peer makes no
  room for raise :class:`~rlmesh.errors.OperationTimeout` near their deadline;
  a receive that timed out leaves the channel usable; a ``check`` callback
  interrupts a receive that waits without a deadline.

Counter wrap-around is a property of rings, not of the interface: the ring
tests start the counters near their limits (``tests/unit/wire``).

Example::

    @contextlib.contextmanager
    def socket_pair():
        a, b = socket.socketpair()
        left, right = SocketChannel(SocketStream(a)), SocketChannel(SocketStream(b))
        try:
            yield left, right
        finally:
            left.stream.close()
            right.stream.close()

    check_channel(socket_pair)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from .errors import BrokenError, OperationTimeout
from .net.framing import FRAME_ALIGN
from .wire.channel import Channel, Message
from .wire.codec import TailBuilder

__all__ = [
    "CHANNEL_CHECKS",
    "PairMaker",
    "check_channel",
    "check_close",
    "check_deadlines",
    "check_order",
    "check_peer_dies_mid_message",
    "check_sizes",
]

#: Makes a connected pair ``(left, right)`` and releases both (streams, memory) on exit.
PairMaker = Callable[[], AbstractContextManager[tuple[Channel, Channel]]]

#: How long any single receive in these checks may wait before the check fails.
WAIT = 10.0
#: How late a deadline or a peer's death may be noticed (a loaded machine is slow).
SLACK = 2.0


def _pattern(seed: int, size: int) -> bytes:
    """``size`` bytes that differ from message to message."""
    block = bytes((seed * 31 + i) & 0xFF for i in range(256))
    return (block * (size // 256 + 1))[:size]


def _tail(data: bytes) -> TailBuilder | None:
    if not data:
        return None
    tail = TailBuilder()
    tail.add(data, len(data))
    return tail


def _received(message: Message) -> tuple[bytes, bytes]:
    """Copy a message out and release it; check where a frame's tail lies."""
    try:
        if not message.in_ring and len(message.tail):
            assert message.tail_address % FRAME_ALIGN == 0, "a frame's tail must be 64-byte aligned"
        return bytes(message.head), bytes(message.tail)
    finally:
        message.done()


class _Sender:
    """Sends a list of ``(head, tail bytes)`` on a thread; :meth:`join` re-raises what it raised."""

    def __init__(self, channel: Channel, messages: list[tuple[bytes, bytes]], *, timeout: float = WAIT):
        self.error: BaseException | None = None
        self._channel = channel
        self._messages = messages
        self._timeout = timeout
        self._thread = threading.Thread(target=self._run, name="rlmesh-check-sender", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for head, tail in self._messages:
                self._channel.send(head, _tail(tail), timeout=self._timeout)
        except BaseException as exc:  # handed to join()
            self.error = exc

    def join(self, *, expect_error: bool = False) -> None:
        self._thread.join(WAIT + SLACK)
        assert not self._thread.is_alive(), "a send did not return within its deadline"
        if self.error is not None and not expect_error:
            raise self.error


def _exchange(sender: Channel, receiver: Channel, messages: list[tuple[bytes, bytes]]) -> None:
    thread = _Sender(sender, messages)
    try:
        for index, (head, tail) in enumerate(messages):
            got_head, got_tail = _received(receiver.recv(WAIT))
            assert got_head == head, f"message {index}: wrong head ({len(got_head)} bytes, not {len(head)})"
            assert got_tail == tail, f"message {index}: wrong tail ({len(got_tail)} bytes, not {len(tail)})"
    finally:
        thread.join()


def _mixed(count: int, tag: bytes) -> list[tuple[bytes, bytes]]:
    tail_sizes = (0, 1, 63, 64, 65, 4096, 0, 300)
    return [
        (tag + b"%05d" % i + _pattern(i, i % 97), _pattern(i + 1, tail_sizes[i % len(tail_sizes)]))
        for i in range(count)
    ]


def check_order(make_pair: PairMaker) -> None:
    """Messages arrive whole and in order: each way, then both ways at once."""
    with make_pair() as (left, right):
        _exchange(left, right, _mixed(300, b"L"))
        _exchange(right, left, _mixed(300, b"R"))
        errors: list[BaseException] = []

        def other_way() -> None:
            try:
                _exchange(right, left, _mixed(300, b"r"))
            except BaseException as exc:  # re-raised below
                errors.append(exc)

        thread = threading.Thread(target=other_way, name="rlmesh-check-duplex", daemon=True)
        thread.start()
        _exchange(left, right, _mixed(300, b"l"))
        thread.join(WAIT + SLACK)
        assert not thread.is_alive(), "the other direction did not finish"
        if errors:
            raise errors[0]


def check_sizes(make_pair: PairMaker, *, large: int = 3 << 20) -> None:
    """Empty, small and large (``large`` bytes: past a ring, spilled to the socket) messages, in order."""
    small = (b"small", b"")
    messages = [
        (b"", b""),
        small,
        (b"", _pattern(1, 64)),
        (_pattern(2, large), b""),
        small,
        (b"h", _pattern(3, large)),
        small,
        (_pattern(4, large // 2), _pattern(5, large // 2 + 1)),
        (b"", b""),
        small,
    ]
    with make_pair() as (left, right):
        _exchange(left, right, messages)
        _exchange(right, left, messages)


def check_peer_dies_mid_message(make_pair: PairMaker) -> None:
    """A sender whose socket closes half-way through a large message: the receiver raises BrokenError."""
    with make_pair() as (left, right):
        # Larger than any socket buffer, so the send is still going when the peer "dies".
        size = min(64 << 20, left.stream.max_frame // 2)
        sender = _Sender(left, [(b"doomed", _pattern(7, size))])
        time.sleep(0.2)
        # A process that dies says nothing: its socket just closes (no channel close).
        left.stream.close()
        start = time.monotonic()
        try:
            message = right.recv(WAIT)
        except BrokenError:
            pass
        else:
            head, tail = _received(message)
            raise AssertionError(f"received a message from a dead peer ({len(head)} + {len(tail)} bytes)")
        assert time.monotonic() - start < SLACK, "the peer's death was noticed late"
        sender.join(expect_error=True)


def check_close(make_pair: PairMaker) -> None:
    """Either side closes (channel, then stream, as a session does): the other drains, then BrokenError."""
    for closer_is_left in (True, False):
        with make_pair() as (left, right):
            closer, other = (left, right) if closer_is_left else (right, left)
            before = _mixed(5, b"last words")
            for head, tail in before:
                closer.send(head, _tail(tail), timeout=WAIT)
            closer.close()
            closer.close()  # idempotent
            closer.stream.close()
            for head, tail in before:
                assert _received(other.recv(WAIT)) == (head, tail), "a message sent before close was lost"
            start = time.monotonic()
            try:
                message = other.recv(WAIT)
            except BrokenError:
                pass
            else:
                message.done()
                raise AssertionError("received a message after the peer closed")
            assert time.monotonic() - start < SLACK, "the peer's close was noticed late"
            other.close()
            other.close()


def _timed(call: Callable[[], Any], timeout: float) -> None:
    start = time.monotonic()
    try:
        call()
    except OperationTimeout:
        elapsed = time.monotonic() - start
        assert elapsed >= timeout * 0.9, f"a {timeout}s deadline fired after {elapsed:.3f}s"
        assert elapsed < timeout + SLACK, f"a {timeout}s deadline fired after {elapsed:.3f}s"
        return
    raise AssertionError("the call returned instead of timing out")


def check_deadlines(make_pair: PairMaker) -> None:
    """Receive and send deadlines fire near their time; a check callback interrupts a wait."""
    with make_pair() as (left, right):
        _timed(lambda: right.recv(0.2), 0.2)
        # A receive that timed out leaves the channel usable.
        _exchange(left, right, [(b"after a timeout", b"")])

        class Stop(Exception):
            pass

        calls = [0]

        def stop() -> None:
            calls[0] += 1
            if calls[0] >= 3:
                raise Stop

        start = time.monotonic()
        try:
            right.recv(None, stop)
        except Stop:
            pass
        else:
            raise AssertionError("the check did not interrupt the receive")
        assert time.monotonic() - start < SLACK, "the check was called too seldom"
        _exchange(left, right, [(b"after a check", b"")])

        # Nobody reads `right`: sends fill the ring or the socket, then one times out.
        chunk = _pattern(9, 16 << 10)
        for _ in range(100_000):
            start = time.monotonic()
            try:
                left.send(b"fill", _tail(chunk), timeout=0.2)
            except OperationTimeout:
                elapsed = time.monotonic() - start
                assert elapsed < 0.2 + SLACK, f"a 0.2s send deadline fired after {elapsed:.3f}s"
                return
        raise AssertionError("100,000 unread messages were accepted: no send ever timed out")


#: Every check by name, for test modules that report them one by one.
CHANNEL_CHECKS: dict[str, Callable[[PairMaker], None]] = {
    "order": check_order,
    "sizes": check_sizes,
    "peer_dies_mid_message": check_peer_dies_mid_message,
    "close": check_close,
    "deadlines": check_deadlines,
}


def check_channel(make_pair: PairMaker) -> None:
    """Run every check of :data:`CHANNEL_CHECKS` on fresh pairs from ``make_pair``.

    Args:
        make_pair: returns a context manager yielding two connected channels
            ``(left, right)`` (each with its own end of the socket) and
            releasing both, their streams and their memory, on exit, also
            when a check closed some of them already.

    Raises:
        AssertionError: a check failed (the message says which property).
        RLMeshError: a channel raised where the check expected it to work.
    """
    for check in CHANNEL_CHECKS.values():
        check(make_pair)
