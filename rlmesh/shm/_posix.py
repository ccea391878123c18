"""The only module that creates, opens, sizes, maps and unlinks POSIX shm.

Rules it enforces (see failure-modes FM-8 to FM-10 and security 4.1-4.3):

* names are random (80 bits) with the rlmesh prefix; a name from a peer is
  checked against :data:`NAME_RE` before anything is opened;
* created with ``O_CREAT | O_EXCL`` and mode 0600, then ``fchmod`` 0600 in case
  the umask was odd, so nobody else can open or squat a segment;
* sized with ``posix_fallocate``: a full ``/dev/shm`` is an error now
  (:class:`ShmCapacityError` naming the bytes and ``--shm-size``), never a
  SIGBUS later when a page is first touched;
* the creator holds a shared ``flock`` on its descriptor for the segment's
  whole life: the janitor treats a segment it can lock exclusively as having
  no live creator (this works across pid namespaces, and the kernel drops the
  lock when the creator dies);
* after opening, owner, mode, type and size are verified.

``multiprocessing.shared_memory`` is deliberately not used: on Python < 3.13
its resource tracker unlinks segments it does not own (cpython#82300).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import secrets
import stat
import sys
import time

import posix_ipc

from ..errors import ShmCapacityError, ShmError
from ._layout import HEADER, LAYOUT_VERSION, MAGIC, NAME_PREFIX, NAME_RE, SegmentKind

__all__ = [
    "SHM_DIR",
    "attach",
    "check_name",
    "create",
    "free_bytes",
    "map_fd",
    "new_name",
    "pid_namespace",
    "read_header",
    "unlink",
]

SHM_DIR = "/dev/shm"

_PIDNS: int | None = None


def pid_namespace() -> int:
    """The inode of this process's pid namespace (0 if unknown)."""
    global _PIDNS
    if _PIDNS is None:
        try:
            _PIDNS = os.stat("/proc/self/ns/pid").st_ino
        except OSError:  # pragma: no cover - no procfs
            _PIDNS = 0
    return _PIDNS


def new_name() -> str:
    """A fresh random segment name, without the leading slash."""
    return NAME_PREFIX + secrets.token_hex(10)


def check_name(name: str) -> str:
    """Return ``name`` without a leading slash if it is a valid rlmesh name.

    Raises:
        ShmError: the name is not one rlmesh could have made.
    """
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ShmError(f"refusing to open shared memory with a name rlmesh does not make: {name!r}")
    return name.lstrip("/")


def free_bytes() -> int:
    """Bytes currently free on the shared-memory filesystem."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:  # pragma: no cover - no /dev/shm
        return 0
    return st.f_bavail * st.f_frsize


def _capacity_error(size: int) -> ShmCapacityError:
    available = free_bytes()
    return ShmCapacityError(
        f"/dev/shm has no room for a {size:,}-byte segment ({available:,} bytes free). "
        "Free shared memory (`rlmesh shm clean` removes stale rlmesh segments) or give it more "
        "room; in Docker, start the container with a larger --shm-size (the default is 64 MB).",
        needed=size,
        available=available,
    )


def _fallocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
            raise _capacity_error(size) from exc
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise ShmError(f"could not size a {size:,}-byte segment: {exc}") from exc
    # No fallocate here: size the file and touch every page through write(),
    # which reports ENOSPC instead of deferring it to a SIGBUS.
    os.ftruncate(fd, size)
    page = b"\0" * mmap.PAGESIZE
    try:
        for offset in range(0, size, mmap.PAGESIZE):
            os.pwrite(fd, page[: min(mmap.PAGESIZE, size - offset)], offset)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.ENOMEM):
            raise _capacity_error(size) from exc
        raise ShmError(f"could not size a {size:,}-byte segment: {exc}") from exc


def map_fd(fd: int, size: int, prot: int, name: str) -> mmap.mmap:
    """Map ``size`` bytes of ``fd`` shared.

    Python 3.13+ is told not to keep a duplicate of the descriptor (``mmap``
    otherwise does, for ``size()`` and ``resize()``, which we never call): a
    server with many sessions maps many segments, and every descriptor counts
    against ``ulimit -n``.

    Raises:
        ShmError: the mapping failed; out of descriptors or of address space
            are named as such.
    """
    try:
        if sys.version_info >= (3, 13):
            return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=prot, trackfd=False)
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=prot)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise ShmError(
                f"could not map shared-memory segment {name}: out of file descriptors "
                "(raise the limit with `ulimit -n`)"
            ) from exc
        raise ShmError(f"could not map shared-memory segment {name}: {exc}") from exc


def create(size: int, kind: SegmentKind) -> tuple[str, int, mmap.mmap]:
    """Create, size, lock and map a new segment of ``size`` bytes (header included).

    Returns:
        ``(name, fd, mapping)``. The caller owns all three.

    Raises:
        ShmCapacityError: /dev/shm is full; nothing is left behind.
        ShmError: the segment could not be created or mapped.
    """
    if size < HEADER.size:
        raise ValueError(f"a segment needs at least {HEADER.size} bytes, got {size}")
    for _ in range(8):
        name = new_name()
        try:
            mem = posix_ipc.SharedMemory("/" + name, flags=posix_ipc.O_CREX, mode=0o600, size=0)
            break
        except posix_ipc.ExistentialError:
            continue  # 80 random bits collided: astronomically rare, just retry
        except OSError as exc:
            raise ShmError(f"could not create shared memory: {exc}") from exc
    else:  # pragma: no cover
        raise ShmError("could not find a free shared-memory name")
    fd = mem.fd
    mapping: mmap.mmap | None = None
    try:
        os.fchmod(fd, 0o600)
        # Taken before anything else: from here on the janitor sees a live owner.
        fcntl.flock(fd, fcntl.LOCK_SH)
        _fallocate(fd, size)
        mapping = map_fd(fd, size, mmap.PROT_READ | mmap.PROT_WRITE, name)
        HEADER.pack_into(
            mapping,
            0,
            MAGIC,
            LAYOUT_VERSION,
            int(kind),
            size,
            os.getpid(),
            pid_namespace(),
            time.time_ns(),
        )
        return name, fd, mapping
    except BaseException:
        if mapping is not None:
            mapping.close()
        os.close(fd)
        unlink(name)
        raise


def attach(name: str, size: int | None = None, *, readonly: bool = False) -> tuple[int, mmap.mmap]:
    """Open and map an existing rlmesh segment after verifying it.

    Args:
        name: the segment's name (checked against :data:`NAME_RE`).
        size: the size the peer announced; the segment must match it exactly.
        readonly: map with ``PROT_READ`` only.

    Returns:
        ``(fd, mapping)``; the caller owns both.

    Raises:
        ShmError: bad name, missing segment, wrong owner, group/other access,
            not a regular file, wrong size or header.
    """
    name = check_name(name)
    try:
        mem = posix_ipc.SharedMemory("/" + name, read_only=readonly)
    except posix_ipc.ExistentialError as exc:
        raise ShmError(f"shared-memory segment {name} does not exist (its owner may have exited)") from exc
    except posix_ipc.PermissionsError as exc:
        raise ShmError(f"no permission to open shared-memory segment {name}") from exc
    except (OSError, ValueError) as exc:
        # A symlink (ELOOP: glibc opens with O_NOFOLLOW) or a directory (EISDIR,
        # which posix_ipc reports as ValueError) squatting on the name.
        raise ShmError(f"could not open shared-memory segment {name}: {exc}") from exc
    return attach_fd(mem.fd, name, size, readonly=readonly)


def attach_fd(
    fd: int, name: str, size: int | None = None, *, readonly: bool = False
) -> tuple[int, mmap.mmap]:
    """Map the rlmesh segment open on ``fd`` (one whose name may be gone) after verifying it.

    The checks of :func:`attach`; ``name`` only names it in messages. The
    caller owns the descriptor and the mapping returned; on failure the
    descriptor is closed.

    Raises:
        ShmError: wrong owner, group/other access, not a regular file, wrong size or header.
    """
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ShmError(f"shared-memory segment {name} is not a regular file")
        if st.st_uid != os.geteuid():
            raise ShmError(
                f"shared-memory segment {name} belongs to uid {st.st_uid}, not to this process's "
                f"uid {os.geteuid()}; run both sides as the same user"
            )
        if st.st_mode & 0o077:
            raise ShmError(f"shared-memory segment {name} has mode {oct(st.st_mode & 0o777)}, expected 0600")
        if size is not None and st.st_size != size:
            raise ShmError(f"shared-memory segment {name} has {st.st_size} bytes, its owner announced {size}")
        if st.st_size < HEADER.size:
            raise ShmError(f"shared-memory segment {name} is too small to be an rlmesh segment")
        prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
        mapping = map_fd(fd, st.st_size, prot, name)
        magic, version = HEADER.unpack_from(mapping, 0)[:2]
        if magic != MAGIC or version != LAYOUT_VERSION:
            mapping.close()
            raise ShmError(
                f"shared-memory segment {name} has layout {magic!r} v{version}, expected "
                f"{MAGIC!r} v{LAYOUT_VERSION} (both sides must run the same rlmesh layout)"
            )
        return fd, mapping
    except BaseException:
        os.close(fd)
        raise


def unlink(name: str) -> bool:
    """Remove a segment's name; True if it existed. Open mappings stay valid."""
    try:
        posix_ipc.unlink_shared_memory("/" + name.lstrip("/"))
        return True
    except posix_ipc.ExistentialError:
        return False


def read_header(mapping: mmap.mmap) -> dict[str, int | str]:
    """Decode a segment header."""
    magic, version, kind, size, pid, pidns, created = HEADER.unpack_from(mapping, 0)
    return {
        "magic": magic.decode("ascii", "replace"),
        "version": version,
        "kind": kind,
        "size": size,
        "pid": pid,
        "pidns": pidns,
        "created_ns": created,
    }
