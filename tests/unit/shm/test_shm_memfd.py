"""Sealed memfd segments: creation, the receiver's checks, and descriptors counted after each refusal."""

from __future__ import annotations

import array
import errno
import fcntl
import mmap
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlmesh.errors import ShmError
from rlmesh.net.framing import PREFIX
from rlmesh.net.stream import MAX_FDS, SocketStream
from rlmesh.shm import PeerMemory, Segment, SegmentKind, Slab
from rlmesh.shm._layout import HEADER, LAYOUT_VERSION, MAGIC
from rlmesh.shm._memfd import REQUIRED_SEALS

SIZE = 1 << 16


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def fd_count() -> Iterator[int]:
    """The number of open descriptors before the test; the test must end with the same."""
    before = open_fds()
    yield before
    assert open_fds() == before


def forged_memfd(size: int = SIZE, *, seals: int = REQUIRED_SEALS, header: bytes | None = None) -> int:
    """A memfd made by hand, as a hostile peer would: chosen seals and header bytes."""
    fd = os.memfd_create("rlm-forged", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if header is None:
        header = HEADER.pack(MAGIC, LAYOUT_VERSION, int(SegmentKind.OTHER), size, 1, 1, 1)
    os.pwrite(fd, header, 0)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def test_a_created_memfd_is_sealed_nameless_and_maps_on_the_other_side(fd_count: int) -> None:
    shm_before = set(os.listdir("/dev/shm"))
    with Segment.create_memfd(SIZE, SegmentKind.SLAB) as seg:
        assert seg.is_memfd and seg.is_creator and seg.size == SIZE
        fd = seg.fileno()
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:rlm-")
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & REQUIRED_SEALS == REQUIRED_SEALS
        assert not fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE  # both sides write
        assert not os.get_inheritable(fd)
        # No entry in /dev/shm: nothing to unlink, nothing a janitor must find.
        assert {n for n in os.listdir("/dev/shm") if n.startswith("rlm-")} <= shm_before
        peer = Segment.attach_memfd(os.dup(fd), SIZE)
        seg.buf[100:104] = b"abcd"
        assert bytes(peer.buf[100:104]) == b"abcd"
        peer.buf[200] = 7
        assert seg.buf[200] == 7
        peer.close()
        # "Unlink" closes the creator's descriptor; the mapping stays.
        seg.unlink()
        with pytest.raises(ShmError):
            seg.fileno()
        assert bytes(seg.buf[100:104]) == b"abcd"


def test_a_sealed_memfd_cannot_be_shrunk_or_grown_by_anyone(fd_count: int) -> None:
    with Segment.create_memfd(SIZE) as seg:
        reader = Segment.attach_memfd(os.dup(seg.fileno()), SIZE, readonly=True)
        for size in (0, SIZE // 2, SIZE * 2):
            with pytest.raises(OSError) as info:
                os.ftruncate(seg.fileno(), size)
            assert info.value.errno == errno.EPERM
        with pytest.raises(OSError) as info:
            os.posix_fallocate(seg.fileno(), 0, SIZE * 2)
        assert info.value.errno == errno.EPERM
        # The last page is still there to read: no SIGBUS.
        seg.buf[SIZE - 1] = 9
        assert reader.buf[SIZE - 1] == 9
        reader.close()


def test_a_slab_of_memfds_announces_segments_that_a_peer_maps_by_descriptor(fd_count: int) -> None:
    with Slab(segment_size=SIZE, memfd=True) as slab, PeerMemory() as peer:
        block = slab.alloc(100)
        slab.view(block)[:5] = b"hello"
        for seg_id, _name, size in slab.take_new_segments():
            peer.add_memfd(seg_id, os.dup(slab.segments[seg_id].fileno()), size)
        view = peer.view(block.handle)
        assert bytes(view[:5]) == b"hello"
        del view


def _refused(fd: int, size: int = SIZE, match: str = "") -> None:
    with pytest.raises(ShmError, match=match):
        Segment.attach_memfd(fd, size)
    with pytest.raises(OSError):
        os.fstat(fd)  # consumed: closed even though it was refused


@pytest.mark.parametrize(
    "seals",
    [0, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW, fcntl.F_SEAL_SEAL, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL],
    ids=["unsealed", "no-seal-seal", "seal-only", "no-shrink-seal"],
)
def test_a_memfd_missing_a_seal_is_refused(seals: int, fd_count: int) -> None:
    _refused(forged_memfd(seals=seals), match="lacks seals")


def test_a_memfd_of_another_size_than_announced_is_refused(fd_count: int) -> None:
    _refused(forged_memfd(SIZE), SIZE * 2, match="announced")
    _refused(forged_memfd(SIZE), SIZE - 4096, match="announced")


def test_a_pipe_is_refused(fd_count: int) -> None:
    r, w = os.pipe()
    os.close(w)
    _refused(r, match="not a regular file")


def test_a_regular_file_is_refused(tmp_path: Path, fd_count: int) -> None:
    path = tmp_path / "segment"
    path.write_bytes(HEADER.pack(MAGIC, LAYOUT_VERSION, 9, SIZE, 1, 1, 1).ljust(SIZE, b"\0"))
    _refused(os.open(path, os.O_RDWR), match="not a memfd")


def test_a_named_posix_segment_is_refused(fd_count: int) -> None:
    with Segment.create(SIZE) as named:
        _refused(os.open(f"/dev/shm/{named.name}", os.O_RDWR), match="not a memfd")


@pytest.mark.parametrize(
    "header",
    [
        b"\xff" * 64,
        HEADER.pack(b"RLMSEG99", LAYOUT_VERSION, 9, SIZE, 1, 1, 1),
        HEADER.pack(MAGIC, LAYOUT_VERSION + 7, 9, SIZE, 1, 1, 1),
        HEADER.pack(MAGIC, LAYOUT_VERSION, 9, SIZE * 4, 1, 1, 1),
    ],
    ids=["garbage", "magic", "version", "size-in-header"],
)
def test_a_memfd_with_a_bad_header_is_refused(header: bytes, fd_count: int) -> None:
    _refused(forged_memfd(header=header), match="layout")


def test_a_closed_descriptor_is_refused() -> None:
    fd = forged_memfd()
    os.close(fd)
    with pytest.raises(ShmError):
        Segment.attach_memfd(fd, SIZE)


# -- descriptors on a stream -------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[SocketStream, SocketStream]]:
    a, b = socket.socketpair()
    sa, sb = SocketStream(a), SocketStream(b)
    try:
        yield sa, sb
    finally:
        sa.close()
        sb.close()


def test_descriptors_travel_with_a_frame_close_on_exec(pair: tuple[SocketStream, SocketStream]) -> None:
    sender, receiver = pair
    before = open_fds()
    receiver.accept_fds = 4
    with Segment.create_memfd(SIZE) as seg:
        sender.send(b"head", fds=[seg.fileno()])
        head, _, _ = receiver.recv_frame(2.0)
        assert bytes(head) == b"head"
        (fd,) = receiver.take_fds()
        assert not os.get_inheritable(fd)
        assert receiver.take_fds() == []  # handed out once
        Segment.attach_memfd(fd, SIZE).close()
    assert open_fds() == before


def test_too_many_descriptors_are_all_closed_and_the_frame_has_none() -> None:
    hostile, mine = socket.socketpair()
    receiver = SocketStream(mine)
    r, w = os.pipe()
    try:
        before = open_fds()
        receiver.accept_fds = MAX_FDS
        # A hostile peer sends more than a frame may carry (raw sendmsg: SocketStream.send refuses).
        fds = array.array("i", [r] * (MAX_FDS + 4))
        hostile.sendmsg([PREFIX.pack(4) + b"\0" * 4], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        head, _, _ = receiver.recv_frame(2.0)
        assert bytes(head) == b"" and receiver.fds_dropped
        assert receiver.take_fds() == []
        assert open_fds() == before
        # The next frame is read as usual (whoever expected descriptors fails on its own terms).
        hostile.sendall(PREFIX.pack(7) + (3).to_bytes(4, "little") + b"abc")
        head, _, _ = receiver.recv_frame(2.0)
        assert bytes(head) == b"abc" and not receiver.fds_dropped
    finally:
        receiver.close()
        hostile.close()
        os.close(r)
        os.close(w)


def test_descriptors_nobody_takes_are_closed_at_the_next_frame_and_at_close(
    pair: tuple[SocketStream, SocketStream],
) -> None:
    sender, receiver = pair
    r, w = os.pipe()
    before = open_fds()
    receiver.accept_fds = 4
    sender.send(b"one", fds=[r, w, r])
    receiver.recv_frame(2.0)
    assert open_fds() == before + 3
    sender.send(b"two")
    receiver.recv_frame(2.0)
    assert open_fds() == before
    sender.send(b"three", fds=[r])
    receiver.recv_frame(2.0)
    assert open_fds() == before + 1
    receiver.close()
    assert open_fds() == before - 1  # its socket, and the descriptor nobody took
    os.close(r)
    os.close(w)


def test_a_stream_that_takes_no_descriptors_lets_the_kernel_close_them(
    pair: tuple[SocketStream, SocketStream],
) -> None:
    sender, receiver = pair
    r, w = os.pipe()
    before = open_fds()
    sender.send(b"forged", fds=[r, w])
    head, _, _ = receiver.recv_frame(2.0)
    assert bytes(head) == b"forged" and receiver.take_fds() == []
    time.sleep(0.05)
    assert open_fds() == before
    os.close(r)
    os.close(w)


def test_descriptors_need_a_unix_socket_and_a_bound() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    stream = SocketStream(client)
    try:
        with pytest.raises(ValueError, match="Unix"):
            stream.send(b"x", fds=[0])
    finally:
        stream.close()
        server.close()
        listener.close()
    a, b = socket.socketpair()
    sa = SocketStream(a)
    try:
        with pytest.raises(ValueError):
            sa.send(b"x", fds=[0] * (MAX_FDS + 1))
    finally:
        sa.close()
        b.close()


def test_the_mapping_is_shared_not_copied() -> None:
    with Segment.create_memfd(SIZE) as seg:
        m = mmap.mmap(seg.fileno(), SIZE, mmap.MAP_SHARED)
        m[64] = 5
        assert seg.buf[64] == 5
        m.close()
