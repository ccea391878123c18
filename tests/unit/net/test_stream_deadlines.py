"""Timeouts on socket streams and listeners: None waits, 0 never waits, a positive number is a deadline."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlmesh._deadline import Deadline
from rlmesh._spin import SpinPolicy
from rlmesh.errors import BrokenError, ConnectError, OperationTimeout
from rlmesh.net import Address
from rlmesh.net.listener import Listener
from rlmesh.net.stream import SocketStream, connect


@pytest.fixture
def pair() -> Iterator[tuple[SocketStream, SocketStream]]:
    a, b = socket.socketpair()
    left, right = SocketStream(a, max_frame=1 << 20), SocketStream(b, max_frame=1 << 20)
    yield left, right
    left.close()
    right.close()


def test_zero_takes_a_frame_already_there_and_never_waits(pair: tuple[SocketStream, SocketStream]) -> None:
    left, right = pair
    # A spin budget of a whole second: a timeout of 0 must not spend any of it.
    right.spin = SpinPolicy(maximum=1.0, initial=1.0)
    start = time.monotonic()
    for _ in range(20):
        with pytest.raises(OperationTimeout) as info:
            right.recv_frame(0)
        assert not right.wait_readable(0)
    assert time.monotonic() - start < 0.5
    assert info.value.timeout == 0
    left.send(b"here", [b"tail"], timeout=0)  # room in the socket buffer: sent without waiting
    assert right.wait_readable(0)
    head, tail, _ = right.recv_frame(0)
    assert bytes(head) == b"here" and bytes(tail) == b"tail"


def test_none_waits_for_a_late_frame(pair: tuple[SocketStream, SocketStream]) -> None:
    left, right = pair
    timer = threading.Timer(0.1, left.send, args=(b"late",), kwargs={"timeout": 5})
    timer.start()
    try:
        start = time.monotonic()
        assert bytes(right.recv_frame(None)[0]) == b"late"
        assert time.monotonic() - start >= 0.05
    finally:
        timer.join(timeout=10)


def test_one_deadline_covers_the_prefix_and_the_body(pair: tuple[SocketStream, SocketStream]) -> None:
    left, right = pair

    def trickle() -> None:
        # The prefix and part of the body now, the rest never: the body must
        # get what is left of the call's deadline, not a fresh timeout.
        time.sleep(0.15)
        left._sock.sendall(struct.pack("<II", 100, 4) + b"abcd")

    thread = threading.Thread(target=trickle)
    thread.start()
    start = time.monotonic()
    with pytest.raises(OperationTimeout) as info:
        right.recv_frame(0.3)
    elapsed = time.monotonic() - start
    thread.join(timeout=10)
    assert 0.25 <= elapsed < 0.45 + 0.2, elapsed
    assert info.value.timeout == 0.3
    with pytest.raises(BrokenError):  # a frame cut off half-way breaks the stream
        right.recv_frame(0)


def test_a_shared_deadline_spans_a_send_and_a_receive(pair: tuple[SocketStream, SocketStream]) -> None:
    left, right = pair
    deadline = Deadline.after(0.3)
    left.send(b"ping", timeout=deadline)
    assert bytes(right.recv_frame(deadline)[0]) == b"ping"
    time.sleep(0.15)
    start = time.monotonic()
    assert not right.wait_readable(deadline)
    with pytest.raises(OperationTimeout) as info:
        right.recv_frame(deadline)
    assert time.monotonic() - start < 0.3  # what was left, not 0.3 s for each wait
    assert info.value.timeout == 0.3


def test_a_send_with_zero_into_a_full_socket_fails_at_once() -> None:
    a, b = socket.socketpair()
    left, right = SocketStream(a, max_frame=8 << 20), SocketStream(b, max_frame=8 << 20)
    for sock in (a, b):  # small buffers (the stream asked for large ones)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        start = time.monotonic()
        with pytest.raises(OperationTimeout) as info:
            left.send(b"h", [b"\0" * (4 << 20)], timeout=0)
        assert time.monotonic() - start < 0.5
        assert info.value.timeout == 0
        with pytest.raises(BrokenError):  # part of the frame went out
            left.send(b"h", timeout=0)
    finally:
        left.close()
        right.close()


@pytest.mark.parametrize("bad", [-1, float("nan")])
def test_negative_or_nan_timeouts_are_refused(
    pair: tuple[SocketStream, SocketStream], bad: float, tmp_path: Path
) -> None:
    left, right = pair
    with pytest.raises(ValueError):
        left.send(b"x", timeout=bad)
    with pytest.raises(ValueError):
        right.recv_frame(bad)
    with pytest.raises(ValueError):
        right.wait_readable(bad)
    address = Address("unix", path=str(tmp_path / "s.sock"))
    with Listener(address) as listener:
        with pytest.raises(ValueError):
            listener.accept(bad)
        with pytest.raises(ValueError):
            connect(address, timeout=bad)
    # Nothing was sent or broken by a refused timeout.
    left.send(b"ok", timeout=5)
    assert bytes(right.recv_frame(5)[0]) == b"ok"


def test_accept_and_connect_with_zero(tmp_path: Path) -> None:
    address = Address("unix", path=str(tmp_path / "s.sock"))
    with Listener(address) as listener:
        start = time.monotonic()
        assert listener.accept(0) is None  # nobody is connecting: no wait
        assert time.monotonic() - start < 0.1
        # A Unix connect completes at once while the listen queue has room.
        stream = connect(address, timeout=0)
        try:
            sock = listener.accept(0)
            assert sock is not None
            sock.close()
        finally:
            stream.close()
        start = time.monotonic()
        assert listener.accept(0.1) is None
        assert time.monotonic() - start >= 0.09


def test_timeouts_longer_than_the_os_takes(tmp_path: Path) -> None:
    # Sockets refuse timeouts past about 9.2e9 s (OverflowError): these wait
    # as None would, and still end when their event comes.
    address = Address("unix", path=str(tmp_path / "s.sock"))
    with Listener(address) as listener:
        stream = connect(address, timeout=1e12)
        try:
            sock = listener.accept(1e12)
            assert sock is not None
            peer = SocketStream(sock)
            try:
                peer.send(b"hi", timeout=1e12)
                assert bytes(stream.recv_frame(1e12)[0]) == b"hi"
            finally:
                peer.close()
        finally:
            stream.close()


def test_a_tcp_connect_with_zero_times_out() -> None:
    # A TCP connection needs a round trip, which "never wait" does not allow.
    with Listener(Address("tcp", host="127.0.0.1", port=0)) as listener:
        with pytest.raises(ConnectError, match="timed out"):
            connect(listener.address, timeout=0)
