from __future__ import annotations

import socket
import struct
import threading

import pytest

from rlmesh.errors import BrokenError, FramingError, OperationTimeout
from rlmesh.net import framing
from rlmesh.net.stream import SocketStream


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    left, right = SocketStream(a, max_frame=1 << 20), SocketStream(b, max_frame=1 << 20)
    yield left, right
    left.close()
    right.close()


def test_round_trip_with_an_aligned_tail(pair) -> None:
    left, right = pair
    tail = [b"x" * 100, b"\0" * 28, memoryview(b"abc")]
    left.send(b"head-bytes", tail, timeout=5)
    head, body_tail, address = right.recv_frame(5)
    assert bytes(head) == b"head-bytes"
    assert bytes(body_tail) == b"x" * 100 + b"\0" * 28 + b"abc"
    assert address % 64 == 0
    left.send(b"", timeout=5)
    head, body_tail, _ = right.recv_frame(5)
    assert bytes(head) == b"" and len(body_tail) == 0


def test_an_oversized_length_is_rejected_before_allocating(pair, monkeypatch) -> None:
    left, right = pair
    allocations: list[int] = []
    original = framing.aligned_buffer
    monkeypatch.setattr("rlmesh.net.stream.aligned_buffer", lambda n: (allocations.append(n), original(n))[1])
    left._sock.sendall(struct.pack("<I", 0xFFFF_FFF0))
    with pytest.raises(FramingError, match="exceeds the limit"):
        right.recv_frame(5)
    assert allocations == []
    with pytest.raises(BrokenError):  # the stream is unusable after a framing error
        right.recv_frame(5)


def test_a_frame_too_small_for_its_header_is_rejected(pair) -> None:
    left, right = pair
    left._sock.sendall(struct.pack("<I", 2) + b"ab")
    with pytest.raises(FramingError):
        right.recv_frame(5)


def test_a_head_length_beyond_the_body_is_rejected(pair) -> None:
    left, right = pair
    left._sock.sendall(struct.pack("<II", 8, 1000) + b"abcd")
    with pytest.raises(FramingError, match="overruns"):
        right.recv_frame(5)


def test_the_sender_refuses_frames_over_the_limit(pair) -> None:
    left, _ = pair
    with pytest.raises(FramingError, match="exceeds"):
        left.send(b"h", [b"\0" * (2 << 20)], timeout=5)


def test_eof_mid_frame_and_at_a_boundary(pair) -> None:
    left, right = pair
    left._sock.sendall(struct.pack("<II", 100, 4) + b"abcd")
    left.close()
    with pytest.raises(BrokenError, match="middle of a frame"):
        right.recv_frame(5)
    a, b = socket.socketpair()
    s1, s2 = SocketStream(a), SocketStream(b)
    s1.close()
    with pytest.raises(BrokenError, match="closed the connection"):
        s2.recv_frame(5)
    s2.close()


def test_deadlines(pair) -> None:
    left, right = pair
    with pytest.raises(OperationTimeout):
        right.recv_frame(0.05)
    left.send(b"later", timeout=5)  # the stream stays usable after a timeout between frames
    assert bytes(right.recv_frame(5)[0]) == b"later"
    left._sock.sendall(struct.pack("<II", 100, 4))  # half a frame, then silence
    with pytest.raises(OperationTimeout):
        right.recv_frame(0.1)
    with pytest.raises(BrokenError):
        right.recv_frame(0.1)


def test_large_frames_reuse_their_buffer_only_when_free(pair) -> None:
    left, right = pair
    big = b"\x01" * (256 << 10)

    def send_two() -> None:
        left.send(b"a", [big], timeout=5)
        left.send(b"b", [big], timeout=5)

    thread = threading.Thread(target=send_two)
    thread.start()
    head1, tail1, addr1 = right.recv_frame(5)
    # A view of frame 1 is alive: frame 2 must not land in its buffer.
    head2, tail2, addr2 = right.recv_frame(5)
    thread.join()
    assert addr1 != addr2 and bytes(tail1[:4]) == b"\x01" * 4
    # Frame 2's buffer is the one kept for reuse; once nothing views it, frame 3 lands there.
    del head1, tail1, head2, tail2
    left.send(b"c", [big], timeout=5)
    head3, tail3, addr3 = right.recv_frame(5)
    assert addr3 == addr2 and bytes(tail3[-4:]) == b"\x01" * 4
    # While frame 3 is viewed, frame 4 gets a buffer of its own.
    left.send(b"d", [big], timeout=5)
    _, _, addr4 = right.recv_frame(5)
    assert addr4 != addr3 and bytes(tail3[:1]) == b"\x01"


def test_peer_gone_detection(pair) -> None:
    left, right = pair
    assert not right.peer_gone()
    left.send(b"data", timeout=5)
    assert not right.peer_gone()  # data waiting is not EOF
    left.close()
    right.recv_frame(5)
    assert right.peer_gone()


def test_tcp_streams_disable_nagle() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        stream = SocketStream(client)
        assert stream._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert stream._sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
        stream.close()
    finally:
        server.close()
        listener.close()
