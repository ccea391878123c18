"""A full /dev/shm is an error at creation (ShmCapacityError), never a SIGBUS later."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from conftest import ROOT, shm_entries

from rlmesh.errors import ShmCapacityError, ShmError
from rlmesh.shm import Segment, Slab
from rlmesh.shm._posix import free_bytes

# Runs inside a private mount namespace whose /dev/shm is a 1 MiB tmpfs.
IN_NAMESPACE = textwrap.dedent(
    """
    import json, os
    from rlmesh.errors import ShmCapacityError
    from rlmesh.shm import Segment, Slab

    out = {"start": sorted(os.listdir("/dev/shm"))}
    small = Segment.create(256 * 1024)
    small.buf[64:] = b"\\x01" * (small.size - 64)  # every page is really there
    try:
        Segment.create(2 * 1024 * 1024)
    except ShmCapacityError as exc:
        out.update(needed=exc.needed, available=exc.available, message=str(exc))
    out["after_segment"] = sorted(os.listdir("/dev/shm"))
    slab = Slab(segment_size=64 * 1024)
    slab.alloc(100)
    try:
        slab.alloc(4 * 1024 * 1024)
    except ShmCapacityError as exc:
        out["slab_needed"] = exc.needed
    out["slab_segments"] = len(slab.segments)
    out["after_slab"] = sorted(os.listdir("/dev/shm"))
    out["small"] = small.name
    slab.close()
    small.close()
    out["end"] = sorted(os.listdir("/dev/shm"))
    print(json.dumps(out))
    """
)

MOUNT = 'mount -t tmpfs -o size=1m,mode=1777 tmpfs /dev/shm || exit 77; exec "$0" -c "$1"'


@pytest.mark.timeout(60)
def test_full_dev_shm_in_a_private_mount_namespace() -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", MOUNT, sys.executable, IN_NAMESPACE],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=ROOT,
    )
    if proc.returncode == 77 or proc.stderr.startswith("unshare:"):
        pytest.skip(f"no private mount namespace with a tmpfs here: {proc.stderr.strip()[:200]}")
    assert proc.returncode != -signal.SIGBUS, "SIGBUS instead of an error"
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    assert out["start"] == []
    needed, available = out["needed"], out["available"]
    assert needed == 2 * 1024 * 1024
    assert 0 < available < 1024 * 1024 - 256 * 1024 + 4096
    message = out["message"]
    assert f"{needed:,}" in message
    assert f"{available:,}" in message
    assert "--shm-size" in message
    # No partial segment is left in the small tmpfs: only the one that fitted.
    assert out["after_segment"] == [out["small"]]
    assert out["slab_needed"] >= 4 * 1024 * 1024
    assert out["slab_segments"] == 1
    assert len(out["after_slab"]) == 2 and out["small"] in out["after_slab"]
    assert out["end"] == []


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.ENOMEM, errno.EFBIG])
def test_fallocate_failure_raises_capacity_error_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(err, os.strerror(err))

    before = shm_entries()
    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(ShmCapacityError) as info:
        Segment.create(1 << 20)
    exc = info.value
    assert exc.needed == 1 << 20
    assert exc.available == pytest.approx(free_bytes(), rel=0.1)
    assert f"{1 << 20:,}" in str(exc)
    assert f"{exc.available:,}" in str(exc)
    assert "--shm-size" in str(exc)
    assert isinstance(exc.__cause__, OSError) and exc.__cause__.errno == err
    assert isinstance(exc, ShmError)
    assert shm_entries() == before


def test_other_fallocate_errors_are_shm_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    before = shm_entries()
    monkeypatch.setattr(os, "posix_fallocate", broken)
    with pytest.raises(ShmError) as info:
        Segment.create(1 << 16)
    assert not isinstance(info.value, ShmCapacityError)
    assert shm_entries() == before


def test_without_fallocate_pages_are_written_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    seg = Segment.create(3 * 4096 + 100)
    try:
        assert seg.size == 3 * 4096 + 100
        assert os.fstat(seg._fd_box[0]).st_blocks * 512 >= seg.size  # really allocated
        assert not any(seg.buf[64:])
    finally:
        seg.close()


def test_without_fallocate_a_full_dev_shm_still_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite = os.pwrite
    writes = []

    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "not supported")

    def fills_up(fd: int, data: bytes, offset: int) -> int:
        writes.append(offset)
        if len(writes) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    before = shm_entries()
    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    monkeypatch.setattr(os, "pwrite", fills_up)
    with pytest.raises(ShmCapacityError) as info:
        Segment.create(16 * 4096)
    assert info.value.needed == 16 * 4096
    assert len(writes) == 3
    assert shm_entries() == before


def test_slab_reports_capacity_errors_and_stays_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    with Slab(segment_size=1 << 16) as slab:
        first = slab.alloc(64)

        def full(fd: int, offset: int, length: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "posix_fallocate", full)
        with pytest.raises(ShmCapacityError):
            slab.alloc(1 << 20)
        assert len(slab.segments) == 1
        assert slab.take_new_segments()[0][0] == first.segment
        monkeypatch.undo()
        big = slab.alloc(1 << 20)
        assert big.segment != first.segment
        assert len(slab.segments) == 2
