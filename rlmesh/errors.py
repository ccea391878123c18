"""The rlmesh exception tree.

Every error rlmesh raises on purpose is an :class:`RLMeshError`. Where a builtin
category fits, the class also derives from it, so code written against the
published RLMesh API (which raised builtins) keeps working::

    RLMeshError(Exception)
    ├── ClosedError(RuntimeError)        you closed the object, then used it
    ├── BusyError(RuntimeError)          the resource is in use: a second client of a
    │                                    single-env server, views still alive at close
    ├── WouldBlock                       a *_nowait call found a ring full or empty
    ├── OperationTimeout(TimeoutError)   a deadline passed (connect, request, wait)
    ├── TransportError(ConnectionError)  the connection failed
    │   ├── ConnectError                 could not connect or complete the handshake
    │   │   └── AuthenticationError      the server refused this client's auth token
    │   └── BrokenError                  the peer died or reset a live connection
    │       ├── WorkerError              a vector worker process died (names its lanes)
    │       └── EndpointLostError        an endpoint of a sharded vector env was lost
    │                                    (names its lanes, carries the live lanes' batch)
    ├── ProtocolError                    the peer sent something we cannot accept
    │   ├── FramingError                 bad or oversized length prefix, truncated frame
    │   ├── DecodeError                  a frame that does not decode to a valid message
    │   └── VersionMismatch              the handshake disagrees on the protocol version
    ├── SpecError(ValueError)            a value does not fit its dtype, shape or space
    │   └── InvalidActionError           an action the served env's space rejects
    ├── InvalidHandle(ValueError)        a forged, stale or out-of-bounds memory handle
    ├── ShmError                         shared memory could not be created or mapped
    │   └── ShmCapacityError             /dev/shm lacks room for a segment
    ├── RemoteError(RuntimeError)        the served env raised; carries its type and traceback
    ├── BackendUnavailable(ImportError)  an optional array library is missing or too old
    ├── CapsuleConsumedError(BufferError, TypeError)
    │                                    a DLPack capsule was imported a second time
    ├── SandboxError                     a Docker sandbox failed to build, start or stop
    └── FleetError(RuntimeError)         an env fleet on Ray failed: a host crash-looped and
                                         was retired, no host is left, a sweep's chunk failed

Every class survives ``pickle`` with its message and attributes, since errors
cross process boundaries (a worker's failure is re-raised in its parent).

Argument misuse that is not about a value's content (a wrong type, a negative
timeout) raises plain :class:`TypeError` or :class:`ValueError`, as the stdlib does.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "BackendUnavailable",
    "BrokenError",
    "BusyError",
    "CapsuleConsumedError",
    "ClosedError",
    "ConnectError",
    "DecodeError",
    "EndpointLostError",
    "FleetError",
    "FramingError",
    "InvalidActionError",
    "InvalidHandle",
    "OperationTimeout",
    "ProtocolError",
    "RLMeshError",
    "RemoteError",
    "SandboxError",
    "ShmCapacityError",
    "ShmError",
    "SpecError",
    "TransportError",
    "VersionMismatch",
    "WorkerError",
    "WouldBlock",
]


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    # Bypass __init__: subclasses take keyword-only attributes that are not in
    # `args`, and the default BaseException reduction would call cls(*args).
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class RLMeshError(Exception):
    """Base class of every error rlmesh raises deliberately."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class ClosedError(RLMeshError, RuntimeError):
    """The object was closed by this process and cannot be used any more."""


class BusyError(RLMeshError, RuntimeError):
    """The resource is held by someone else, or still has live views."""


class WouldBlock(RLMeshError):
    """A non-blocking call could not proceed without waiting."""


class OperationTimeout(RLMeshError, TimeoutError):
    """A blocking call ran past its deadline.

    Attributes:
        timeout: the deadline that passed, in seconds, when known.
    """

    def __init__(self, message: str, *, timeout: float | None = None) -> None:
        super().__init__(message)
        self.timeout = timeout


class TransportError(RLMeshError, ConnectionError):
    """The connection to the peer failed."""


class ConnectError(TransportError):
    """No connection could be made, or the handshake did not complete."""


class AuthenticationError(ConnectError):
    """The server refused the session: this client sent no auth token, or the wrong one.

    Raised by a client's constructor (the handshake); the server allocated
    nothing for the session. Pass ``auth_token=`` or set ``RLMESH_AUTH_TOKEN``.
    """


class BrokenError(TransportError):
    """The peer died, or reset a connection that was working."""


class WorkerError(BrokenError):
    """A worker process of a vector endpoint died (crashed, was killed).

    Attributes:
        lanes: the lanes that worker stepped.
        worker: the worker's index.
    """

    def __init__(self, message: str, *, lanes: list[int] | None = None, worker: int = -1) -> None:
        super().__init__(message)
        self.lanes = list(lanes or [])
        self.worker = worker


class EndpointLostError(BrokenError):
    """Endpoints of a sharded vector env were lost (``on_lost="raise"``).

    An endpoint is lost when its connection breaks, its server dies, or it
    misses the call's deadline. Its lanes are masked until it rejoins.

    Attributes:
        lanes: the global lanes of the lost endpoints, ascending.
        endpoints: the indices of the lost endpoints.
        partial: the batch of the call over every lane (the lost lanes
            truncated, as ``on_lost="truncate"`` returns it), or None.
    """

    def __init__(
        self,
        message: str,
        *,
        lanes: list[int] | None = None,
        endpoints: list[int] | None = None,
        partial: Any = None,
    ) -> None:
        super().__init__(message)
        self.lanes = list(lanes or [])
        self.endpoints = list(endpoints or [])
        self.partial = partial


class ProtocolError(RLMeshError):
    """The peer sent data that violates the rlmesh protocol."""


class FramingError(ProtocolError):
    """A frame's length prefix is invalid or too large, or the frame is truncated."""


class DecodeError(ProtocolError):
    """A frame does not decode to a valid message."""


class VersionMismatch(ProtocolError):
    """The two sides of a handshake speak different protocol versions.

    Attributes:
        local: this side's protocol version.
        remote: the peer's protocol version, or None if it sent none.
    """

    def __init__(self, message: str, *, local: int | None = None, remote: Any = None) -> None:
        super().__init__(message)
        self.local = local
        self.remote = remote


class SpecError(RLMeshError, ValueError):
    """A value does not match the dtype, shape or space it must fit."""


class InvalidActionError(SpecError):
    """The served env's action space rejected an action; the session stays usable."""


class InvalidHandle(RLMeshError, ValueError):
    """A memory handle is forged, stale, or points outside its segment."""


class ShmError(RLMeshError):
    """Shared memory could not be created, sized, mapped or verified."""


class ShmCapacityError(ShmError):
    """``/dev/shm`` has too little room for a new segment.

    Attributes:
        needed: bytes the segment needs.
        available: bytes free on the shared-memory filesystem when it failed.
    """

    def __init__(self, message: str, *, needed: int = 0, available: int = 0) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available


class RemoteError(RLMeshError, RuntimeError):
    """The served environment raised an exception.

    The server keeps serving; the message names the remote exception and the
    remote traceback is kept as text (and added as a note where supported).

    Attributes:
        remote_type: the qualified name of the remote exception's class.
        remote_message: ``str()`` of the remote exception.
        remote_traceback: the remote traceback, formatted.
    """

    def __init__(
        self,
        message: str,
        *,
        remote_type: str = "",
        remote_message: str = "",
        remote_traceback: str = "",
    ) -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        if remote_traceback and hasattr(self, "add_note"):
            self.add_note("Remote traceback:\n" + remote_traceback.rstrip())


class BackendUnavailable(RLMeshError, ImportError):
    """An optional array library is not installed, or is older than supported."""


class CapsuleConsumedError(RLMeshError, BufferError, TypeError):
    """A DLPack capsule was imported a second time; a capsule can be consumed once.

    It is a ``BufferError``, as the DLPack protocol reports such misuse, and a
    ``TypeError``, as the published RLMesh API raises for it.
    """


class SandboxError(RLMeshError):
    """A Docker sandbox failed to build, start, connect or stop."""


class FleetError(RLMeshError, RuntimeError):
    """An env fleet on Ray (:mod:`rlmesh.ray`) failed.

    A host crash-looped and was retired, a fleet lost every host, a host
    failed to start, or a sweep's chunk failed more often than allowed.
    """
