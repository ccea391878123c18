"""SocketStream over socketpair(): frames, limits, the peer going away, close.

Deadline semantics have their own module (test_stream_deadlines.py); every
wait here has a generous deadline so that a hang fails instead of blocking.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from rlmesh.errors import BrokenError, ClosedError, FramingError
from rlmesh.net.framing import FRAME_ALIGN, PREFIX
from rlmesh.net.stream import SocketStream

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0


@pytest.fixture(params=["unix", "tcp"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[SocketStream, SocketStream, socket.socket]]:
    """Two connected streams, and the raw socket under the first one (for hand-made bytes)."""
    if request.param == "unix":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            a = socket.create_connection(listener.getsockname())
            b, _ = listener.accept()
    raw = a.dup()
    left, right = SocketStream(a, max_frame=1 << 20), SocketStream(b, max_frame=1 << 20)
    try:
        yield left, right, raw
    finally:
        left.close()
        right.close()
        raw.close()


def test_frames_carry_a_head_and_an_aligned_tail_in_order(pair) -> None:
    left, right, _ = pair
    frames = [
        (b"", []),
        (b"h", []),
        (b"head", [b"x" * 100]),
        (b"", [b"a" * 64, b"b" * 3]),
        (b"z" * 70, [b"t"]),
    ]
    for head, tail in frames:
        left.send(head, tail, timeout=WAIT)
    for head, tail in frames:
        got_head, got_tail, address = right.recv_frame(WAIT)
        assert bytes(got_head) == head
        assert bytes(got_tail) == b"".join(tail)
        if tail:
            assert address % FRAME_ALIGN == 0


def test_a_frame_larger_than_the_socket_buffers_arrives_whole(pair) -> None:
    left, right, _ = pair
    data = os.urandom((1 << 20) - 4096)
    sender = threading.Thread(target=left.send, args=(b"big", [data]), kwargs={"timeout": WAIT})
    sender.start()
    head, tail, _ = right.recv_frame(WAIT)
    sender.join(WAIT)
    assert (bytes(head), bytes(tail)) == (b"big", data)


def test_a_frame_over_the_limit_is_refused_before_sending(pair) -> None:
    left, right, _ = pair
    with pytest.raises(FramingError, match="exceeds the limit"):
        left.send(b"h", [bytes(1 << 20)], timeout=WAIT)
    left.send(b"still usable", timeout=WAIT)  # nothing was sent: the stream is fine
    assert bytes(right.recv_frame(WAIT)[0]) == b"still usable"


def test_a_length_prefix_over_the_limit_breaks_the_stream_without_allocating(pair) -> None:
    _, right, raw = pair
    raw.sendall(PREFIX.pack(0xFFFFFFF0))  # 4 GiB promised
    with pytest.raises(FramingError, match="exceeds the limit"):
        right.recv_frame(WAIT)
    with pytest.raises(BrokenError):
        right.recv_frame(WAIT)


def test_a_tighter_limit_applies_to_one_frame(pair) -> None:
    left, right, _ = pair
    left.send(b"x" * 200, timeout=WAIT)
    with pytest.raises(FramingError):
        right.recv_frame(WAIT, limit=100)


@pytest.mark.parametrize(
    "body, match",
    [
        (struct.pack("<I", 2), "shorter than its own header"),
        (struct.pack("<II", 8, 100) + b"1234", "overruns"),
    ],
)
def test_malformed_frames_break_the_stream(pair, body: bytes, match: str) -> None:
    _, right, raw = pair
    raw.sendall(body)
    with pytest.raises(FramingError, match=match):
        right.recv_frame(WAIT)
    assert right.peer_gone()  # a broken stream counts its peer as gone


def test_the_peer_closing_between_frames_is_broken(pair) -> None:
    left, right, _ = pair
    left.send(b"last", timeout=WAIT)
    left.close()
    assert bytes(right.recv_frame(WAIT)[0]) == b"last"  # what was sent before comes first
    with pytest.raises(BrokenError, match="closed the connection"):
        right.recv_frame(WAIT)


def test_the_peer_closing_mid_frame_is_broken_not_a_short_frame(pair) -> None:
    left, right, raw = pair
    raw.sendall(struct.pack("<II", 100, 4) + b"only part")
    raw.close()
    left.close()
    with pytest.raises(BrokenError, match="middle of a frame"):
        right.recv_frame(WAIT)


def test_peer_gone_sees_eof_but_not_queued_data(pair) -> None:
    left, right, _ = pair
    assert not right.peer_gone()
    left.send(b"queued", timeout=WAIT)
    assert not right.peer_gone()
    assert bytes(right.recv_frame(WAIT)[0]) == b"queued"
    left.close()
    assert right.peer_gone()


def test_close_is_idempotent_and_use_after_close_is_closed_error(pair) -> None:
    left, right, _ = pair
    left.close()
    left.close()
    assert left.closed and left.fileno() == -1
    assert "closed" in repr(left)
    with pytest.raises(ClosedError):
        left.send(b"x", timeout=WAIT)
    with pytest.raises(ClosedError):
        left.recv_frame(WAIT)
    with pytest.raises(BrokenError):
        right.recv_frame(WAIT)


def test_sending_to_a_closed_peer_is_broken(pair) -> None:
    left, right, _ = pair
    right.close()
    with pytest.raises(BrokenError):
        for _ in range(1000):  # TCP may take the first sends into its buffer
            left.send(b"anyone?", [bytes(4096)], timeout=WAIT)


def test_wait_readable_sees_a_frame(pair) -> None:
    left, right, _ = pair
    assert not right.wait_readable(0.05)
    left.send(b"ready", timeout=WAIT)
    assert right.wait_readable(WAIT)
    assert bytes(right.recv_frame(WAIT)[0]) == b"ready"


def test_peer_uid_over_a_unix_socket_is_ours() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with SocketStream(a) as left, SocketStream(b):
        assert left.is_unix
        assert left.peer_uid == os.geteuid()
