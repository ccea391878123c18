"""One lifecycle contract for every resource owner.

Segments, slabs, rings, streams, listeners, channels, sessions, clients and
servers all follow the same rules, and compose a :class:`Lifecycle` to keep
them:

* a public read-only ``state`` (:class:`State`): ``OPEN`` once usable
  (``NEW`` before, for owners that start later, as a server before
  ``start()``), ``CLOSING`` while :meth:`close` runs, ``CLOSED`` after;
* ``close()`` is idempotent, and exactly one caller does the work
  (:meth:`Lifecycle.begin_close`); it wins over a call blocked in another
  thread, which it wakes (each owner knows how: a socket shutdown, a ring's
  closed flag, a condition's notify) so that the blocked call raises
  :class:`~rlmesh.errors.ClosedError` (or a :class:`~rlmesh.errors.BrokenError`
  where the owner documents one) at once;
* using an owner after close raises :class:`~rlmesh.errors.ClosedError`
  (:meth:`Lifecycle.check_open`);
* an owner never closed is released by a ``weakref.finalize`` that captures
  only the raw resources, never the owner (:meth:`Lifecycle.watch`). When the
  garbage collector runs it, it releases them and then warns with
  ``ResourceWarning("<what> was never closed")``; an explicit close detaches
  it and releases silently (:meth:`Lifecycle.release`).

At interpreter exit, ``weakref.finalize`` runs every finalizer still alive
(its ``atexit`` hook). Those release as usual but do not warn: an owner kept
until exit (a module global, a server in ``__main__``) is a normal way to
end a program, and a warning per object on the way out helps nobody. The
flag that tells exit apart is set by an ``atexit`` hook registered after
``weakref``'s own, so it runs first (``atexit`` runs hooks last-in,
first-out).

Layer 0: standard library only.
"""

from __future__ import annotations

import atexit
import enum
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from .errors import ClosedError

__all__ = ["Lifecycle", "State"]


class State(enum.Enum):
    """Where a resource owner is in its life."""

    #: Built but not started (only owners with a ``start()``, as ``EnvServer``).
    NEW = "new"
    #: Usable.
    OPEN = "open"
    #: ``close()`` is running: new calls raise ClosedError, blocked ones are being woken.
    CLOSING = "closing"
    #: Closed: everything it owned is released (or handed to a finalizer
    #: that waits for the last view of a mapping, where the owner says so).
    CLOSED = "closed"


def _atexit_marker() -> None:
    """A throwaway referent: creating one finalizer registers ``weakref``'s exit hook now."""


class _Exit:
    # A class attribute, not a module global: read by finalizers while the
    # interpreter shuts down, when module globals may already be gone.
    exiting = False


def _mark_exit() -> None:
    _Exit.exiting = True


# weakref.finalize registers its own atexit hook the first time a finalizer
# is created. Make sure that happened, then register ours: atexit runs hooks
# in reverse order, so ours always runs before the finalizers do.
weakref.finalize(_atexit_marker, lambda: None).detach()
atexit.register(_mark_exit)


def _finalize(what: str, release: Callable[..., None], *resources: Any) -> None:
    # Runs from weakref.finalize: the owner is gone (or the interpreter exits).
    # Release first: under `-W error` the warning raises, and nothing may leak.
    release(*resources)
    if not _Exit.exiting:
        warnings.warn(f"{what} was never closed", ResourceWarning, stacklevel=2)


def _finalize_quietly(what: str, release: Callable[..., None], *resources: Any) -> None:
    # The finalizer of an owner whose close was asked for (see Lifecycle.quiet).
    release(*resources)


class Lifecycle:
    """The state, the close transition and the finalizer of one resource owner.

    An owner holds one (``self._life``) and exposes ``state`` from it. The
    helper never references the owner: :meth:`watch` registers a finalizer on
    it that holds only the raw resources.

    Args:
        what: the owner, as error messages and warnings name it
            ("shared-memory segment rlm-...", "the socket stream").
        state: the initial state: OPEN, or NEW for an owner that starts later.

    Thread safety: every transition takes a lock; reading :attr:`state` takes
    none (one attribute read, fit for a per-step check).
    """

    __slots__ = ("_finalizer", "_lock", "state", "what")

    def __init__(self, what: str, state: State = State.OPEN) -> None:
        if state not in (State.NEW, State.OPEN):
            raise ValueError(f"an owner starts NEW or OPEN, not {state.name}")
        self.what = what
        #: The current state; written only under the lock, read without it.
        self.state: State = state
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize[..., Any] | None = None

    # -- transitions ---------------------------------------------------------------

    def start(self) -> None:
        """NEW -> OPEN.

        Raises:
            ClosedError: the owner is closing or closed.
            RuntimeError: it was started already.
        """
        with self._lock:
            if self.state is State.NEW:
                self.state = State.OPEN
                return
            if self.state is State.OPEN:
                raise RuntimeError(f"{self.what} was already started")
        raise ClosedError(f"{self.what} is closed")

    def begin_close(self) -> bool:
        """NEW or OPEN -> CLOSING; True for exactly one caller, who then closes the owner.

        Every other caller (a second close, a close racing this one) gets
        False and returns at once.
        """
        with self._lock:
            if self.state is State.CLOSING or self.state is State.CLOSED:
                return False
            self.state = State.CLOSING
            return True

    def finish_close(self) -> None:
        """CLOSING -> CLOSED; the caller of :meth:`begin_close` calls it when done (in a ``finally``)."""
        with self._lock:
            self.state = State.CLOSED

    def abort_close(self) -> None:
        """CLOSING -> OPEN: the close found the owner busy and closed nothing (it raised BusyError)."""
        with self._lock:
            if self.state is State.CLOSING:
                self.state = State.OPEN

    def check_open(self) -> None:
        """Raise ClosedError unless the owner is OPEN.

        Raises:
            ClosedError: the owner is NEW (not started), CLOSING or CLOSED.
        """
        state = self.state
        if state is not State.OPEN:
            if state is State.NEW:
                raise ClosedError(f"{self.what} is not started")
            raise ClosedError(f"{self.what} is closed")

    @property
    def closed(self) -> bool:
        """True once closing began (CLOSING or CLOSED)."""
        state = self.state
        return state is State.CLOSING or state is State.CLOSED

    # -- the finalizer ---------------------------------------------------------------

    def watch(self, owner: object, release: Callable[..., None], *resources: Any) -> None:
        """Release ``resources`` with ``release(*resources)`` if ``owner`` dies unclosed.

        ``release`` and ``resources`` must not reference ``owner`` (that would
        keep it alive forever): pass raw descriptors, mappings, sockets,
        names. A second call replaces the first finalizer, detaching it.
        """
        previous = self._finalizer
        self._finalizer = weakref.finalize(owner, _finalize, self.what, release, *resources)
        if previous is not None:
            previous.detach()

    def release(self) -> bool:
        """Detach the finalizer and release its resources now, silently; False if already done.

        The explicit-close half of :meth:`watch`; safe to call twice and
        from a thread racing the garbage collector (exactly one of them
        releases).
        """
        finalizer = self._finalizer
        if finalizer is None:
            return False
        detached = finalizer.detach()
        if detached is None:
            return False
        _, _, (_, release, *resources), _ = detached
        release(*resources)
        return True

    def quiet(self) -> None:
        """Keep the finalizer, but without its warning: the owner's close was asked for.

        For an owner whose close waits on something it does not control (a
        segment whose close is deferred until its last view dies): if the
        owner is collected first, its resources are still released, and the
        owner, which did call close, is not reported as "never closed".
        Idempotent; :meth:`release` and :meth:`forget` work as before.
        """
        finalizer = self._finalizer
        if finalizer is None:
            return
        detached = finalizer.detach()
        if detached is None:
            return
        owner, _, args, _ = detached
        self._finalizer = weakref.finalize(owner, _finalize_quietly, *args)

    def forget(self) -> None:
        """Detach the finalizer without releasing: the owner released its resources itself."""
        finalizer = self._finalizer
        if finalizer is not None:
            finalizer.detach()

    @property
    def watching(self) -> bool:
        """True while a finalizer would release resources if the owner died now."""
        return self._finalizer is not None and self._finalizer.alive

    def __repr__(self) -> str:
        return f"<Lifecycle {self.what!r} {self.state.name}>"
