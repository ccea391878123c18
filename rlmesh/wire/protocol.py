"""The rlmesh control protocol: message kinds, operations and error codes.

Every message is a msgpack array whose first element is its kind; each has a
class here whose ``to_wire()`` builds that array and whose ``from_wire()``
checks a received one once (length, kinds of fields) and raises
:class:`~rlmesh.errors.ProtocolError` when it does not fit. After the
handshake, requests and responses travel over the session's shared-memory
rings when both sides share /dev/shm, else as frames on the socket.

Handshake (always on the socket)::

    client -> HELLO     [1, {"magic", "protocol", "version", "pid", "shm", "max_frame"(, "auth", "fds")}]
    server -> WELCOME   [2, {"protocol", "version", "session", "contract", "offer"(, "vector")}]
           or ERROR     [21, 0, code, remote_type, message, traceback]
    client -> ATTACHED  [3, {"token": str | None, "reason": str | None}]
    server -> READY     [4, {"data_plane": "shm" | "inline"(, "heartbeat": seconds)}]

``auth`` is the client's auth token (a string, at most :data:`MAX_AUTH_TOKEN`
bytes); a server with ``ServeOptions(auth_token=...)`` compares it in constant
time before it allocates anything for the session and answers a missing or
wrong one with an ERROR of code ``auth``. ``heartbeat`` (inline TCP sessions):
while a request is being served, the server sends ``[15, 0]`` (a PING with
request id 0) whenever it has sent nothing for that many seconds, so that a
client waiting on a slow step can tell a live server from a silent host.

``offer`` names the session's channel segment (two message rings) and its
first slab segments. Over a Unix socket a client that sends ``"fds": true``
gets sealed memfds instead of named segments: the WELCOME frame (and each
SEGMENTS frame) carries them as descriptors (SCM_RIGHTS), and where a name
would be, the offer holds the index (an int) of the segment's descriptor in
that frame. Over TCP, segments are named POSIX segments. ``vector``, only from a vector endpoint with worker
processes (:mod:`rlmesh.vector`) and only with an offer, names the session's
vector segment and its layout: a client that maps it steps and resets the
workers directly; one that does not (or an older client, which ignores the
field) is served through the session as before. The client proves it mapped them by echoing a token
the server wrote into the channel; a client that cannot map them (no shared
/dev/shm) sends no token and the session falls back to inline frames.

Requests (``rid`` is the request id; ``releases`` a flat list of
segment, generation, offset, nbytes quadruples whose leases ended)::

    RESET     [10, rid, seed, options, releases]
    STEP      [11, rid, action, releases]
    RENDER    [12, rid, env_index, releases]
    CLOSE     [13, rid]                  detach; the server keeps serving
    SHUTDOWN  [14, rid, reason]          stop the server, if it allows that
    PING      [15, rid]                  answered by an empty OK; from the server,
                                         [15, 0] is a heartbeat (see READY)

A model endpoint (:mod:`rlmesh.model_server`) serves one more request; its
WELCOME's contract holds the spaces the model declares, with
``metadata["rlmesh.endpoint"] == "model"``::

    PREDICT   [16, rid, observation, lanes, reset, context, releases]
                                         lanes 0: one observation; N > 0: a batch
                                         of N lanes (leading axis of every leaf);
                                         reset: the model's reset() runs first (a
                                         new episode); context: None or
                                         {"episode_id", "episode_seed"}

An env endpoint answers PREDICT, and a model endpoint RESET, STEP and RENDER,
with an ERROR of code ``invalid_argument``.

Responses::

    OK        [20, rid, ...]             reset: obs, info; step: obs, reward,
                                         terminated, truncated, info; render:
                                         frame; shutdown: accepted; predict: action
    ERROR     [21, rid, code, remote_type, message, traceback(, detail)]
    SEGMENTS  [22, [[id, name, size], ...]]  new slab segments to map first

The classes: :class:`Hello`, :class:`Welcome` (with :class:`Offer` and
:class:`ChannelOffer`), :class:`Attached`, :class:`Ready`; the requests
:class:`Reset`, :class:`Step`, :class:`Render`, :class:`Close`,
:class:`Shutdown`, :class:`Ping`, :class:`Predict` (:func:`parse_request` picks one); the
responses :class:`Ok` (read per request as :class:`ResetOk`, :class:`StepOk`,
:class:`RenderOk`, :class:`ShutdownOk`, :class:`PredictOk`), :class:`Error`, :class:`Segments`.
STEP and its OK have ``encode``/``check`` helpers that work on the array in
place, so the per-step path builds no message object.

A ring record tagged SPILL says: the next message is too large for the ring and
follows as a frame on the socket (see :mod:`rlmesh.wire.channel`).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Union

from .. import errors
from ..errors import ProtocolError

# The vocabulary and the handshake messages live in their own modules; every
# name is re-exported here, where the protocol is described.
from .handshake import (
    Attached as Attached,
    ChannelOffer as ChannelOffer,
    Hello as Hello,
    Offer as Offer,
    Ready as Ready,
    Welcome as Welcome,
    _is_ref as _is_ref,
    _segment_list as _segment_list,
)
from .kinds import (
    ATTACHED as ATTACHED,
    CLOSE as CLOSE,
    E_AUTH as E_AUTH,
    E_BUSY as E_BUSY,
    E_ENV as E_ENV,
    E_INTERNAL as E_INTERNAL,
    E_INVALID_ACTION as E_INVALID_ACTION,
    E_INVALID_ARGUMENT as E_INVALID_ARGUMENT,
    E_INVALID_OBSERVATION as E_INVALID_OBSERVATION,
    E_MODEL as E_MODEL,
    E_PROTOCOL as E_PROTOCOL,
    E_STOPPING as E_STOPPING,
    E_VERSION as E_VERSION,
    ERROR as ERROR,
    HELLO as HELLO,
    MAGIC as MAGIC,
    MAX_AUTH_TOKEN as MAX_AUTH_TOKEN,
    MAX_HANDSHAKE_FRAME as MAX_HANDSHAKE_FRAME,
    MAX_TRACEBACK as MAX_TRACEBACK,
    NO_RELEASES as NO_RELEASES,
    OK as OK,
    PING as PING,
    PREDICT as PREDICT,
    PROTOCOL_VERSION as PROTOCOL_VERSION,
    READY as READY,
    RELEASE as RELEASE,
    RENDER as RENDER,
    RESET as RESET,
    SEGMENTS as SEGMENTS,
    SHUTDOWN as SHUTDOWN,
    STEP as STEP,
    WELCOME as WELCOME,
    _map as _map,
    _optional_int as _optional_int,
    _releases as _releases,
    _rid as _rid,
    auth_token_from_env as auth_token_from_env,
    check_auth_token as check_auth_token,
)

__all__ = [
    "MAGIC",
    "NO_RELEASES",
    "PROTOCOL_VERSION",
    "RELEASE",
    "Attached",
    "ChannelOffer",
    "Close",
    "Error",
    "Hello",
    "Offer",
    "Ok",
    "Ping",
    "Predict",
    "PredictOk",
    "Ready",
    "Render",
    "RenderOk",
    "Request",
    "Reset",
    "ResetOk",
    "Segments",
    "Shutdown",
    "ShutdownOk",
    "Step",
    "StepOk",
    "Welcome",
    "auth_token_from_env",
    "check_auth_token",
    "parse_request",
]


# -- requests ------------------------------------------------------------------------------


class Reset(NamedTuple):
    """RESET: start a new episode. ``seed`` and ``options`` are checked by the endpoint."""

    rid: int
    seed: Any
    options: Any
    releases: list[int]

    def to_wire(self) -> list[Any]:
        """The msgpack array."""
        return [RESET, self.rid, self.seed, self.options, self.releases]

    @classmethod
    def from_wire(cls, msg: list[Any]) -> Reset:
        """Read a RESET.

        Raises:
            ProtocolError: malformed.
        """
        rid = _rid(msg, 5, "RESET")
        return cls(rid, msg[2], msg[3], _releases(msg[4]))


class Step(NamedTuple):
    """STEP: advance one step with ``action`` (a wire value).

    The per-step path does not build this class: :meth:`encode` builds the
    array from its fields, and :meth:`check` checks a received one in place,
    so a step costs no allocation beyond the message array itself.
    """

    rid: int
    action: Any
    releases: list[int]

    def to_wire(self) -> list[Any]:
        """The msgpack array."""
        return [STEP, self.rid, self.action, self.releases]

    @staticmethod
    def encode(rid: int, action: Any, releases: list[int]) -> list[Any]:
        """The msgpack array of a STEP, without building the message object."""
        return [STEP, rid, action, releases]

    @staticmethod
    def check(msg: list[Any]) -> None:
        """Check a received STEP in place: then ``msg[1]`` is its rid, ``msg[2]`` its action.

        Raises:
            ProtocolError: malformed, or a release list that is not a list.
        """
        if len(msg) != 4 or type(msg[1]) is not int:
            raise ProtocolError("malformed STEP")
        releases = msg[3]
        if releases and type(releases) is not list:
            raise ProtocolError("malformed release list")

    @classmethod
    def from_wire(cls, msg: list[Any]) -> Step:
        """Read a STEP.

        Raises:
            ProtocolError: malformed.
        """
        cls.check(msg)
        return cls(msg[1], msg[2], _releases(msg[3]))


class Render(NamedTuple):
    """RENDER: a frame of lane ``env_index``."""

    rid: int
    env_index: int
    releases: list[int]

    def to_wire(self) -> list[Any]:
        """The msgpack array."""
        return [RENDER, self.rid, self.env_index, self.releases]

    @classmethod
    def from_wire(cls, msg: list[Any]) -> Render:
        """Read a RENDER.

        Raises:
            ProtocolError: malformed.
        """
        rid = _rid(msg, 4, "RENDER")
        if type(msg[2]) is not int:
            raise ProtocolError("malformed RENDER")
        return cls(rid, msg[2], _releases(msg[3]))


class Close(NamedTuple):
    """CLOSE: the client detaches; the server keeps serving."""

    rid: int

    def to_wire(self) -> list[Any]:
        """The msgpack array."""
        return [CLOSE, self.rid]

    @classmethod
    def from_wire(cls, msg: list[Any]) -> Close:
        """Read a CLOSE (fields after the rid are ignored).

        Raises:
            ProtocolError: malformed.
        """
        return cls(_rid(msg, 2, "CLOSE", exact=False))


class Shutdown(NamedTuple):
    """SHUTDOWN: ask the server to stop (it may refuse)."""

    rid: int
    reason: str

    def to_wire(self) -> list[Any]:
        """The msgpack array."""
        return [SHUTDOWN, self.rid, self.reason]

    @classmethod
    def from_wire(cls, msg: list[Any]) -> Shutdown:
        """Read a SHUTDOWN (the reason may be missing).

        Raises:
            ProtocolError: malformed.
        """
        rid = _rid(msg, 2, "SHUTDOWN", exact=False)
        return cls(rid, str(msg[2]) if len(msg) > 2 else "")


class Ping(NamedTuple):
    """PING: answered with an empty OK."""

    rid: int

    def to_wire(self) -> list[Any]:
        """The msgpack array."""
        return [PING, self.rid]

    @classmethod
    def from_wire(cls, msg: list[Any]) -> Ping:
        """Read a PING (fields after the rid are ignored).

        Raises:
            ProtocolError: malformed.
        """
        return cls(_rid(msg, 2, "PING", exact=False))


class Predict(NamedTuple):
    """PREDICT: the action a served model chooses for ``observation`` (a model endpoint only).

    ``lanes`` 0: one observation; N > 0: a batch of N lanes, every leaf with
    a leading lane axis. ``reset``: a new episode begins, so the model's
    ``reset()`` runs before it predicts. ``context``: None, or the episode's
    ``{"episode_id", "episode_seed"}`` for an unbatched observation (the
    endpoint checks its fields).
    """

    rid: int
    observation: Any
    lanes: int
    reset: bool
    context: Any
    releases: list[int]

    def to_wire(self) -> list[Any]:
        """The msgpack array."""
        return [PREDICT, self.rid, self.observation, self.lanes, self.reset, self.context, self.releases]

    @classmethod
    def from_wire(cls, msg: list[Any]) -> Predict:
        """Read a PREDICT.

        Raises:
            ProtocolError: malformed (a lane count that is not an int >= 0, a
                reset flag that is not a bool, a context that is not a map).
        """
        rid = _rid(msg, 7, "PREDICT")
        lanes, reset, context = msg[3], msg[4], msg[5]
        if type(lanes) is not int or lanes < 0 or type(reset) is not bool:
            raise ProtocolError("malformed PREDICT")
        if context is not None and not isinstance(context, dict):
            raise ProtocolError("malformed PREDICT context")
        return cls(rid, msg[2], lanes, reset, context, _releases(msg[6]))


Request = Union[Reset, Step, Render, Close, Shutdown, Ping, Predict]  # noqa: UP007 - a runtime alias on 3.10

_REQUESTS: dict[Any, Any] = {
    RESET: Reset,
    STEP: Step,
    RENDER: Render,
    CLOSE: Close,
    SHUTDOWN: Shutdown,
    PING: Ping,
    PREDICT: Predict,
}


def parse_request(msg: list[Any]) -> Request:
    """Read a request whose kind and rid were checked (a list, ``msg[1]`` an int).

    Raises:
        ProtocolError: an unknown operation, or a malformed request.
    """
    cls = _REQUESTS.get(msg[0])
    if cls is None:
        raise ProtocolError(f"unknown operation {msg[0]!r}")
    request: Request = cls.from_wire(msg)
    return request


# -- responses -----------------------------------------------------------------------------


class Ok(NamedTuple):
    """OK: the request ``rid`` succeeded; ``values`` depend on the request (see below)."""

    rid: int
    values: list[Any]

    def to_wire(self) -> list[Any]:
        """The msgpack array."""
        return [OK, self.rid, *self.values]

    @staticmethod
    def encode(rid: int, values: list[Any]) -> list[Any]:
        """The msgpack array of an OK, without building the message object (the per-step path)."""
        return [OK, rid, *values]


class ResetOk(NamedTuple):
    """The OK answering RESET: the first observation and the info."""

    rid: int
    obs: Any
    info: Any

    @classmethod
    def from_wire(cls, msg: list[Any]) -> ResetOk:
        """Read it from an OK response.

        Raises:
            ProtocolError: malformed.
        """
        if len(msg) != 4:
            raise ProtocolError("malformed reset response")
        return cls(msg[1], msg[2], msg[3])


class StepOk(NamedTuple):
    """The OK answering STEP: observation, reward, terminated, truncated, info.

    For a vector endpoint the reward and flags are per-lane tensors. The
    per-step path does not build this class: :meth:`check` checks the array
    in place and the client unpacks it.
    """

    rid: int
    obs: Any
    reward: Any
    terminated: Any
    truncated: Any
    info: Any

    @staticmethod
    def check(msg: list[Any]) -> list[Any]:
        """Check an OK answering STEP in place and return it.

        Its layout is ``[OK, rid, obs, reward, terminated, truncated, info]``.

        Raises:
            ProtocolError: malformed.
        """
        if len(msg) != 7:
            raise ProtocolError("malformed step response")
        return msg

    @classmethod
    def from_wire(cls, msg: list[Any]) -> StepOk:
        """Read it from an OK response.

        Raises:
            ProtocolError: malformed.
        """
        cls.check(msg)
        return cls(*msg[1:])


class RenderOk(NamedTuple):
    """The OK answering RENDER: the frame (None when the server sent none)."""

    rid: int
    frame: Any

    @classmethod
    def from_wire(cls, msg: list[Any]) -> RenderOk:
        """Read it from an OK response."""
        return cls(msg[1], msg[2] if len(msg) > 2 else None)


class ShutdownOk(NamedTuple):
    """The OK answering SHUTDOWN: whether the server agreed to stop."""

    rid: int
    accepted: bool

    @classmethod
    def from_wire(cls, msg: list[Any]) -> ShutdownOk:
        """Read it from an OK response."""
        return cls(msg[1], bool(msg[2]) if len(msg) > 2 else False)


class PredictOk(NamedTuple):
    """The OK answering PREDICT: the action (a batch of actions for a batched PREDICT)."""

    rid: int
    action: Any

    @classmethod
    def from_wire(cls, msg: list[Any]) -> PredictOk:
        """Read it from an OK response.

        Raises:
            ProtocolError: malformed.
        """
        if len(msg) != 3:
            raise ProtocolError("malformed predict response")
        return cls(msg[1], msg[2])


class Segments(NamedTuple):
    """SEGMENTS: new slab segments (id, name, size) the client must map before what follows.

    With descriptors, each name is the index of the segment's memfd in the frame.
    """

    segments: list[tuple[int, str | int, int]]

    def to_wire(self) -> list[Any]:
        """The msgpack array."""
        return [SEGMENTS, [list(s) for s in self.segments]]

    @classmethod
    def from_wire(cls, msg: list[Any]) -> Segments:
        """Read a SEGMENTS.

        Raises:
            ProtocolError: malformed.
        """
        if len(msg) != 2:
            raise ProtocolError("unexpected segment announcement")
        return cls(_segment_list(msg[1]))


class Error(NamedTuple):
    """ERROR: request ``rid`` failed (rid 0: the handshake or the session as a whole).

    ``detail`` (msgpack-able) rides along as a seventh field, for errors whose
    exception has attributes of its own (a peer's protocol version); readers
    that know only six fields ignore it.
    """

    rid: int
    code: str
    remote_type: str
    message: str
    traceback: str
    detail: dict[str, Any] | None = None

    @classmethod
    def from_exception(
        cls,
        rid: int,
        code: str,
        exc: BaseException | None,
        message: str,
        tb: str = "",
        *,
        detail: dict[str, Any] | None = None,
    ) -> Error:
        """The ERROR for ``exc`` (None: no exception to name), cut to :data:`MAX_TRACEBACK`."""
        remote_type = ""
        if exc is not None:
            kind = type(exc)
            remote_type = (
                kind.__qualname__
                if kind.__module__ == "builtins"
                else f"{kind.__module__}.{kind.__qualname__}"
            )
        return cls(rid, code, remote_type, message[:MAX_TRACEBACK], tb[-MAX_TRACEBACK:], detail or None)

    def to_wire(self) -> list[Any]:
        """The msgpack array."""
        frame = [ERROR, self.rid, self.code, self.remote_type, self.message, self.traceback]
        if self.detail:
            frame.append(self.detail)
        return frame

    @classmethod
    def from_wire(cls, msg: list[Any]) -> Error:
        """Read an ERROR, leniently: missing fields are empty, and every field is made a string."""
        _, rid, code, remote_type, message, tb = (list(msg) + [""] * 6)[:6]
        detail = msg[6] if len(msg) > 6 and isinstance(msg[6], dict) else None
        return cls(rid if type(rid) is int else 0, str(code), str(remote_type), str(message), str(tb), detail)

    def to_exception(self, what: str) -> Exception:
        """The exception to raise for this ERROR answering operation ``what``."""
        code, remote_type, message, tb = self.code, self.remote_type, self.message, self.traceback
        if code == E_ENV:
            return errors.RemoteError(
                f"the served env raised {remote_type or 'an exception'} in {what}: {message}",
                remote_type=remote_type,
                remote_message=message,
                remote_traceback=tb,
            )
        if code == E_INVALID_ACTION:
            return errors.InvalidActionError(message)
        if code == E_INVALID_OBSERVATION:
            return errors.SpecError(message)
        if code == E_MODEL:
            return errors.RemoteError(
                f"the served model raised {remote_type or 'an exception'} in {what}: {message}",
                remote_type=remote_type,
                remote_message=message,
                remote_traceback=tb,
            )
        if code == E_INVALID_ARGUMENT:
            return ValueError(message)
        if code == E_BUSY:
            return errors.BusyError(message)
        if code == E_VERSION:
            remote = (self.detail or {}).get("protocol")
            return errors.VersionMismatch(message, local=PROTOCOL_VERSION, remote=remote)
        if code == E_STOPPING:
            return errors.BrokenError(message)
        if code == E_AUTH:
            return errors.AuthenticationError(message)
        if code == E_PROTOCOL:
            return errors.ProtocolError(message)
        return errors.RemoteError(
            f"the server failed in {what}: {message}",
            remote_type=remote_type,
            remote_message=message,
            remote_traceback=tb,
        )
