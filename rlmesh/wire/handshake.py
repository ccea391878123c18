"""The handshake messages: HELLO, WELCOME (with its offers), ATTACHED and READY.

The wire format is described in :mod:`rlmesh.wire.protocol`, which re-exports
every name here (import them from there). The handshake always travels on the
socket, before a session's channel exists.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import ProtocolError
from .kinds import (
    ATTACHED,
    HELLO,
    MAX_AUTH_TOKEN,
    READY,
    WELCOME,
    _map,
    _optional_int,
)

# -- the handshake -------------------------------------------------------------------------


class Hello(NamedTuple):
    """HELLO: the client's opening.

    ``magic`` and ``protocol`` are kept as received: the server answers a
    stranger or another protocol version with an ERROR naming them.
    """

    magic: Any
    protocol: Any
    version: str
    pid: int | None
    shm: bool
    max_frame: int | None
    auth: str | None = None
    fds: bool = False
    #: The client reads and writes compact step records (:mod:`rlmesh.wire.step_codec`).
    step_codec: bool = False

    def to_wire(self) -> list[Any]:
        """The msgpack array (``auth`` only when there is one)."""
        fields = {
            "magic": self.magic,
            "protocol": self.protocol,
            "version": self.version,
            "pid": self.pid,
            "shm": self.shm,
            "max_frame": self.max_frame,
        }
        if self.auth is not None:
            fields["auth"] = self.auth
        if self.fds:
            fields["fds"] = True
        if self.step_codec:
            fields["step_codec"] = True
        return [HELLO, fields]

    @classmethod
    def from_wire(cls, msg: Any) -> Hello:
        """Read a HELLO.

        Raises:
            ProtocolError: ``msg`` is not a HELLO.
        """
        info = _map(msg, HELLO, "HELLO")
        auth = info.get("auth")
        if auth is not None and (type(auth) is not str or len(auth.encode()) > MAX_AUTH_TOKEN):
            raise ProtocolError("malformed auth token in HELLO")
        return cls(
            magic=info.get("magic"),
            protocol=info.get("protocol"),
            version=str(info.get("version", "?")),
            pid=_optional_int(info.get("pid")),
            shm=bool(info.get("shm")),
            max_frame=_optional_int(info.get("max_frame")),
            auth=auth,
            fds=info.get("fds") is True,
            step_codec=info.get("step_codec") is True,
        )


class ChannelOffer(NamedTuple):
    """The channel segment a server offers: its name and size, and where its two rings lie.

    ``name`` is an int over a Unix socket with descriptors: the index of the
    segment's memfd among those the WELCOME frame carried.
    """

    name: str | int
    size: int
    request_offset: int
    request_capacity: int
    response_offset: int
    response_capacity: int

    def to_wire(self) -> list[Any]:
        """The msgpack array."""
        return list(self)

    @classmethod
    def from_wire(cls, value: Any) -> ChannelOffer:
        """Read a channel offer.

        Raises:
            ProtocolError: malformed.
        """
        if not (
            type(value) is list
            and len(value) == 6
            and _is_ref(value[0])
            and all(type(v) is int for v in value[1:])
        ):
            raise ProtocolError("malformed channel offer")
        return cls(*value)


class Offer(NamedTuple):
    """The shared memory a server offers: the channel segment and the first slab segments."""

    channel: ChannelOffer
    segments: list[tuple[int, str | int, int]]

    def to_wire(self) -> dict[str, Any]:
        """The msgpack map."""
        return {"channel": self.channel.to_wire(), "segments": [list(s) for s in self.segments]}

    @classmethod
    def from_wire(cls, value: Any) -> Offer:
        """Read an offer.

        Raises:
            ProtocolError: malformed.
        """
        if not isinstance(value, dict):
            raise ProtocolError("malformed shared-memory offer")
        return cls(ChannelOffer.from_wire(value.get("channel")), _segment_list(value.get("segments")))


def _is_ref(value: Any) -> bool:
    # A segment's name, or the index of its descriptor in the frame (bounded by the stream's MAX_FDS).
    return type(value) is str or (type(value) is int and 0 <= value < 64)


def _segment_list(value: Any) -> list[tuple[int, str | int, int]]:
    if type(value) is not list:
        raise ProtocolError("malformed segment announcement")
    out = []
    for entry in value:
        if not (
            type(entry) is list
            and len(entry) == 3
            and type(entry[0]) is int
            and _is_ref(entry[1])
            and type(entry[2]) is int
        ):
            raise ProtocolError("malformed segment announcement")
        out.append((entry[0], entry[1], entry[2]))
    return out


class Welcome(NamedTuple):
    """WELCOME: the server's answer to HELLO.

    ``protocol`` is kept as received (the client names it when it differs);
    ``contract`` and ``offer`` are read by the client once the versions match.
    """

    protocol: Any
    version: str
    pid: int | None
    session: str
    contract: Any
    offer: Any
    vector: Any = None

    def to_wire(self) -> list[Any]:
        """The msgpack array."""
        fields = {
            "pid": self.pid,
            "protocol": self.protocol,
            "version": self.version,
            "session": self.session,
            "contract": self.contract,
            "offer": self.offer,
        }
        if self.vector is not None:
            fields["vector"] = self.vector
        return [WELCOME, fields]

    @classmethod
    def from_wire(cls, msg: Any) -> Welcome:
        """Read a WELCOME.

        Raises:
            ProtocolError: ``msg`` is not a WELCOME.
        """
        info = _map(msg, WELCOME, "WELCOME")
        return cls(
            protocol=info.get("protocol"),
            version=str(info.get("version", "?")),
            pid=_optional_int(info.get("pid")),
            session=str(info.get("session", "")),
            contract=info.get("contract"),
            offer=info.get("offer"),
            vector=info.get("vector"),
        )


class Attached(NamedTuple):
    """ATTACHED: the client mapped the offer (it echoes the token) or says why not."""

    token: str | None
    reason: str | None

    def to_wire(self) -> list[Any]:
        """The msgpack array."""
        return [ATTACHED, {"token": self.token, "reason": self.reason}]

    @classmethod
    def from_wire(cls, msg: Any) -> Attached:
        """Read an ATTACHED; a second field that is not a map counts as "no token".

        Raises:
            ProtocolError: ``msg`` is not an ATTACHED.
        """
        if not (type(msg) is list and len(msg) == 2 and msg[0] == ATTACHED):
            raise ProtocolError("expected an ATTACHED message")
        info = msg[1] if isinstance(msg[1], dict) else {}
        token, reason = info.get("token"), info.get("reason")
        return cls(token if type(token) is str else None, None if reason is None else str(reason))


class Ready(NamedTuple):
    """READY: the session is on; ``data_plane`` says how tensors travel ("shm" or "inline").

    ``heartbeat``: the server sends a heartbeat (``[PING, 0]``) at least this
    often, in seconds, while it serves a request; None: it sends none.
    ``step_codec``: steps may travel as compact ring records
    (:mod:`rlmesh.wire.step_codec`); only when the client's HELLO offered it.
    """

    data_plane: str
    heartbeat: float | None = None
    step_codec: bool = False

    def to_wire(self) -> list[Any]:
        """The msgpack array."""
        fields: dict[str, Any] = {"data_plane": self.data_plane}
        if self.heartbeat is not None:
            fields["heartbeat"] = self.heartbeat
        if self.step_codec:
            fields["step_codec"] = True
        return [READY, fields]

    @classmethod
    def from_wire(cls, msg: Any) -> Ready:
        """Read a READY.

        Raises:
            ProtocolError: ``msg`` is not a READY.
        """
        info = _map(msg, READY, "READY")
        beat = info.get("heartbeat")
        if beat is not None and (type(beat) not in (int, float) or not 0 < beat <= 60):
            raise ProtocolError("malformed heartbeat interval in READY")
        return cls(
            str(info.get("data_plane", "inline")),
            None if beat is None else float(beat),
            info.get("step_codec") is True,
        )
