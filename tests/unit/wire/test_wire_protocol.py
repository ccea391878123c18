"""rlmesh.wire.protocol over a socketpair: every message, malformed input, a server session by hand.

The wire format is protocol version 1: the arrays built here are pinned, so a
change to any of them must come with a new PROTOCOL_VERSION.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from rlmesh import errors
from rlmesh.net.stream import SocketStream
from rlmesh.spaces import Box, Discrete
from rlmesh.specs import EnvContract
from rlmesh.wire import protocol as P
from rlmesh.wire.codec import decode, pack
from rlmesh.wire.server_session import ServerSession, SessionConfig

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def streams() -> Iterator[tuple[SocketStream, SocketStream]]:
    a, b = socket.socketpair()
    left, right = SocketStream(a), SocketStream(b)
    try:
        yield left, right
    finally:
        left.close()
        right.close()


def over_the_wire(streams: tuple[SocketStream, SocketStream], message: list[Any]) -> Any:
    left, right = streams
    left.send(pack(message), timeout=5)
    head, _, _ = right.recv_frame(5)
    return decode(head)


OFFER = P.Offer(P.ChannelOffer("rlm-abc", 8192, 128, 4096, 4544, 2048), [(1, "rlm-slab", 1 << 20)])

MESSAGES: list[tuple[Any, list[Any]]] = [
    (
        P.Hello("rlmesh", 1, "0.1.0", 42, True, 1 << 20),
        [
            1,
            {
                "magic": "rlmesh",
                "protocol": 1,
                "version": "0.1.0",
                "pid": 42,
                "shm": True,
                "max_frame": 1 << 20,
            },
        ],
    ),
    (
        P.Welcome(1, "0.1.0", 7, "sid", {"id": "x"}, OFFER.to_wire()),
        [
            2,
            {
                "pid": 7,
                "protocol": 1,
                "version": "0.1.0",
                "session": "sid",
                "contract": {"id": "x"},
                "offer": {
                    "channel": ["rlm-abc", 8192, 128, 4096, 4544, 2048],
                    "segments": [[1, "rlm-slab", 1 << 20]],
                },
            },
        ],
    ),
    (P.Attached("ab12", None), [3, {"token": "ab12", "reason": None}]),
    (P.Attached(None, "no /dev/shm"), [3, {"token": None, "reason": "no /dev/shm"}]),
    (P.Ready("shm"), [4, {"data_plane": "shm"}]),
    # An inline TCP session: the server sends [PING, 0] at least every 0.5 s while serving a request.
    (P.Ready("inline", 0.5), [4, {"data_plane": "inline", "heartbeat": 0.5}]),
    (
        P.Hello("rlmesh", 1, "0.1.0", 42, False, 1 << 20, auth="s3cret"),
        [
            1,
            {
                "magic": "rlmesh",
                "protocol": 1,
                "version": "0.1.0",
                "pid": 42,
                "shm": False,
                "max_frame": 1 << 20,
                "auth": "s3cret",
            },
        ],
    ),
    (P.Reset(3, 5, {"a": 1}, [1, 2, 3, 4]), [10, 3, 5, {"a": 1}, [1, 2, 3, 4]]),
    (P.Step(4, [1, 2], []), [11, 4, [1, 2], []]),
    (P.Render(5, 0, []), [12, 5, 0, []]),
    (P.Close(6), [13, 6]),
    (P.Shutdown(7, "done"), [14, 7, "done"]),
    (P.Ping(8), [15, 8]),
    (P.Segments([(2, "rlm-more", 4096)]), [22, [[2, "rlm-more", 4096]]]),
    # With descriptors (a Unix socket): the index of each memfd in the frame, not a name.
    (P.Segments([(2, 0, 4096), (3, 1, 8192)]), [22, [[2, 0, 4096], [3, 1, 8192]]]),
    (
        P.Hello("rlmesh", 1, "0.1.0", 42, True, 1 << 20, fds=True),
        [
            1,
            {
                "magic": "rlmesh",
                "protocol": 1,
                "version": "0.1.0",
                "pid": 42,
                "shm": True,
                "max_frame": 1 << 20,
                "fds": True,
            },
        ],
    ),
    (P.Error(9, P.E_ENV, "KeyError", "boom", "tb"), [21, 9, "env", "KeyError", "boom", "tb"]),
    (
        P.Error(0, P.E_VERSION, "", "old", "", {"protocol": 1}),
        [21, 0, "version", "", "old", "", {"protocol": 1}],
    ),
]


@pytest.mark.parametrize("message, wire", MESSAGES, ids=[type(m).__name__ for m, _ in MESSAGES])
def test_each_message_keeps_protocol_1_layout_and_survives_a_socket(
    streams, message: Any, wire: list[Any]
) -> None:
    assert P.PROTOCOL_VERSION == 1
    assert message.to_wire() == wire
    received = over_the_wire(streams, message.to_wire())
    assert type(message).from_wire(received) == message


def test_requests_parse_by_kind(streams) -> None:
    for request in (
        P.Reset(1, None, None, []),
        P.Render(2, 1, []),
        P.Close(3),
        P.Shutdown(4, "r"),
        P.Ping(5),
    ):
        assert P.parse_request(over_the_wire(streams, request.to_wire())) == request
    assert P.parse_request([11, 6, 0, []]) == P.Step(6, 0, [])


def test_offer_round_trip() -> None:
    assert P.Offer.from_wire(OFFER.to_wire()) == OFFER


def test_the_per_step_helpers_build_and_check_in_place() -> None:
    wire = P.Step.encode(3, "a", P.NO_RELEASES)
    assert wire == P.Step(3, "a", []).to_wire()
    P.Step.check(wire)
    ok = P.Ok.encode(3, ["obs", 1.0, False, True, {}])
    assert ok == P.Ok(3, ["obs", 1.0, False, True, {}]).to_wire()
    assert P.StepOk.check(ok) is ok
    assert P.StepOk.from_wire(ok) == P.StepOk(3, "obs", 1.0, False, True, {})
    assert P.ResetOk.from_wire([20, 1, "obs", {}]) == P.ResetOk(1, "obs", {})
    assert P.RenderOk.from_wire([20, 1]) == P.RenderOk(1, None)
    assert P.ShutdownOk.from_wire([20, 1, 1]) == P.ShutdownOk(1, True)


MALFORMED: list[tuple[Any, Any, str]] = [
    (P.Hello.from_wire, [1, "not a map"], "HELLO"),
    (P.Hello.from_wire, [2, {}], "HELLO"),
    (P.Hello.from_wire, "hello", "HELLO"),
    (P.Welcome.from_wire, [2, {}, 3], "WELCOME"),
    (P.Attached.from_wire, [4, {}], "ATTACHED"),
    (P.Ready.from_wire, [4], "READY"),
    (P.Ready.from_wire, [4, {"data_plane": "inline", "heartbeat": "often"}], "heartbeat"),
    (P.Ready.from_wire, [4, {"data_plane": "inline", "heartbeat": 0}], "heartbeat"),
    (P.Hello.from_wire, [1, {"magic": "rlmesh", "auth": 12345}], "auth token"),
    (P.Hello.from_wire, [1, {"magic": "rlmesh", "auth": "x" * (P.MAX_AUTH_TOKEN + 1)}], "auth token"),
    (P.ChannelOffer.from_wire, ["n", 1, 2, 3, 4], "channel offer"),
    (P.ChannelOffer.from_wire, [True, 1, 2, 3, 4, 5], "channel offer"),
    (P.ChannelOffer.from_wire, [-1, 1, 2, 3, 4, 5], "channel offer"),
    (P.ChannelOffer.from_wire, [64, 1, 2, 3, 4, 5], "channel offer"),
    (P.ChannelOffer.from_wire, [1.0, 1, 2, 3, 4, 5], "channel offer"),
    (P.Offer.from_wire, None, "offer"),
    (P.Offer.from_wire, {"channel": ["n", 1, 2, 3, 4, 5], "segments": [[1, "s"]]}, "segment"),
    (P.Reset.from_wire, [10, 1, None, None], "RESET"),
    (P.Reset.from_wire, [10, 1, None, None, "releases"], "release list"),
    (P.Step.from_wire, [11, "1", 0, []], "STEP"),
    (P.Step.from_wire, [11, 1, 0, [], 5], "STEP"),
    (P.Step.from_wire, [11, 1, 0, {"a": 1}], "release list"),
    (P.Render.from_wire, [12, 1, "0", []], "RENDER"),
    (P.Close.from_wire, [13, None], "CLOSE"),
    (P.Shutdown.from_wire, [14], "SHUTDOWN"),
    (P.Segments.from_wire, [22, [[1, "s", "big"]]], "segment"),
    (P.Segments.from_wire, [22], "segment"),
    (P.Segments.from_wire, [22, [[1, -1, 4096]]], "segment"),
    (P.Segments.from_wire, [22, [[1, 64, 4096]]], "segment"),
    (P.StepOk.check, [20, 1, "obs"], "step response"),
    (P.ResetOk.from_wire, [20, 1], "reset response"),
    (P.parse_request, [99, 1], "unknown operation 99"),
]


@pytest.mark.parametrize("read, wire, match", MALFORMED)
def test_malformed_messages_are_protocol_errors(read: Any, wire: Any, match: str) -> None:
    with pytest.raises(errors.ProtocolError, match=match):
        read(wire)


def test_errors_map_to_the_exceptions_of_the_error_tree() -> None:
    def raised(code: str, detail: dict[str, Any] | None = None) -> Exception:
        return P.Error(1, code, "pkg.Boom", "it broke", "Traceback...", detail).to_exception("step")

    env = raised(P.E_ENV)
    assert isinstance(env, errors.RemoteError) and "served env raised pkg.Boom in step" in str(env)
    assert (env.remote_type, env.remote_traceback) == ("pkg.Boom", "Traceback...")
    assert isinstance(raised(P.E_INVALID_ACTION), errors.InvalidActionError)
    assert type(raised(P.E_INVALID_ARGUMENT)) is ValueError
    assert isinstance(raised(P.E_BUSY), errors.BusyError)
    version = raised(P.E_VERSION, {"protocol": 7})
    assert isinstance(version, errors.VersionMismatch) and (version.local, version.remote) == (1, 7)
    assert isinstance(raised(P.E_STOPPING), errors.BrokenError)
    auth = raised(P.E_AUTH)
    assert isinstance(auth, errors.AuthenticationError) and isinstance(auth, errors.ConnectError)
    assert isinstance(raised(P.E_PROTOCOL), errors.ProtocolError)
    internal = raised(P.E_INTERNAL)
    assert isinstance(internal, errors.RemoteError) and "the server failed in step" in str(internal)


def test_an_error_names_its_exception_and_is_cut_to_size() -> None:
    error = P.Error.from_exception(
        4, P.E_ENV, KeyError("k"), "m" * (P.MAX_TRACEBACK + 10), "t" * (P.MAX_TRACEBACK + 5)
    )
    assert error.remote_type == "KeyError"
    assert len(error.message) == len(error.traceback) == P.MAX_TRACEBACK
    assert (
        P.Error.from_exception(4, P.E_ENV, errors.BusyError("x"), "m").remote_type
        == "rlmesh.errors.BusyError"
    )
    # A reader that knows six fields, or gets fewer, still reads an ERROR.
    assert P.Error.from_wire([21, 4, "env"]) == P.Error(4, "env", "", "", "", None)


# -- a server session over a socketpair, through its seam -------------------------------------


class Host:
    """A SessionHost with one handler kind and nothing else."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.ended: list[ServerSession] = []
        self.stop_requests = 0
        self.allow_shutdown = False

    def open_session(self, session: ServerSession) -> Handler:
        return Handler(session)

    def active_sessions(self) -> int:
        return 1

    def shutdown_allowed(self) -> bool:
        return self.allow_shutdown

    def request_stop(self) -> None:
        self.stop_requests += 1
        self.stopping.set()

    def session_ended(self, session: ServerSession) -> None:
        self.ended.append(session)


CONTRACT = EnvContract.from_dict(
    {
        "id": "Echo-v0",
        "observation_space": Box(0.0, 1.0, (2,)).spec.to_dict(),
        "action_space": Discrete(3).spec.to_dict(),
        "num_envs": 1,
        "render_mode": None,
        "metadata": {},
    }
)


class Handler:
    """A RequestHandler that echoes the action back as the observation."""

    def __init__(self, session: ServerSession) -> None:
        self.session = session
        self.released = 0

    @property
    def contract(self) -> EnvContract:
        return CONTRACT

    def on_reset(self, rid: int, seed: Any, options: Any) -> bool:
        self.session.reply_ok(rid, [seed, {}], self.session.begin_response())
        return True

    def on_step(self, rid: int, action: Any) -> bool:
        if action == 2:
            self.session.reply_error(rid, P.E_INVALID_ACTION, None, "no 2s")
            return True
        self.session.reply_ok(rid, [action, 1.0, False, False, {}], self.session.begin_response())
        return True

    def on_render(self, rid: int, env_index: int) -> bool:
        try:
            raise KeyError("no frames here")
        except KeyError as exc:
            self.session.fail(rid, exc)
        return True

    def release(self) -> None:
        self.released += 1


@pytest.fixture
def session(streams) -> Iterator[tuple[ServerSession, SocketStream, Host]]:
    client, server_end = streams
    host = Host()
    config = SessionConfig(
        handshake_timeout=5.0, shared_memory=False, spin=0.0, log=logging.getLogger("test")
    )
    session = ServerSession(host, server_end, config)
    session.thread.start()
    try:
        yield session, client, host
    finally:
        host.stopping.set()
        server_end.close()
        session.thread.join(5)
        assert not session.thread.is_alive()


def ask(client: SocketStream, message: list[Any]) -> Any:
    client.send(pack(message), timeout=5)
    head, _, _ = client.recv_frame(5)
    return decode(head)


def handshake(client: SocketStream) -> P.Welcome:
    hello = P.Hello(P.MAGIC, P.PROTOCOL_VERSION, "test", 1, False, client.max_frame)
    welcome = P.Welcome.from_wire(ask(client, hello.to_wire()))
    assert P.Ready.from_wire(ask(client, P.Attached(None, "not asked").to_wire())) == P.Ready("inline")
    return welcome


def test_a_server_session_serves_a_handler_through_typed_calls(session) -> None:
    server, client, host = session
    welcome = handshake(client)
    assert welcome.protocol == 1 and welcome.offer is None and welcome.session == server.id
    assert EnvContract.from_dict(welcome.contract) == CONTRACT
    assert P.ResetOk.from_wire(ask(client, P.Reset(1, 9, None, []).to_wire())) == P.ResetOk(1, 9, {})
    assert P.StepOk.from_wire(ask(client, P.Step(2, 1, []).to_wire())) == P.StepOk(
        2, 1, 1.0, False, False, {}
    )
    refused = P.Error.from_wire(ask(client, P.Step(3, 2, []).to_wire()))
    assert (refused.rid, refused.code, refused.message) == (3, P.E_INVALID_ACTION, "no 2s")
    failed = P.Error.from_wire(ask(client, P.Render(4, 0, []).to_wire()))
    assert (failed.code, failed.remote_type) == (P.E_ENV, "KeyError") and "no frames here" in failed.traceback
    assert ask(client, P.Ping(5).to_wire()) == [P.OK, 5]
    assert ask(client, P.Shutdown(6, "please").to_wire()) == [P.OK, 6, False]  # not allowed
    assert ask(client, P.Close(7).to_wire()) == [P.OK, 7]
    server.thread.join(5)
    assert host.ended == [server] and host.stop_requests == 0


def test_a_malformed_request_ends_the_session_with_an_error(session) -> None:
    server, client, host = session
    handshake(client)
    error = P.Error.from_wire(ask(client, [P.STEP, 1, 0]))
    assert (error.rid, error.code, error.message) == (1, P.E_PROTOCOL, "malformed STEP")
    server.thread.join(5)
    assert host.ended == [server]
    with pytest.raises(errors.BrokenError):
        client.recv_frame(5)


def test_a_stranger_is_told_so_and_dropped(session) -> None:
    server, client, host = session
    answer = P.Error.from_wire(ask(client, P.Hello("other", 1, "x", 1, False, 1).to_wire()))
    assert (answer.code, answer.message) == (P.E_PROTOCOL, "not an rlmesh client")
    server.thread.join(5)
    assert host.ended == [server]


def test_a_client_of_another_protocol_gets_a_version_error_naming_ours(session) -> None:
    server, client, _ = session
    answer = P.Error.from_wire(ask(client, P.Hello(P.MAGIC, 2, "9.9", 1, False, 1).to_wire()))
    exc = answer.to_exception("the handshake")
    assert isinstance(exc, errors.VersionMismatch) and exc.remote == 1
    assert "speaks protocol 2" in answer.message


def test_an_allowed_shutdown_stops_the_host(session) -> None:
    server, client, host = session
    host.allow_shutdown = True
    handshake(client)
    assert ask(client, P.Shutdown(1, "bye").to_wire()) == [P.OK, 1, True]
    server.thread.join(5)
    assert host.stop_requests == 1
