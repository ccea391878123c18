"""Listening sockets: bind exactly where asked, report where clients dial, accept with deadlines.

:class:`Listener` binds a Unix socket (a 0600 file, a stale one replaced) or a
TCP address (one interface, or a wildcard for all) and accepts connections
for :class:`~rlmesh.net.stream.SocketStream`; out of descriptors it turns a
client away with a reason instead of spinning. :func:`dialable_host` says
where clients reach a wildcard listener.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from .._deadline import Deadline
from .._lifecycle import Lifecycle, State
from ..errors import ClosedError, ConnectError
from .address import Address
from .stream import _wait

__all__ = ["Listener", "dialable_host"]


def dialable_host(host: str) -> str:
    """The host a client elsewhere dials to reach a listener bound on ``host``.

    A specific address is itself. A wildcard ("0.0.0.0", "::", "") listens on
    every interface, which no client can dial: this host's routable address
    (the source address of its default route; no packet is sent), else the
    address its hostname resolves to, else loopback.
    """
    if host not in ("0.0.0.0", "::", ""):
        return host
    family = socket.AF_INET6 if host == "::" else socket.AF_INET
    probe_target = ("2001:db8::1", 9) if family == socket.AF_INET6 else ("198.51.100.1", 9)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(probe_target)  # UDP: picks a route, sends nothing
            found = str(probe.getsockname()[0])
        if not ipaddress.ip_address(found).is_loopback:
            return found
    except (OSError, ValueError):
        pass
    try:
        found = socket.gethostbyname(socket.gethostname())
        if not ipaddress.ip_address(found).is_loopback:
            return found
    except (OSError, ValueError):
        pass
    return "::1" if family == socket.AF_INET6 else "127.0.0.1"


class _Reserve:
    """One spare descriptor (on ``/dev/null``), to be freed when none is left.

    Lifetime: opens in the constructor; :meth:`close` (idempotent) closes it
    for good. Kept apart from the listener so that a finalizer can close it
    without holding the listener alive.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._fd = -1
        self.restore()

    def release(self) -> bool:
        """Close the spare so that the next descriptor can take its number; False if none is held."""
        with self._lock:
            if self._fd < 0:
                self._fd = self._open()
            fd, self._fd = self._fd, -1
        if fd < 0:
            return False
        os.close(fd)
        return True

    def restore(self) -> None:
        """Take a spare again (quietly none if every descriptor is in use)."""
        with self._lock:
            if self._fd < 0 and not self._closed:
                self._fd = self._open()

    def adopt(self, fd: int) -> None:
        """Keep ``fd`` (which we own) as the spare, or close it if a spare is held.

        Any open descriptor reserves its number. Adopting the one just used
        for a rejected connection, instead of closing it and opening a new
        spare, leaves no moment in which another thread could take the number.
        """
        with self._lock:
            if self._fd < 0 and not self._closed:
                self._fd, fd = fd, -1
        if fd >= 0:
            os.close(fd)

    def close(self) -> None:
        """Close the spare for good. Idempotent."""
        with self._lock:
            self._closed = True
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def _open(self) -> int:
        if self._closed:
            return -1
        try:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return -1


def _close_listener(sock: socket.socket, reserve: _Reserve, path: str | None, inode: int) -> None:
    # Close a listener's resources (its explicit close, or its finalizer): never the listener.
    try:
        # Wakes a thread waiting in poll(2) on it (Linux); close() alone would not.
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
    reserve.close()
    if path is not None:
        try:
            # Only remove the file if it is still the one we bound.
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        except OSError:
            pass


class Listener:
    """A listening socket.

    Lifetime: binds in the constructor; :meth:`close` stops listening and,
    for a Unix socket, removes the socket file it created. Idempotent. A
    close from another thread wakes an :meth:`accept` waiting in this one
    (the listening socket is shut down first), which raises ClosedError. A
    listener never closed is closed when garbage collected, with a
    ``ResourceWarning``.

    Out of descriptors (``EMFILE``), a listener cannot accept, and a
    connection left in the queue keeps the listener readable: a naive loop
    spins and the client waits out its timeout. So the listener keeps one
    descriptor in reserve: when accepting fails for want of descriptors, it
    frees the reserve, accepts the connection on it, and hands it to
    ``reject`` on a thread of its own (which can tell the client why); the
    rejected connection's descriptor, shut down, then becomes the reserve.

    Args:
        address: where to listen; TCP port 0 picks a free port. A TCP host
            is bound exactly (one interface's IP, or a wildcard for all).

    Attributes:
        address: where clients dial, with the real port; for a wildcard bind
            ("0.0.0.0", "::") this host's routable address (:func:`dialable_host`).
        bound: the address as bound (the wildcard kept).
        backlog: the listen queue length.
        reject: called with each connection turned away for want of
            descriptors, on a short-lived thread; it must not close the socket
            (the listener does) and should return within a second or two.
            None closes such connections at once.

    Raises:
        ConnectError: the address cannot be bound (in use, permission, a
            non-socket file at a Unix path).
    """

    def __init__(
        self,
        address: Address,
        *,
        backlog: int = 128,
        reject: Callable[[socket.socket], None] | None = None,
    ) -> None:
        self._life = Lifecycle(f"the listener on {address}")
        self._path: str | None = None
        self._inode = 0
        self._reject = reject
        self._reserve = _Reserve()
        if address.transport == "unix":
            assert address.path is not None
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self._bind_unix(address.path)
            except BaseException:
                self._sock.close()
                self._reserve.close()
                raise
            self.address = self.bound = address
        else:
            host = address.host or "127.0.0.1"
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._sock = socket.socket(family, socket.SOCK_STREAM)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self._sock.bind((host, address.port or 0))
            except OSError as exc:
                self._sock.close()
                self._reserve.close()
                raise ConnectError(
                    f"failed to bind tcp listener on {address}: {exc.strerror or exc}"
                ) from exc
            port = self._sock.getsockname()[1]
            #: Where the socket is bound (a wildcard host stays a wildcard).
            self.bound = Address("tcp", host=host, port=port)
            self.address = Address("tcp", host=dialable_host(host), port=port)
        self._sock.listen(backlog)
        self._sock.setblocking(False)
        self._life.watch(self, _close_listener, self._sock, self._reserve, self._path, self._inode)

    @property
    def state(self) -> State:
        """OPEN, CLOSING or CLOSED (see :mod:`rlmesh._lifecycle`)."""
        return self._life.state

    def _bind_unix(self, path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise ConnectError(f"failed to bind unix listener: {path} exists and is not a socket")
            # A socket file nobody answers on is stale (its server died): reuse the path.
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(1.0)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)
            else:
                raise ConnectError(f"failed to bind unix listener: a server is already listening on {path}")
            finally:
                probe.close()
        old_umask = os.umask(0o177)  # the socket file is born 0600
        try:
            self._sock.bind(path)
        except OSError as exc:
            raise ConnectError(f"failed to bind unix listener on {path}: {exc.strerror or exc}") from exc
        finally:
            os.umask(old_umask)
        self._path = path
        self._inode = os.stat(path).st_ino

    def fileno(self) -> int:
        """The listening socket's descriptor."""
        return self._sock.fileno()

    def accept(self, timeout: float | None) -> socket.socket | None:
        """Accept one connection, or return None if none came before ``timeout``.

        Args:
            timeout: seconds to wait; None waits forever; 0 takes a
                connection only if one is already queued.

        Raises:
            ClosedError: the listener is closed.
            ValueError: ``timeout`` is negative or NaN.
        """
        self._life.check_open()
        deadline = Deadline.after(timeout)
        try:
            # poll(2), not select(2): a busy server's descriptors can pass FD_SETSIZE.
            poller = select.poll()
            poller.register(self._sock, select.POLLIN)
            if not _wait(poller, deadline):
                return None
            sock, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        except (OSError, ValueError) as exc:
            if self._life.closed:
                # Closed by another thread while we waited.
                raise ClosedError("the listener is closed") from None
            if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
                self._turn_away()
                return None
            if isinstance(exc, OSError) and exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                return None
            raise
        sock.setblocking(True)
        return sock

    def _turn_away(self) -> None:
        """Out of descriptors: accept one connection on the reserve and reject it."""
        if not self._reserve.release():
            # The reserve is out turning away another client: wait a little
            # rather than spin on a listener that stays readable.
            time.sleep(0.01)
            return
        try:
            sock, _ = self._sock.accept()
        except OSError:
            self._reserve.restore()  # nothing to accept after all (or no number freed)
            time.sleep(0.01)
            return

        def finish() -> None:
            try:
                if self._reject is not None:
                    self._reject(sock)
            except Exception:  # noqa: BLE001 - a failed courtesy message changes nothing
                pass
            finally:
                # Keep the rejected socket's descriptor as the next spare.
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._reserve.adopt(sock.detach())

        threading.Thread(target=finish, name="rlmesh-turn-away", daemon=True).start()

    def close(self) -> None:
        """Stop listening; remove our Unix socket file. Idempotent.

        An :meth:`accept` waiting in another thread wakes and raises ClosedError.
        """
        if not self._life.begin_close():
            return
        try:
            self._life.release()  # _close_listener
        finally:
            self._life.finish_close()

    @property
    def closed(self) -> bool:
        """True once closing began."""
        return self._life.closed

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Listener {self.address} {self._life.state.name.lower()}>"
