"""The control protocol's vocabulary: message kinds, error codes, limits and field checks.

The constants every message of :mod:`rlmesh.wire.protocol` is built from, the
small checks their ``from_wire()`` share, and the auth token checks. Split from
``rlmesh.wire.protocol``, which re-exports every name (import them from there).
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ProtocolError

MAGIC = "rlmesh"

#: The rlmesh release this side runs: told to the peer at the handshake, for
#: error messages only (compatibility is :data:`PROTOCOL_VERSION`).
RELEASE = "0.1.0"

#: Bumped on any incompatible change to the messages (see :mod:`rlmesh.wire.protocol`). Both sides must
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
PREDICT = 16

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
E_MODEL = "model"  # the served model raised, or returned an action outside its space: RemoteError
E_INVALID_OBSERVATION = "invalid_observation"  # SpecError: the observation does not fit the model's space
E_AUTH = "auth"  # AuthenticationError: a missing or wrong auth token, nothing allocated

#: The longest auth token a HELLO may carry, in UTF-8 bytes.
MAX_AUTH_TOKEN = 1024

#: A remote traceback is cut to this many characters.
MAX_TRACEBACK = 64 * 1024

#: The most a server reads from a client before the handshake completes
#: (HELLO and ATTACHED are a few hundred bytes): an unauthenticated peer
#: cannot make it allocate more.
MAX_HANDSHAKE_FRAME = 64 << 10


# -- helpers -------------------------------------------------------------------------------

#: The release list of a request that gives nothing back (shared; never mutated).
NO_RELEASES: list[int] = []


def _map(msg: Any, kind: int, name: str) -> dict[str, Any]:
    """The map of a handshake message ``[kind, {...}]``."""
    if not (type(msg) is list and len(msg) == 2 and msg[0] == kind and isinstance(msg[1], dict)):
        raise ProtocolError(f"expected an rlmesh {name} message")
    return msg[1]


def _rid(msg: list[Any], length: int, name: str, *, exact: bool = True) -> int:
    """Check a request's length and return its id."""
    if (len(msg) != length if exact else len(msg) < length) or type(msg[1]) is not int:
        raise ProtocolError(f"malformed {name}")
    return int(msg[1])


def _releases(value: Any) -> list[int]:
    if not value:
        return NO_RELEASES
    if type(value) is not list:
        raise ProtocolError("malformed release list")
    return value


def _optional_int(value: Any) -> int | None:
    return value if type(value) is int else None


def check_auth_token(token: str | None, name: str) -> str | None:
    """Check an auth token argument: None, or a non-empty string of at most 1024 UTF-8 bytes.

    Raises:
        TypeError: not a string. ValueError: empty or too long.
    """
    if token is None:
        return None
    if not isinstance(token, str):
        raise TypeError(f"{name} must be a str or None, got {type(token).__name__}")
    if not token:
        raise ValueError(f"{name} must not be empty")
    if len(token.encode()) > MAX_AUTH_TOKEN:
        raise ValueError(f"{name} must be at most {MAX_AUTH_TOKEN} bytes")
    return token


def auth_token_from_env(token: str | None, name: str = "auth_token") -> str | None:
    """``token``, else ``RLMESH_AUTH_TOKEN`` (an empty variable counts as unset), checked.

    Raises:
        TypeError, ValueError: as :func:`check_auth_token`.
    """
    if token is None:
        token = os.environ.get("RLMESH_AUTH_TOKEN") or None
        name = "RLMESH_AUTH_TOKEN"
    return check_auth_token(token, name)
