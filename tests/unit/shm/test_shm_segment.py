"""Segment: creation, permissions, verification on attach, closing and unlinking."""

from __future__ import annotations

import gc
import os
import secrets
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from rlmesh.errors import BusyError, ClosedError, ShmError
from rlmesh.shm import PeerMemory, Segment, SegmentKind, Slab
from rlmesh.shm._layout import HEADER, LAYOUT_VERSION, MAGIC, NAME_RE, SEGMENT_HEADER
from rlmesh.shm._posix import check_name, pid_namespace

SHM = "/dev/shm"


def shm_path(name: str) -> str:
    return os.path.join(SHM, name)


@pytest.fixture
def segment() -> Iterator[Segment]:
    seg = Segment.create(16384)
    try:
        yield seg
    finally:
        seg.close()


# -- creation ---------------------------------------------------------------------


def test_create_writes_a_header_and_names_the_segment(segment: Segment) -> None:
    assert NAME_RE.match(segment.name)
    assert not segment.name.startswith("/")
    assert segment.size == 16384
    assert segment.payload_offset == SEGMENT_HEADER == 64
    assert segment.is_creator and not segment.readonly and not segment.closed
    magic, version, kind, size, pid, pidns, created = HEADER.unpack_from(segment.buf, 0)
    assert magic == MAGIC and version == LAYOUT_VERSION
    assert kind == SegmentKind.OTHER
    assert size == 16384
    assert pid == os.getpid() and pidns == pid_namespace()
    assert abs(created - time.time_ns()) < 60e9
    assert os.path.exists(shm_path(segment.name))


def test_names_are_random() -> None:
    segs = [Segment.create(4096) for _ in range(8)]
    try:
        assert len({s.name for s in segs}) == 8
    finally:
        for s in segs:
            s.close()


def test_create_rejects_a_size_smaller_than_the_header() -> None:
    with pytest.raises(ValueError):
        Segment.create(SEGMENT_HEADER - 1)


def test_segment_cannot_be_constructed_directly() -> None:
    with pytest.raises(TypeError):
        Segment()


def test_mode_is_0600_even_with_umask_0() -> None:
    old = os.umask(0)
    try:
        seg = Segment.create(4096)
    finally:
        os.umask(old)
    try:
        st = os.stat(shm_path(seg.name))
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.geteuid()
        assert stat.S_ISREG(st.st_mode)
    finally:
        seg.close()


def test_payload_is_zeroed_and_writable(segment: Segment) -> None:
    payload = segment.buf[segment.payload_offset :]
    try:
        assert not any(payload)
        payload[:5] = b"hello"
        assert bytes(segment.buf[64:69]) == b"hello"
    finally:
        payload.release()


def test_address_is_the_mapping_address(segment: Segment) -> None:
    arr = np.frombuffer(segment.buf, np.uint8)
    try:
        assert arr.ctypes.data == segment.address
        assert segment.address % 4096 == 0
    finally:
        del arr


def test_check_range(segment: Segment) -> None:
    segment.check_range(0, segment.size)
    segment.check_range(segment.size, 0)
    for offset, nbytes in [
        (-1, 1),
        (0, -1),
        (0, segment.size + 1),
        (segment.size + 1, 0),
        (64, 2**64 - 32),
        (2**64 - 32, 64),
        (2**63, 2**63),
        (64.0, 1),
        (True, 1),
    ]:
        with pytest.raises(ShmError):
            segment.check_range(offset, nbytes)  # type: ignore[arg-type]


# -- closing ----------------------------------------------------------------------


def test_double_close_is_a_no_op() -> None:
    seg = Segment.create(4096)
    name = seg.name
    seg.close()
    assert seg.closed
    assert not os.path.exists(shm_path(name))
    seg.close()
    assert seg.closed


def test_context_manager_closes_and_unlinks() -> None:
    with Segment.create(4096) as seg:
        name = seg.name
        assert os.path.exists(shm_path(name))
    assert seg.closed
    assert not os.path.exists(shm_path(name))


def test_use_after_close_raises_closed_error() -> None:
    seg = Segment.create(4096)
    seg.close()
    with pytest.raises(ClosedError):
        seg.buf  # noqa: B018
    with pytest.raises(ClosedError):
        seg.address  # noqa: B018
    with pytest.raises(ClosedError):
        seg.pin()


def test_close_with_a_live_slice_raises_busy_and_stays_usable(segment: Segment) -> None:
    piece = segment.buf[100:200]
    with pytest.raises(BusyError) as info:
        segment.close()
    assert not isinstance(info.value, BufferError)
    assert not segment.closed
    # Still fully usable: writes through the segment show in the slice and back.
    segment.buf[100] = 42
    assert piece[0] == 42
    piece[1] = 43
    assert segment.buf[101] == 43
    assert os.path.exists(shm_path(segment.name))
    piece.release()
    segment.close()
    assert segment.closed


def test_close_with_a_live_numpy_array_raises_busy(segment: Segment) -> None:
    arr = np.frombuffer(segment.buf, np.uint8)
    with pytest.raises(BusyError):
        segment.close()
    arr[200] = 9
    assert segment.buf[200] == 9
    del arr
    segment.close()
    assert segment.closed


def test_close_with_pinned_peer_views_raises_busy_error() -> None:
    with Slab(segment_size=65536) as slab, PeerMemory() as peer:
        block = slab.alloc(128)
        segs = {sid: peer.add_segment(sid, name, size) for sid, name, size in slab.take_new_segments()}
        attached = segs[block.segment]
        view = peer.view(block.handle)
        assert attached.pins == 1
        with pytest.raises(BusyError) as info:
            attached.close()
        assert not isinstance(info.value, BufferError)
        assert not attached.closed
        slab.view(block)[:3] = b"abc"
        assert bytes(view[:3]) == b"abc"  # still mapped, still the same memory
        del view
        gc.collect()
        assert attached.pins == 0
        attached.close()
        assert attached.closed


def test_close_when_unpinned_defers_until_the_last_view_dies() -> None:
    with Slab(segment_size=65536) as slab, PeerMemory() as peer:
        a, b = slab.alloc(64), slab.alloc(64)
        slab.view(a)[:] = b"a" * 64
        slab.view(b)[:] = b"b" * 64
        ((sid, name, size),) = slab.take_new_segments()
        attached = peer.add_segment(sid, name, size)
        view_a, view_b = peer.view(a.handle), peer.view(b.handle)
        arr = np.frombuffer(view_b, np.uint8)  # a derived array keeps its lease too
        del view_b
        attached.close_when_unpinned()
        assert not attached.closed
        with pytest.raises(ClosedError):
            peer.view(a.handle)  # no new pins once the close is pending
        del view_a
        gc.collect()
        assert not attached.closed
        assert bytes(arr[:2]) == b"bb"
        del arr
        gc.collect()
        assert attached.closed
        assert attached.pins == 0


def test_close_when_unpinned_without_views_closes_now(segment: Segment) -> None:
    segment.close_when_unpinned()
    assert segment.closed
    segment.close_when_unpinned()


# -- unlinking ----------------------------------------------------------------------


def test_only_the_creator_unlinks(segment: Segment) -> None:
    attached = Segment.attach(segment.name, segment.size)
    try:
        assert not attached.is_creator
        with pytest.raises(PermissionError):
            attached.unlink()
        attached.close()
        assert os.path.exists(shm_path(segment.name))  # an attacher's close never unlinks
        segment.unlink()
        assert not os.path.exists(shm_path(segment.name))
        segment.unlink()  # idempotent
        with pytest.raises(ShmError):
            Segment.attach(segment.name, segment.size)
        segment.buf[64] = 1  # the mapping outlives the name
    finally:
        attached.close()


def test_attacher_mapping_survives_the_creator_closing() -> None:
    seg = Segment.create(8192)
    seg.buf[64:67] = b"xyz"
    attached = Segment.attach(seg.name, 8192)
    try:
        seg.close()
        assert not os.path.exists(shm_path(attached.name))
        assert bytes(attached.buf[64:67]) == b"xyz"
    finally:
        attached.close()


def test_readonly_attach_maps_read_only(segment: Segment) -> None:
    segment.buf[64] = 5
    attached = Segment.attach("/" + segment.name, segment.size, readonly=True)
    try:
        assert attached.readonly and attached.name == segment.name
        assert attached.buf.readonly
        assert attached.buf[64] == 5
        with pytest.raises(TypeError):
            attached.buf[64] = 6
    finally:
        attached.close()


FORK_CHILD = """
import gc, os, sys, warnings
from rlmesh.shm import Segment
how = sys.argv[1]
seg = Segment.create(8192)
path = "/dev/shm/" + seg.name
pid = os.fork()
if pid == 0:
    status = 0
    try:
        if seg.is_creator:
            status = 10
        elif how == "drop":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                del seg
                gc.collect()
        elif how == "close":
            seg.close()
        else:
            try:
                seg.unlink()
            except PermissionError:
                pass
            else:
                status = 11
        if status == 0 and not os.path.exists(path):
            status = 12
    finally:
        os._exit(status)
_, code = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(code), os.path.exists(path), seg.is_creator, seg.closed)
seg.close()
print(os.path.exists(path))
"""


@pytest.mark.parametrize("how", ["drop", "close", "unlink"])
def test_forked_child_never_unlinks_the_parents_segment(how: str) -> None:
    # In a fresh interpreter: this test process may hold threads (JAX's, once
    # imported) that make os.fork() unsafe here.
    out = run_python_args(FORK_CHILD, how)
    assert out.split() == ["0", "True", "True", "False", "False"]


def run_python_args(code: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# -- garbage collection -------------------------------------------------------------


def test_unclosed_segment_warns_and_is_cleaned_up() -> None:
    seg = Segment.create(4096)
    name = seg.name
    with pytest.warns(ResourceWarning, match="was never closed"):
        del seg
        gc.collect()
    assert not os.path.exists(shm_path(name))


def test_unclosed_attached_segment_warns_and_leaves_the_name(segment: Segment) -> None:
    attached = Segment.attach(segment.name, segment.size)
    with pytest.warns(ResourceWarning):
        del attached
        gc.collect()
    assert os.path.exists(shm_path(segment.name))


def test_unclosed_segment_is_cleaned_up_when_warnings_are_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Under `-W error` the finalizer's warning raises; the cleanup must already be done.
    raised: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: raised.append(unraisable.exc_type))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        seg = Segment.create(4096)
        name = seg.name
        del seg
        gc.collect()
    assert raised == [ResourceWarning]
    assert not os.path.exists(shm_path(name))


# -- attach refuses what it should not open --------------------------------------------


def random_name() -> str:
    return "rlm-" + secrets.token_hex(10)


@pytest.mark.parametrize(
    "name",
    [
        "../etc/passwd",
        "/rlm-xyz",
        "rlm-xyz",
        "rlm-" + "0" * 19,
        "rlm-" + "0" * 21,
        "rlm-" + "A" * 20,
        "rlm-" + "0" * 20 + "\n",
        "rlm-" + "0" * 20 + "/x",
        "//rlm-" + "0" * 20,
        "psm_" + "0" * 20,
        "",
        "/",
    ],
    ids=repr,
)
def test_attach_refuses_names_rlmesh_does_not_make(name: str) -> None:
    with pytest.raises(ShmError, match="name rlmesh does not make"):
        check_name(name)
    with pytest.raises(ShmError):
        Segment.attach(name)
    with PeerMemory() as peer, pytest.raises(ShmError):
        peer.add_segment(1, name, 4096)


def test_attach_refuses_a_missing_segment() -> None:
    with pytest.raises(ShmError, match="does not exist"):
        Segment.attach(random_name(), 4096)
    with PeerMemory() as peer:
        with pytest.raises(ShmError):
            peer.add_segment(1, random_name(), 4096)
        assert peer.segment_ids == []


@pytest.mark.parametrize("how", ["chmod-path", "fchmod-fd"])
@pytest.mark.parametrize("mode", [0o644, 0o660, 0o606, 0o666])
def test_attach_refuses_group_or_other_access(segment: Segment, how: str, mode: int) -> None:
    if how == "chmod-path":
        os.chmod(shm_path(segment.name), mode)
    else:
        fd = os.open(shm_path(segment.name), os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    with pytest.raises(ShmError, match="0600"):
        Segment.attach(segment.name, segment.size)
    with PeerMemory() as peer:
        with pytest.raises(ShmError):
            peer.add_segment(1, segment.name, segment.size)
        assert peer.segment_ids == []


@pytest.mark.parametrize("delta", [-4096, -1, 1, 4096])
def test_attach_refuses_a_size_other_than_announced(segment: Segment, delta: int) -> None:
    with pytest.raises(ShmError, match="announced"):
        Segment.attach(segment.name, segment.size + delta)
    with PeerMemory() as peer:
        with pytest.raises(ShmError):
            peer.add_segment(1, segment.name, segment.size + delta)
        assert peer.segment_ids == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a segment to another uid")
def test_attach_refuses_a_segment_of_another_user(segment: Segment) -> None:
    os.chown(shm_path(segment.name), 65534, -1)
    with pytest.raises(ShmError, match="uid"):
        Segment.attach(segment.name, segment.size)


def test_attach_refuses_a_symlink_squatting_on_a_name(tmp_path: Any) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"\0" * 4096)
    os.chmod(target, 0o600)
    name = random_name()
    os.symlink(target, shm_path(name))
    try:
        with pytest.raises(ShmError):
            Segment.attach(name, 4096)
    finally:
        os.unlink(shm_path(name))


def test_attach_refuses_a_directory_squatting_on_a_name() -> None:
    name = random_name()
    os.mkdir(shm_path(name), 0o700)
    try:
        with pytest.raises(ShmError):
            Segment.attach(name)
    finally:
        os.rmdir(shm_path(name))


@pytest.mark.parametrize(
    "content",
    [b"x" * 4096, b"\0" * 4096, HEADER.pack(MAGIC, LAYOUT_VERSION + 1, 9, 4096, 1, 1, 1), b"RLM"],
    ids=["garbage", "zeros", "future-layout", "too-small"],
)
def test_attach_refuses_a_file_without_an_rlmesh_header(content: bytes) -> None:
    name = random_name()
    fd = os.open(shm_path(name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.write(fd, content)
        fds_before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(ShmError):
            Segment.attach(name)
        assert len(os.listdir("/proc/self/fd")) == fds_before  # the failed attach closed its fd
    finally:
        os.close(fd)
        os.unlink(shm_path(name))
