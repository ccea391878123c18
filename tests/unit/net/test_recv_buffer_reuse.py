"""Reusing a stream's large receive buffer only when no view of it is alive.

The rule is the buffer protocol's (a bytearray cannot resize while exported),
not reference counts, whose values change across CPython versions.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from rlmesh._buffers import buffer_address
from rlmesh.net import framing
from rlmesh.net.stream import SocketStream, _unexported

BIG = 256 << 10  # over the reuse threshold


@pytest.fixture
def pair() -> Iterator[tuple[SocketStream, SocketStream]]:
    a, b = socket.socketpair()
    left, right = SocketStream(a, max_frame=1 << 20), SocketStream(b, max_frame=1 << 20)
    yield left, right
    left.close()
    right.close()


@pytest.fixture
def allocations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    original = framing.aligned_buffer

    def counting(nbytes: int) -> tuple[memoryview, int]:
        sizes.append(nbytes)
        return original(nbytes)

    monkeypatch.setattr("rlmesh.net.stream.aligned_buffer", counting)
    return sizes


def receive(left: SocketStream, right: SocketStream, fill: int) -> tuple[memoryview, memoryview, int]:
    """Send a large frame of ``fill`` bytes from ``left`` and receive it on ``right``."""
    # From a thread: a 256 KiB frame may not fit the socket buffer at once.
    thread = threading.Thread(target=left.send, args=(b"h", [bytes([fill]) * BIG]), kwargs={"timeout": 10})
    thread.start()
    try:
        return right.recv_frame(10)
    finally:
        thread.join(timeout=10)


def test_the_probe_reads_exports_and_changes_nothing() -> None:
    raw = bytearray(b"abcdef")
    address = buffer_address(raw)
    assert _unexported(raw)
    assert raw == b"abcdef" and buffer_address(raw) == address
    view = memoryview(raw)[2:4]
    assert not _unexported(raw)
    assert raw == b"abcdef"
    array = np.frombuffer(view, dtype=np.uint8)
    view.release()  # the array still holds its own export
    assert not _unexported(raw)
    del array
    assert _unexported(raw)
    assert raw == b"abcdef" and buffer_address(raw) == address


def test_a_released_buffer_is_reused(pair: tuple[SocketStream, SocketStream], allocations: list[int]) -> None:
    left, right = pair
    head, tail, first = receive(left, right, 1)
    head.release()
    tail.release()
    for fill in range(2, 6):
        head, tail, address = receive(left, right, fill)
        assert address == first and bytes(tail[-1:]) == bytes([fill])
        head.release()
        tail.release()
    assert len(allocations) == 1  # steady state allocates nothing


@pytest.mark.parametrize("holder", ["tail", "head", "slice", "numpy", "view-of-view"])
def test_a_live_view_keeps_its_frame_intact(
    pair: tuple[SocketStream, SocketStream], allocations: list[int], holder: str
) -> None:
    left, right = pair
    head, tail, first = receive(left, right, 1)
    held: object = {
        "tail": tail,
        "head": head,
        "slice": tail[100:200],
        "numpy": np.frombuffer(tail, dtype=np.uint8),
        "view-of-view": memoryview(tail),
    }[holder]
    del head, tail
    # Frame 2 must not land in frame 1's buffer while anything views it...
    head2, tail2, second = receive(left, right, 2)
    assert second != first
    data = bytes(memoryview(held))  # type: ignore[arg-type]
    assert data and set(data) <= {1, ord("h")}, "frame 1 was overwritten"
    # ...and once nothing does, frame 2's buffer (the spare now) is reused.
    del held, head2, tail2
    _, _, third = receive(left, right, 3)
    assert third == second
    assert len(allocations) == 2
