"""The janitor: find rlmesh segments whose creator is gone, and remove them.

A creator holds a shared ``flock`` on its segment for as long as it lives
(see ``_posix``). The janitor opens each candidate and tries an exclusive,
non-blocking lock: if it gets it, no live process holds the creator's lock,
so the creator has exited (or was killed) and the segment is stale. This
works across pid namespaces (containers sharing /dev/shm) and is immune to
pid reuse, unlike checking the pid in the header.

Only segments owned by this user, with rlmesh's name pattern, older than a
short grace period (a segment is locked microseconds after it is created)
are considered. Two janitors racing is harmless: unlinking twice just finds
the name gone.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import mmap
import os
import time

from ._layout import HEADER, MAGIC, NAME_RE
from ._posix import SHM_DIR, pid_namespace, unlink

__all__ = ["SegmentInfo", "clean", "list_segments"]

#: Segments younger than this are left alone, whatever their lock says.
GRACE_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class SegmentInfo:
    """What the janitor knows about one segment.

    Attributes:
        name: the segment's name.
        size: bytes.
        uid: the owner's uid.
        age: seconds since it was created (from the file's change time).
        pid: the creator's pid, from the header (in the creator's pid namespace).
        same_pidns: the creator ran in this process's pid namespace.
        kind: the kind from the header (0 when the header is unreadable).
        alive: a live process still holds the creator's lock.
    """

    name: str
    size: int
    uid: int
    age: float
    pid: int
    same_pidns: bool
    kind: int
    alive: bool


def _inspect(name: str) -> SegmentInfo | None:
    path = os.path.join(SHM_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None  # gone, a symlink, or not ours to open
    try:
        st = os.fstat(fd)
        pid = kind = 0
        pidns = -1
        if st.st_size >= HEADER.size:
            with mmap.mmap(fd, HEADER.size, prot=mmap.PROT_READ) as header:
                magic, _version, kind, _size, pid, pidns, _created = HEADER.unpack_from(header, 0)
            if magic != MAGIC:
                kind, pid = 0, 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alive = False
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            alive = True
        return SegmentInfo(
            name=name,
            size=st.st_size,
            uid=st.st_uid,
            age=max(time.time() - st.st_ctime, 0.0),
            pid=pid,
            same_pidns=pidns == pid_namespace(),
            kind=kind,
            alive=alive,
        )
    finally:
        os.close(fd)  # drops the probe lock, if we took it


def list_segments(*, all_users: bool = False) -> list[SegmentInfo]:
    """Every rlmesh segment in /dev/shm (this user's, unless ``all_users``)."""
    try:
        names = sorted(os.listdir(SHM_DIR))
    except OSError:
        return []
    out = []
    me = os.geteuid()
    for name in names:
        if not NAME_RE.match(name):
            continue
        info = _inspect(name)
        if info is not None and (all_users or info.uid == me):
            out.append(info)
    return out


def clean(*, dry_run: bool = False, grace: float = GRACE_SECONDS) -> list[SegmentInfo]:
    """Remove this user's rlmesh segments whose creator is no longer alive.

    Args:
        dry_run: only report what would be removed.
        grace: skip segments younger than this many seconds.

    Returns:
        The segments removed (or that would be, with ``dry_run``).
    """
    removed = []
    for info in list_segments():
        if info.alive or info.age < grace:
            continue
        if dry_run or unlink(info.name):
            removed.append(info)
    return removed
