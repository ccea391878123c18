from __future__ import annotations

import os
import resource
import socket
import struct
import threading
import time

import pytest

from rlmesh import _spin
from rlmesh._spin import SpinPolicy
from rlmesh.errors import BrokenError, FramingError, OperationTimeout
from rlmesh.net import framing, parse_address
from rlmesh.net.listener import Listener
from rlmesh.net.stream import SocketStream, connect


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


def test_a_send_into_a_full_socket_waits_within_its_deadline() -> None:
    a, b = socket.socketpair()
    with SocketStream(a, max_frame=64 << 20) as left, SocketStream(b, max_frame=64 << 20) as right:
        big = b"\x02" * (16 << 20)  # far more than the socket buffers hold
        start = time.monotonic()
        with pytest.raises(OperationTimeout, match="sending"):
            left.send(b"h", [big], timeout=0.2)
        assert 0.15 < time.monotonic() - start < 2
        with pytest.raises(BrokenError, match="half-way"):  # part of the frame went out
            left.send(b"h", timeout=1)
        # The reader sees the truncated frame as a frame that never ends.
        with pytest.raises(OperationTimeout):
            right.recv_frame(0.2)


def test_a_sender_waits_for_the_reader_to_drain_a_large_frame(pair) -> None:
    left, right = pair
    left.max_frame = right.max_frame = 64 << 20
    big = bytes(range(256)) * (32 << 12)  # 8 MiB
    errors: list[BaseException] = []

    def send() -> None:
        try:
            left.send(b"big", [big], timeout=10)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=send)
    thread.start()
    time.sleep(0.05)  # the sender is now waiting for room
    head, tail, _ = right.recv_frame(10)
    thread.join(10)
    assert not errors and bytes(head) == b"big" and tail == big


class CountingPoll:
    """Wraps a poll object and counts the calls that could not block."""

    def __init__(self, poller) -> None:
        self.poller = poller
        self.nonblocking = 0

    def poll(self, timeout=None):
        if timeout == 0:
            self.nonblocking += 1
        return self.poller.poll(timeout)


def reply_later(stream: SocketStream, delay: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), stream.send(b"late", timeout=5)))
    thread.start()
    return thread


@pytest.fixture
def machine_busy(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The load probe, replaced: what is tested is the decision, not this machine's load."""
    busy = [False]
    monkeypatch.setattr(_spin._CONTENTION, "check", lambda now: busy[0])
    return busy


def test_a_receiver_spins_before_it_sleeps_unless_told_not_to(machine_busy: list[bool]) -> None:
    for policy, spins in ((SpinPolicy(maximum=0.5, initial=0.5), True), (SpinPolicy(0), False)):
        a, b = socket.socketpair()
        with SocketStream(a) as left, SocketStream(b, spin=policy) as right:
            counter = CountingPoll(right._readable)
            right._readable = counter  # type: ignore[assignment]
            thread = reply_later(left, 0.05)
            assert bytes(right.recv_frame(5)[0]) == b"late"
            thread.join()
            # Spinning polls without blocking many times over 50 ms; not spinning, once.
            assert (counter.nonblocking > 100) is spins, counter.nonblocking


def test_a_busy_machine_sends_the_wait_straight_to_poll(machine_busy: list[bool]) -> None:
    # The socket stream's spin follows the same load gate as the rings' (SpinPolicy.current).
    policy = SpinPolicy(maximum=0.5, initial=0.5, enabled=True)
    a, b = socket.socketpair()
    with SocketStream(a) as left, SocketStream(b, spin=policy) as right:
        counter = CountingPoll(right._readable)
        right._readable = counter  # type: ignore[assignment]
        assert not right.wait_readable(0.01)
        assert policy.spins == 1 and policy.gated == 0 and counter.nonblocking > 1
        machine_busy[0] = True
        before, budget = counter.nonblocking, policy.budget
        thread = reply_later(left, 0.05)
        assert bytes(right.recv_frame(5)[0]) == b"late"
        thread.join()
        assert policy.spins == 1 and policy.gated == 1
        assert counter.nonblocking == before  # not one spinning poll
        assert policy.budget == budget  # a wait that did not spin teaches the policy nothing


def test_idle_waits_shrink_the_spin_budget(machine_busy: list[bool]) -> None:
    a, b = socket.socketpair()
    policy = SpinPolicy(maximum=500e-6, initial=500e-6)
    with SocketStream(a) as left, SocketStream(b, spin=policy) as right:
        for _ in range(40):  # a connection that stays idle: every wait times out
            assert not right.wait_readable(0.005)
        assert policy.budget == policy.minimum
        left.send(b"x", timeout=5)  # and a frame still arrives at once
        assert bytes(right.recv_frame(5)[0]) == b"x"


def test_descriptors_beyond_fd_setsize(tmp_path) -> None:
    """poll(2) everywhere: a busy process's descriptors pass select()'s limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1400
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard descriptor limit ({hard}) is below {wanted}")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    filler: list[int] = []
    try:
        while not filler or filler[-1] < 1100:  # push every new descriptor past 1024
            filler.append(os.open(os.devnull, os.O_RDONLY))
        address = parse_address(f"unix://{tmp_path}/high.sock")
        with Listener(address) as listener:
            assert listener.fileno() > 1024
            assert listener.accept(0.01) is None  # a timed wait with nothing to accept
            client = connect(address, timeout=5)
            accepted = listener.accept(5)
            assert accepted is not None
            with client, SocketStream(accepted) as server:
                assert server.fileno() > 1024 and client.fileno() > 1024
                assert not server.wait_readable(0.01) and not server.peer_gone()
                client.send(b"ping", [b"\x03" * 100], timeout=5)
                head, tail, _ = server.recv_frame(5)
                assert bytes(head) == b"ping" and bytes(tail) == b"\x03" * 100
                client.close()
                assert server.peer_gone()
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
