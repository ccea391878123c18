"""Sealed memfds: shared memory with no name, passed between processes as descriptors.

The only module that creates, seals and verifies memfds (the named POSIX
segments are :mod:`rlmesh.shm._posix`'s). A memfd has no entry in
``/dev/shm``: nothing can leak when either side dies, and nobody can open it
by name. It travels as a descriptor over a Unix socket (SCM_RIGHTS), which
is why named segments stay for TCP sessions.

The creator (the server, maybe inside a container) makes every segment with
:func:`create`: ``memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING)``, sized with
``posix_fallocate`` (a full memory cgroup is an error now, never a SIGBUS
later), then sealed ``F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``. No write
seal: both sides write the rings, and ``F_SEAL_WRITE`` cannot coexist with a
shared writable mapping.

The receiver (the client; in a sandbox, the host) maps a descriptor only
after :func:`check`: a regular file that ``/proc/self/fd`` names
``/memfd:...``, carrying all three seals (so nobody, the creator included,
can shrink it under our mapping: a hostile peer that truncates gets EPERM
instead of killing us with SIGBUS), of exactly the announced size, with an
rlmesh header. No ``st_uid`` check: the descriptor itself is the capability,
and a container's uid may legitimately differ from ours.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import time

from ..errors import ShmCapacityError, ShmError
from ._layout import HEADER, LAYOUT_VERSION, MAGIC, NAME_PREFIX, SegmentKind
from ._posix import map_fd, pid_namespace

__all__ = ["REQUIRED_SEALS", "check", "create", "supported"]

#: The seals every rlmesh memfd carries, and the receiver insists on.
REQUIRED_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL

#: Linux >= 6.3: no executable mappings of the memfd, ever (missing from Python 3.11's os).
_MFD_NOEXEC_SEAL = 8

_SUPPORTED: bool | None = None


def supported() -> bool:
    """Whether this kernel and Python can make sealed memfds (Linux >= 3.17)."""
    global _SUPPORTED
    if _SUPPORTED is None:
        try:
            fd = _memfd(NAME_PREFIX + "probe")
        except (OSError, AttributeError):
            _SUPPORTED = False
        else:
            os.close(fd)
            _SUPPORTED = True
    return _SUPPORTED


def _memfd(name: str) -> int:
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        return os.memfd_create(name, flags | _MFD_NOEXEC_SEAL)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    # A kernel older than 6.3 does not know MFD_NOEXEC_SEAL.
    return os.memfd_create(name, flags)


def _capacity_error(size: int, exc: OSError) -> ShmCapacityError:
    return ShmCapacityError(
        f"no memory for a {size:,}-byte shared-memory segment ({exc.strerror}); free memory, or raise "
        "the memory limit of the process or container (memfd pages count against it)",
        needed=size,
        available=0,
    )


def create(size: int, kind: SegmentKind, label: str) -> tuple[int, mmap.mmap]:
    """Create, size, seal and map a new memfd segment of ``size`` bytes (header included).

    Args:
        size: bytes, header included.
        kind: recorded in the header.
        label: the memfd's name (shown in ``/proc/PID/maps``; not unique, not looked up).

    Returns:
        ``(fd, mapping)``; the caller owns both. The descriptor is close-on-exec.

    Raises:
        ShmCapacityError: no memory for it (ENOSPC/ENOMEM); nothing is left behind.
        ShmError: memfds are unavailable, or sealing or mapping failed.
    """
    if size < HEADER.size:
        raise ValueError(f"a segment needs at least {HEADER.size} bytes, got {size}")
    try:
        fd = _memfd(label)
    except (OSError, AttributeError) as exc:
        raise ShmError(f"could not create a memfd: {exc}") from exc
    mapping: mmap.mmap | None = None
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                raise _capacity_error(size, exc) from exc
            raise ShmError(f"could not size a {size:,}-byte memfd: {exc}") from exc
        try:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, REQUIRED_SEALS)
        except OSError as exc:
            raise ShmError(f"could not seal a memfd: {exc}") from exc
        mapping = map_fd(fd, size, mmap.PROT_READ | mmap.PROT_WRITE, label)
        HEADER.pack_into(
            mapping, 0, MAGIC, LAYOUT_VERSION, int(kind), size, os.getpid(), pid_namespace(), time.time_ns()
        )
        return fd, mapping
    except BaseException:
        if mapping is not None:
            mapping.close()
        os.close(fd)
        raise


def check(fd: int, size: int, *, readonly: bool = False, what: str = "a shared-memory segment") -> mmap.mmap:
    """Verify that ``fd`` is a sealed rlmesh memfd of ``size`` bytes, and map it.

    Every check runs before the mapping exists, except the header's, which
    reads the mapped bytes once (and unmaps on failure). The caller keeps
    ownership of ``fd`` whatever happens (it closes it, exactly once).

    Raises:
        ShmError: not a regular file, not a memfd, a seal missing, another
            size, or no rlmesh header (the message says which).
    """
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise ShmError(f"{what}: descriptor {fd} is not open ({exc})") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ShmError(f"{what} is not a regular file (mode {oct(st.st_mode)}): refusing to map it")
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        raise ShmError(f"{what}: cannot tell what descriptor {fd} is ({exc})") from exc
    if not target.startswith("/memfd:"):
        raise ShmError(f"{what} is not a memfd ({target!r}): refusing to map it")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as exc:
        raise ShmError(f"{what} cannot be sealed ({exc}): refusing to map it") from exc
    if seals & REQUIRED_SEALS != REQUIRED_SEALS:
        raise ShmError(
            f"{what} lacks seals (has {seals:#x}, needs shrink, grow and seal: {REQUIRED_SEALS:#x}); "
            "a peer could shrink it under the mapping"
        )
    if type(size) is not int or st.st_size != size:
        raise ShmError(f"{what} has {st.st_size} bytes, its owner announced {size!r}")
    if size < HEADER.size:
        raise ShmError(f"{what} is too small to be an rlmesh segment")
    prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
    mapping = map_fd(fd, size, prot, what)
    try:
        # One read of the header into locals: the peer may rewrite it at any time.
        magic, version, _kind, announced = HEADER.unpack_from(mapping, 0)[:4]
        if magic != MAGIC or version != LAYOUT_VERSION or announced != size:
            raise ShmError(
                f"{what} has layout {magic!r} v{version} ({announced} bytes), expected "
                f"{MAGIC!r} v{LAYOUT_VERSION} ({size} bytes): not an rlmesh segment of this layout"
            )
    except BaseException:
        mapping.close()
        raise
    return mapping
