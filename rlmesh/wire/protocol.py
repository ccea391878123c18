"""The rlmesh control protocol: message kinds, operations and error codes.

Every message is a msgpack array whose first element is its kind. After the
handshake, requests and responses travel over the session's shared-memory
rings when both sides share /dev/shm, else as frames on the socket.

Handshake (always on the socket)::

    client -> HELLO     [1, {"magic", "protocol", "version", "pid", "shm", "max_frame"}]
    server -> WELCOME   [2, {"protocol", "version", "session", "contract", "offer"}]
           or ERROR     [21, 0, code, remote_type, message, traceback]
    client -> ATTACHED  [3, {"token": str | None, "reason": str | None}]
    server -> READY     [4, {"data_plane": "shm" | "inline"}]

``offer`` names the session's channel segment (two message rings) and its
first slab segments. The client proves it mapped them by echoing a token
the server wrote into the channel; a client that cannot map them (no shared
/dev/shm) sends no token and the session falls back to inline frames.

Requests (``rid`` is the request id; ``releases`` a flat list of
segment, generation, offset, nbytes quadruples whose leases ended)::

    RESET     [10, rid, seed, options, releases]
    STEP      [11, rid, action, releases]
    RENDER    [12, rid, env_index, releases]
    CLOSE     [13, rid]                  detach; the server keeps serving
    SHUTDOWN  [14, rid, reason]          stop the server, if it allows that
    PING      [15, rid]

Responses::

    OK        [20, rid, ...]             reset: obs, info; step: obs, reward,
                                         terminated, truncated, info; render:
                                         frame; shutdown: accepted
    ERROR     [21, rid, code, remote_type, message, traceback]
    SEGMENTS  [22, [[id, name, size], ...]]  new slab segments to map first

A ring record tagged SPILL says: the next message is too large for the ring and
follows as a frame on the socket (see :mod:`rlmesh.wire.channel`).
"""

from __future__ import annotations

from typing import Any

from .. import errors

__all__ = ["MAGIC", "PROTOCOL_VERSION", "RELEASE", "error_from_wire", "error_to_wire"]

MAGIC = "rlmesh"

#: The rlmesh release this side runs: told to the peer at the handshake, for
#: error messages only (compatibility is :data:`PROTOCOL_VERSION`).
RELEASE = "0.1.0"

#: Bumped on any incompatible change to the messages above. Both sides must
#: agree exactly; the handshake says so clearly when they do not.
PROTOCOL_VERSION = 1

HELLO = 1
WELCOME = 2
ATTACHED = 3
READY = 4

RESET = 10
STEP = 11
RENDER = 12
CLOSE = 13
SHUTDOWN = 14
PING = 15

OK = 20
ERROR = 21
SEGMENTS = 22

# Error codes of ERROR responses.
E_ENV = "env"  # the env raised: RemoteError, the session stays usable
E_INVALID_ACTION = "invalid_action"  # InvalidActionError, the session stays usable
E_INVALID_ARGUMENT = "invalid_argument"  # ValueError for a bad request argument
E_PROTOCOL = "protocol"  # the request made no sense: ProtocolError, session ends
E_BUSY = "busy"  # BusyError: a single env object already has a client
E_VERSION = "version"  # VersionMismatch
E_STOPPING = "stopping"  # the server is shutting down
E_INTERNAL = "internal"  # a bug or resource failure inside the server

#: A remote traceback is cut to this many characters.
MAX_TRACEBACK = 64 * 1024

#: The most a server reads from a client before the handshake completes
#: (HELLO and ATTACHED are a few hundred bytes): an unauthenticated peer
#: cannot make it allocate more.
MAX_HANDSHAKE_FRAME = 64 << 10


def error_to_wire(
    rid: int,
    code: str,
    exc: BaseException | None,
    message: str,
    tb: str = "",
    *,
    detail: dict[str, Any] | None = None,
) -> list[Any]:
    """An ERROR response.

    ``detail`` (msgpack-able) rides along as a seventh field, for errors
    whose exception has attributes of its own (a peer's protocol version);
    readers that know only six fields ignore it.
    """
    remote_type = ""
    if exc is not None:
        cls = type(exc)
        remote_type = (
            cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
        )
    frame = [ERROR, rid, code, remote_type, message[:MAX_TRACEBACK], tb[-MAX_TRACEBACK:]]
    if detail:
        frame.append(detail)
    return frame


def error_from_wire(msg: list[Any], what: str) -> Exception:
    """The exception to raise for an ERROR response to operation ``what``."""
    _, _, code, remote_type, message, tb = (list(msg) + [""] * 6)[:6]
    code, remote_type, message, tb = str(code), str(remote_type), str(message), str(tb)
    detail = msg[6] if len(msg) > 6 and isinstance(msg[6], dict) else {}
    if code == E_ENV:
        return errors.RemoteError(
            f"the served env raised {remote_type or 'an exception'} in {what}: {message}",
            remote_type=remote_type,
            remote_message=message,
            remote_traceback=tb,
        )
    if code == E_INVALID_ACTION:
        return errors.InvalidActionError(message)
    if code == E_INVALID_ARGUMENT:
        return ValueError(message)
    if code == E_BUSY:
        return errors.BusyError(message)
    if code == E_VERSION:
        return errors.VersionMismatch(message, local=PROTOCOL_VERSION, remote=detail.get("protocol"))
    if code == E_STOPPING:
        return errors.BrokenError(message)
    if code == E_PROTOCOL:
        return errors.ProtocolError(message)
    return errors.RemoteError(
        f"the server failed in {what}: {message}",
        remote_type=remote_type,
        remote_message=message,
        remote_traceback=tb,
    )
