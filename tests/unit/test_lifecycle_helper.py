"""rlmesh._lifecycle: the state enum, the close transition and the finalizer helper."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import warnings

import pytest

from rlmesh._lifecycle import Lifecycle, State
from rlmesh.errors import ClosedError
from tests import conftest


class Owner:
    """A stand-in resource owner: a pipe's two descriptors."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self._life = Lifecycle("the test owner")
        self._life.watch(self, _close_fds, self.r, self.w)

    def close(self) -> None:
        if self._life.begin_close():
            try:
                self._life.release()
            finally:
                self._life.finish_close()


def _close_fds(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


def fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_starts_open_and_closes_once() -> None:
    life = Lifecycle("thing")
    assert life.state is State.OPEN and not life.closed
    life.check_open()
    assert life.begin_close() is True
    assert life.state is State.CLOSING and life.closed
    assert life.begin_close() is False
    life.finish_close()
    assert life.state is State.CLOSED
    assert life.begin_close() is False
    with pytest.raises(ClosedError, match="thing is closed"):
        life.check_open()


def test_new_owner_starts_and_can_close_before_starting() -> None:
    life = Lifecycle("server", State.NEW)
    with pytest.raises(ClosedError, match="not started"):
        life.check_open()
    life.start()
    assert life.state is State.OPEN
    with pytest.raises(RuntimeError, match="already started"):
        life.start()
    never_started = Lifecycle("server", State.NEW)
    assert never_started.begin_close()
    never_started.finish_close()
    with pytest.raises(ClosedError):
        never_started.start()


def test_an_owner_cannot_start_closed() -> None:
    with pytest.raises(ValueError, match="starts NEW or OPEN"):
        Lifecycle("x", State.CLOSED)


def test_abort_close_reopens() -> None:
    life = Lifecycle("segment")
    assert life.begin_close()
    life.abort_close()
    assert life.state is State.OPEN
    life.check_open()


def test_exactly_one_of_many_racing_closers_wins() -> None:
    life = Lifecycle("raced")
    start = threading.Barrier(8)
    wins: list[bool] = []

    def closer() -> None:
        start.wait()
        wins.append(life.begin_close())

    threads = [threading.Thread(target=closer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sorted(wins) == [False] * 7 + [True]


def test_explicit_close_releases_silently() -> None:
    owner = Owner()
    r, w = owner.r, owner.w
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        owner.close()
        owner.close()
        del owner
        gc.collect()
    assert not fd_open(r) and not fd_open(w)


def test_dropped_owner_is_released_then_warned_about() -> None:
    owner = Owner()
    r, w = owner.r, owner.w
    with pytest.warns(ResourceWarning, match="the test owner was never closed"):
        del owner
        gc.collect()
    assert not fd_open(r) and not fd_open(w)


def test_release_is_done_when_the_warning_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under `-W error` the warning raises inside the finalizer: the release came first.
    raised: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: raised.append(unraisable.exc_type))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        owner = Owner()
        r = owner.r
        del owner
        gc.collect()
    assert raised == [ResourceWarning]
    assert not fd_open(r)


def test_release_and_forget_are_idempotent() -> None:
    owner = Owner()
    r = owner.r
    assert owner._life.watching
    assert owner._life.release() is True
    assert owner._life.release() is False
    assert not owner._life.watching and not fd_open(r)
    other = Owner()
    other._life.forget()
    _close_fds(other.r, other.w)
    assert other._life.release() is False


def test_watch_never_keeps_the_owner_alive() -> None:
    import weakref

    owner = Owner()
    ref = weakref.ref(owner)
    with pytest.warns(ResourceWarning):
        del owner
        gc.collect()
    assert ref() is None


EXIT_PROGRAM = """
import os, sys
from rlmesh._lifecycle import Lifecycle

class Owner:
    pass

def release(path):
    os.unlink(path)
    print("released", flush=True)

path = sys.argv[1]
open(path, "w").close()
KEPT = Owner()
life = Lifecycle("kept until exit")
life.watch(KEPT, release, path)
"""


def test_owners_alive_at_exit_are_released_without_a_warning(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "resource")
    proc = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", EXIT_PROGRAM, path],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=conftest.ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "released\n"
    assert "never closed" not in proc.stderr and "ResourceWarning" not in proc.stderr
    assert not os.path.exists(path)


def test_a_quieted_owner_dropped_is_released_without_a_warning() -> None:
    # An owner whose close was asked for but waits (a segment's deferred close).
    owner = Owner()
    r, w = owner.r, owner.w
    owner._life.quiet()
    owner._life.quiet()  # idempotent
    assert owner._life.watching
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del owner
        gc.collect()
    assert not fd_open(r) and not fd_open(w)


def test_a_quieted_owner_still_releases_on_close() -> None:
    owner = Owner()
    r, w = owner.r, owner.w
    owner._life.quiet()
    owner.close()
    assert not owner._life.watching
    assert not fd_open(r) and not fd_open(w)
