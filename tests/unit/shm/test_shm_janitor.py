"""The janitor within one process: what it lists, what it keeps, what it removes.

Killed creators (the real use) are in tests/integration/test_shm_processes.py.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Iterator

import pytest

from rlmesh.shm import Segment, SegmentKind, Slab, janitor
from rlmesh.shm._layout import HEADER, LAYOUT_VERSION, MAGIC
from rlmesh.shm._posix import pid_namespace


def info_for(name: str) -> janitor.SegmentInfo | None:
    return next((i for i in janitor.list_segments() if i.name == name), None)


def orphan(kind: int = SegmentKind.SLAB, size: int = 4096) -> str:
    """A segment file with a valid header that no live process holds the lock of."""
    name = "rlm-" + secrets.token_hex(10)
    fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, size)
        header = HEADER.pack(MAGIC, LAYOUT_VERSION, kind, size, 999_999, pid_namespace(), 0)
        os.pwrite(fd, header, 0)
    finally:
        os.close(fd)
    return name


@pytest.fixture
def orphans() -> Iterator[list[str]]:
    names: list[str] = []
    try:
        yield names
    finally:
        for name in names:
            try:
                os.unlink(f"/dev/shm/{name}")
            except FileNotFoundError:
                pass


def test_live_segments_of_this_process_are_listed_as_alive() -> None:
    with Segment.create(8192, SegmentKind.CHANNEL) as seg, Slab(segment_size=1 << 16) as slab:
        block = slab.alloc(64)
        slab_name = slab.segments[block.segment].name
        info = info_for(seg.name)
        assert info is not None
        assert info.alive
        assert info.size == 8192
        assert info.kind == SegmentKind.CHANNEL
        assert info.pid == os.getpid()
        assert info.same_pidns
        assert info.uid == os.geteuid()
        assert 0 <= info.age < 60
        slab_info = info_for(slab_name)
        assert slab_info is not None and slab_info.alive and slab_info.kind == SegmentKind.SLAB
        # An attacher holds no lock, but the creator still does.
        with Segment.attach(seg.name, seg.size):
            assert info_for(seg.name).alive  # type: ignore[union-attr]
        removed = janitor.clean(grace=0)
        assert seg.name not in {i.name for i in removed}
        assert slab_name not in {i.name for i in removed}
        assert os.path.exists(f"/dev/shm/{seg.name}")
        assert os.path.exists(f"/dev/shm/{slab_name}")


def test_a_segment_nobody_holds_is_stale_and_cleaned(orphans: list[str]) -> None:
    name = orphan(SegmentKind.PROBE)
    orphans.append(name)
    info = info_for(name)
    assert info is not None and not info.alive
    assert info.kind == SegmentKind.PROBE and info.pid == 999_999
    assert [i.name for i in janitor.clean(dry_run=True, grace=0) if i.name == name] == [name]
    assert os.path.exists(f"/dev/shm/{name}")  # dry run
    assert name not in {i.name for i in janitor.clean(grace=3600)}  # too young for that grace
    assert os.path.exists(f"/dev/shm/{name}")
    assert name in {i.name for i in janitor.clean(grace=0)}
    assert not os.path.exists(f"/dev/shm/{name}")
    assert name not in {i.name for i in janitor.clean(grace=0)}


def test_default_grace_spares_a_segment_being_created(orphans: list[str]) -> None:
    name = orphan()
    orphans.append(name)
    assert name not in {i.name for i in janitor.clean()}  # younger than GRACE_SECONDS
    assert os.path.exists(f"/dev/shm/{name}")


def test_unlocked_segment_of_a_live_process_is_seen_as_stale() -> None:
    # The lock, not the pid, decides: drop it and the janitor takes the segment.
    seg = Segment.create(4096)
    try:
        fcntl.flock(seg._fd_box[0], fcntl.LOCK_UN)
        assert not info_for(seg.name).alive  # type: ignore[union-attr]
        assert seg.name in {i.name for i in janitor.clean(grace=0)}
        assert not os.path.exists(f"/dev/shm/{seg.name}")
        seg.buf[64] = 1  # our mapping is unaffected
    finally:
        seg.close()  # unlinking a name that is gone is fine


def test_janitor_ignores_foreign_names_and_symlinks(orphans: list[str]) -> None:
    foreign = "notrlm-" + secrets.token_hex(4)
    fd = os.open(f"/dev/shm/{foreign}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.close(fd)
    orphans.append(foreign)
    link = "rlm-" + secrets.token_hex(10)
    target = orphan()
    orphans.extend([link, target])
    os.symlink(f"/dev/shm/{target}", f"/dev/shm/{link}")
    names = {i.name for i in janitor.list_segments()}
    assert foreign not in names and link not in names and target in names
    janitor.clean(grace=0)
    assert os.path.exists(f"/dev/shm/{foreign}")
    assert os.path.lexists(f"/dev/shm/{link}")
    assert not os.path.exists(f"/dev/shm/{target}")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a segment to another uid")
def test_janitor_leaves_other_users_segments(orphans: list[str]) -> None:
    name = orphan()
    orphans.append(name)
    os.chown(f"/dev/shm/{name}", 65534, -1)
    assert info_for(name) is None
    assert name in {i.name for i in janitor.list_segments(all_users=True)}
    janitor.clean(grace=0)
    assert os.path.exists(f"/dev/shm/{name}")


def test_a_headerless_file_is_listed_with_kind_zero(orphans: list[str]) -> None:
    name = "rlm-" + secrets.token_hex(10)
    fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.write(fd, b"x" * 100)
    os.close(fd)
    orphans.append(name)
    info = info_for(name)
    assert info is not None and info.kind == 0 and info.pid == 0 and not info.alive
    assert not info.same_pidns
