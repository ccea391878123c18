"""The server's side of a session: handshake, channel, data plane, request loop.

A :class:`ServerSession` serves one client connection on its own thread. It
runs the handshake, offers shared memory (a channel segment with two message
rings, and a :class:`DataPlane` of slab blocks for response tensors) and
falls back to inline frames when the client cannot map it, then reads
requests, checks them once against :mod:`rlmesh.wire.protocol`, and hands
each to its :class:`RequestHandler` with typed arguments.

The seam is two small protocols: the server that owns sessions is a
:class:`SessionHost` (what the session needs from it: a handler for a new
client, the stop flag, shutdown permission), and the endpoint's request
logic is a :class:`RequestHandler` (an env, a vector pool, or a served
model: :mod:`rlmesh.model_server`). Neither side touches the other's fields.

:func:`rlmesh.specs.step_tensor_sizes` and :func:`rlmesh.specs.action_bytes_bound`
(both walks of the contract's spaces) size the data plane's slot rings and the
session's message rings, so that steady-state steps allocate nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import threading
import time
import traceback
import uuid
from typing import Any, Protocol, cast

from .._lifecycle import Lifecycle, State
from ..errors import (
    BrokenError,
    BusyError,
    ClosedError,
    InvalidHandle,
    OperationTimeout,
    ProtocolError,
    RLMeshError,
    ShmError,
)
from ..net.stream import SocketStream
from ..shm import Segment, SegmentKind, SpinPolicy
from ..shm._memfd import supported as _memfd_supported
from ..specs import EnvContract, action_bytes_bound, response_bytes_bound
from . import protocol as P
from .channel import Channel, RingChannel, SocketChannel, channel_layout, write_token
from .codec import TailBuilder, decode, pack
from .data_plane import DataPlane, pow2
from .step_codec import StepLayout, step_codec_enabled, step_layout

__all__ = [
    "HEARTBEAT_INTERVAL",
    "DataPlane",
    "RequestHandler",
    "ServerSession",
    "SessionConfig",
    "SessionHost",
    "pow2",
]


#: While a request is served on an inline TCP session, a heartbeat goes out
#: whenever nothing was sent for this many seconds (see :meth:`ServerSession.beat`).
HEARTBEAT_INTERVAL = 0.5

#: The heartbeat frame's head: a PING with request id 0 (no request has id 0).
_HEARTBEAT = pack([P.PING, 0])


#: The response ring's largest size from its inline tensors (see _make_offer).
_MAX_RESPONSE_RING = 16 << 20


def _digest(token: str) -> bytes:
    # Both sides of the comparison hashed first: compare_digest then compares
    # equal lengths, so not even the token's length leaks through timing.
    return hashlib.sha256(token.encode()).digest()


class RequestHandler(Protocol):
    """An endpoint's answer to one session's requests (the env today).

    Each ``on_*`` method serves one checked request and answers it through
    the session (:meth:`ServerSession.reply_ok`, :meth:`ServerSession.reply_error`,
    :meth:`ServerSession.fail`); it returns False to end the session. What it
    raises ends the session too: :class:`ProtocolError` and :class:`InvalidHandle`
    after an ERROR answer, anything else after a log line.
    """

    @property
    def contract(self) -> EnvContract:
        """What the client is told it talks to (sizes the session's memory)."""
        ...

    def on_reset(self, rid: int, seed: Any, options: Any) -> bool:
        """Serve RESET (``seed`` and ``options`` as received: the handler checks them)."""
        ...

    def on_step(self, rid: int, action: Any) -> bool:
        """Serve STEP (``action`` is a wire value, tensors decoded)."""
        ...

    def on_render(self, rid: int, env_index: int) -> bool:
        """Serve RENDER."""
        ...

    def release(self) -> None:
        """The session is over (or the client detached): give back what it held. Called once."""
        ...


class CompactStepHandler(RequestHandler, Protocol):
    """A handler that also serves compact steps (:mod:`rlmesh.wire.step_codec`): a single env.

    The session negotiates the codec only with a handler whose ``step_codec``
    is true, and then hands it every compact STEP.
    """

    step_codec: bool

    def on_step_compact(self, rid: int, action: Any) -> bool:
        """Serve a compact STEP (``action`` an int, or the action's exact bytes)."""
        ...


def _compact_handler(handler: RequestHandler | None) -> CompactStepHandler | None:
    """``handler`` when it serves compact steps, else None."""
    if handler is not None and getattr(handler, "step_codec", False) and hasattr(handler, "on_step_compact"):
        return cast(CompactStepHandler, handler)  # the protocol's two members, checked just above
    return None


class SessionHost(Protocol):
    """What a session needs from the server that accepted it."""

    @property
    def stopping(self) -> threading.Event:
        """Set when the server stops: sessions end once their request is answered."""
        ...

    def open_session(self, session: ServerSession) -> RequestHandler:
        """A handler for a new client that passed the version and user checks.

        Raises:
            BusyError: the server has no room for this client (told to it as such).
            ClosedError: the server is stopping.
        """
        ...

    def active_sessions(self) -> int:
        """How many sessions are live (a session spins only while it is the only one)."""
        ...

    def shutdown_allowed(self) -> bool:
        """Whether a client may stop the server."""
        ...

    def request_stop(self) -> None:
        """Stop the server (asked by a client that was allowed to)."""
        ...

    def session_ended(self, session: ServerSession) -> None:
        """``session`` has released everything; forget it."""
        ...


@dataclasses.dataclass(frozen=True)
class SessionConfig:
    """How a server session behaves.

    Attributes:
        handshake_timeout: seconds the client has for each handshake message.
        shared_memory: offer shared memory to clients that can map it.
        spin: seconds to spin for a request before sleeping (0: never, as
            the endpoint decides from ``ServeOptions(spin=...)`` and
            ``RLMESH_SPIN``); no spin at all when the client runs in this
            process, nor while the machine is oversubscribed (:mod:`rlmesh._spin`).
        log: where the session reports (the endpoint's logger).
        auth_token: the shared secret a client must send in HELLO (None: none
            needed). Compared in constant time before anything is allocated.
        heartbeat: seconds between heartbeats while a request is served on an
            inline TCP session (None: no heartbeats); sent by :meth:`ServerSession.beat`,
            which the endpoint calls from a timer thread.
    """

    handshake_timeout: float
    shared_memory: bool
    spin: float
    log: logging.Logger
    auth_token: str | None = None
    heartbeat: float | None = None


class ServerSession:
    """One client connection, served on its own thread (:attr:`thread`).

    Args:
        host: the server that accepted the connection.
        stream: the connection; the session owns it from now on.
        config: see :class:`SessionConfig`.

    Lifetime: ``thread.start()`` runs the session; it ends when the client
    detaches or dies, the handler or a malformed request ends it, the host
    stops, or :meth:`close` is called. Then it closes the channel, the shared
    memory and the stream, releases the handler, and calls
    ``host.session_ended``; :attr:`state` is CLOSED from then on. A
    :meth:`close` from another thread wins over a session waiting for a
    request or a handshake message: it closes the stream, which wakes the
    wait at once. A session never started and never closed closes its
    stream when garbage collected, with a ``ResourceWarning`` (a running
    session is kept alive by its thread, which always cleans up).
    """

    def __init__(self, host: SessionHost, stream: SocketStream, config: SessionConfig) -> None:
        self.host = host
        self.stream = stream
        self.config = config
        self.log = config.log
        self.id = str(uuid.uuid4())
        self.handler: RequestHandler | None = None
        self.channel: Channel | None = None
        self.data: DataPlane | None = None
        self.channel_segment: Segment | None = None
        #: Whether this session's segments are sealed memfds passed as descriptors
        #: (a Unix socket, a client that takes them); decided in the handshake.
        self.memfd = False
        self._spin_base = config.spin
        self.spin = SpinPolicy(self._spin_base, enabled=True)  # the config decided
        self._life = Lifecycle(f"the server session {self.id[:8]}")
        self._life.watch(self, SocketStream.close, stream)
        # Whether run() began (close() then leaves the cleanup to it), decided under a lock
        # so that exactly one of run() and close() cleans up; `_done` is set once it has.
        self._run_lock = threading.Lock()
        self._ran = False
        self._done = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"rlmesh-session-{self.id[:8]}", daemon=True)
        #: True while a request is being served (the server drains these at shutdown).
        self.busy = False
        #: When the last request arrived (time.monotonic()); None before the first.
        self.last_request: float | None = None
        self._pending_unlink: list[int] = []
        # The descriptors of the offer's memfds, sent with the WELCOME (owned by their segments).
        self._offer_fds: list[int] = []
        # The data plane once requests are served over the rings (else None).
        self._ring_data: DataPlane | None = None
        self._rings: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
        #: Seconds between heartbeats while serving a request (None: none; set by the handshake).
        self.heartbeat: float | None = None
        self._last_beat = 0.0
        # With heartbeats, the timer thread and the session thread both send:
        # one frame at a time. Without them the session thread sends alone, unlocked.
        self._send_lock = threading.Lock()
        self._send: Any = None
        #: The compact step records' layout once the handshake agreed to them (else None).
        self.step_layout: StepLayout | None = None

    @property
    def data_plane(self) -> str | None:
        """How tensors travel ("shm" or "inline"); None before the handshake completed."""
        return None if self.channel is None else self.channel.data_plane

    # -- lifecycle ----------------------------------------------------------------

    @property
    def state(self) -> State:
        """OPEN while it may serve, CLOSING while it ends, CLOSED once cleaned up."""
        return self._life.state

    def close(self, timeout: float | None = 5.0) -> None:
        """End the session and wait up to ``timeout`` seconds for its thread to clean up. Idempotent.

        A session waiting for a request (or a handshake message) wakes at
        once; one serving a request ends when its handler returns (or fails
        on the closed stream). A session whose thread never started is
        cleaned up here. ``timeout`` 0 does not wait; None waits as long as
        it takes.
        """
        if self._life.begin_close():
            with self._run_lock:
                ran = self._ran
            if not ran:
                self._cleanup()
                return
            # Wakes recv and poll waits on the socket; a ring wait notices
            # through its liveness check (the closed stream), within 50 ms.
            self.stream.close()
        if self.thread is not threading.current_thread():
            self._done.wait(timeout)

    def run(self) -> None:
        """Handshake, then serve requests until the session ends; always cleans up.

        Raises:
            ClosedError: the session was closed before it ran.
        """
        with self._run_lock:
            self._life.check_open()
            self._ran = True
        try:
            if self._handshake():
                self._serve()
        except (BrokenError, ClosedError):
            pass  # the client went away, or the server is stopping
        except OperationTimeout:
            self.log.info("session %s: the client did not complete the handshake in time", self.id[:8])
        except ProtocolError as exc:
            self.log.warning("session %s: protocol error: %s", self.id[:8], exc)
        except Exception:
            self.log.exception("session %s failed", self.id[:8])
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        self._life.begin_close()  # False after close(): it began the close that ends here
        if self.channel is not None:
            self.channel.close()
        if self.data is not None:
            try:
                self.data.close()
            except Exception:
                self.log.exception("session %s: could not release its shared memory", self.id[:8])
        if self.channel_segment is not None:
            try:
                self.channel_segment.close()
            except Exception:
                self.log.exception("session %s: could not release its channel", self.id[:8])
        self._life.release()  # the stream
        try:
            self._release_handler()
            self.host.session_ended(self)
        finally:
            self._life.finish_close()
            self._done.set()

    def _release_handler(self) -> None:
        handler, self.handler = self.handler, None
        if handler is not None:
            handler.release()

    # -- handshake ----------------------------------------------------------------------

    def _send_error(
        self,
        code: str,
        message: str,
        exc: BaseException | None = None,
        *,
        detail: dict[str, Any] | None = None,
    ) -> None:
        error = P.Error.from_exception(0, code, exc, message, detail=detail)
        try:
            self.stream.send(pack(error.to_wire()), timeout=2.0)
        except RLMeshError:
            pass

    def _handshake(self) -> bool:
        timeout = self.config.handshake_timeout
        head, _, _ = self.stream.recv_frame(timeout, limit=P.MAX_HANDSHAKE_FRAME)
        opening = decode(head)  # undecodable bytes: hang up without an answer
        try:
            hello = P.Hello.from_wire(opening)
        except ProtocolError:
            self._send_error(P.E_PROTOCOL, "expected an rlmesh HELLO message")
            raise ProtocolError("the peer did not start with an rlmesh HELLO") from None
        if hello.magic != P.MAGIC:
            self._send_error(P.E_PROTOCOL, "not an rlmesh client")
            raise ProtocolError("the peer is not an rlmesh client")
        if not self._authenticate(hello.auth):
            return False
        if hello.protocol != P.PROTOCOL_VERSION:
            message = (
                f"protocol version mismatch: the client (rlmesh {hello.version}) speaks "
                f"protocol {hello.protocol!r}, this server (rlmesh {P.RELEASE}) speaks "
                f"protocol {P.PROTOCOL_VERSION}; run the same rlmesh release on both sides"
            )
            self.log.error("session %s: %s", self.id[:8], message)
            self._send_error(P.E_VERSION, message, detail={"protocol": P.PROTOCOL_VERSION})
            return False
        uid = self.stream.peer_uid
        if uid is not None and uid not in (os.geteuid(), 0):
            self._send_error(P.E_PROTOCOL, "only processes of the same user may connect")
            raise ProtocolError(f"rejected a client running as uid {uid}")
        # Over a Unix socket to a client that takes descriptors: sealed memfds, no
        # names (decided before the endpoint opens the session, which may create segments).
        self.memfd = bool(self.config.shared_memory and hello.shm and hello.fds) and self.stream.is_unix
        self.memfd = self.memfd and _memfd_supported()
        try:
            self.handler = self.host.open_session(self)
        except (BusyError, ClosedError) as exc:
            self._send_error(P.E_BUSY if isinstance(exc, BusyError) else P.E_STOPPING, str(exc), exc)
            return False
        except RLMeshError as exc:
            # The endpoint could not set the session up (a vector pool's workers failed to start, say).
            self.log.error("session %s: could not open: %s", self.id[:8], exc)
            self._send_error(P.E_INTERNAL, f"the server could not open a session: {exc}", exc)
            return False
        contract = self.handler.contract
        offer = None
        token = None
        if self.config.shared_memory and hello.shm:
            # A model endpoint's requests carry observations and its answers actions:
            # it sizes the session's rings and slots with the spaces swapped.
            sizing = getattr(self.handler, "sizing_contract", contract)
            offer, token = self._make_offer(sizing, memfd=self.memfd)
        if hello.pid == os.getpid():
            # Same process: the client is a thread that needs the GIL we would spin with.
            self._spin_base = 0.0
            self.spin.maximum = self.spin.budget = 0.0
        # A vector endpoint's fast path (rlmesh.vector): offered with shared memory only.
        vector_offer = getattr(self.handler, "vector_offer", None)
        vector = None
        if offer is not None and vector_offer is not None:
            vector = self._vector_offer(vector_offer)
        welcome = P.Welcome(
            protocol=P.PROTOCOL_VERSION,
            version=P.RELEASE,
            pid=os.getpid(),
            session=self.id,
            contract=contract.to_dict(),
            offer=None if offer is None else offer.to_wire(),
            vector=vector,
        )
        self.stream.send(pack(welcome.to_wire()), timeout=timeout, fds=self._offer_fds)
        self._offer_fds = []
        head, _, _ = self.stream.recv_frame(timeout, limit=P.MAX_HANDSHAKE_FRAME)
        attached = P.Attached.from_wire(decode(head))
        vector_attached = getattr(self.handler, "vector_attached", None)
        if vector_attached is not None:
            vector_attached()  # the client mapped what it could before ATTACHED
        if token is not None and attached.token == token:
            self._start_rings()
        else:
            if offer is not None:
                self.log.info(
                    "session %s: the client could not map our shared memory (%s); copying inline",
                    self.id[:8],
                    attached.reason or "no reason given",
                )
            self._drop_shm()
            self.channel = SocketChannel(self.stream)
            self.stream.spin = self.spin  # the same policy and rules as the rings'
        assert self.channel is not None
        self._send = self.channel.send
        inline_tcp = self.channel.data_plane == "inline" and not self.stream.is_unix
        if self.config.heartbeat is not None and inline_tcp:
            # Over TCP a host can go silent without a FIN (stopped, frozen, cut off):
            # the client tells that from a slow step by these heartbeats.
            self.heartbeat = self.config.heartbeat
            self._send = self._locked_send
        # The fixed-shape step codec: the client offered it, the rings carry the steps, the
        # contract's spaces fit it and the endpoint can serve it (step_codec.py).
        if (
            hello.step_codec
            and step_codec_enabled()
            and self.channel.data_plane == "shm"
            and _compact_handler(self.handler) is not None
        ):
            self.step_layout = step_layout(contract)
        ready = P.Ready(self.channel.data_plane, self.heartbeat, self.step_layout is not None)
        self.stream.send(pack(ready.to_wire()), timeout=timeout)
        return True

    def _locked_send(
        self, head: bytes, tail: TailBuilder | None = None, *, timeout: float | None = None
    ) -> None:
        assert self.channel is not None
        with self._send_lock:
            self.channel.send(head, tail, timeout=timeout)

    def beat(self, now: float) -> None:
        """Send a heartbeat if a request has been served for a heartbeat interval with nothing sent.

        Called every so often by the endpoint's timer thread (never blocks:
        a response going out at the same moment is heartbeat enough). A
        heartbeat that lands after the response is skipped by the client.
        """
        interval = self.heartbeat
        if interval is None or not self.busy:
            return
        if now - max(self.last_request or 0.0, self._last_beat) < interval:
            return
        if not self._send_lock.acquire(blocking=False):
            return
        try:
            channel = self.channel
            if self.busy and channel is not None and self._life.state is State.OPEN:
                self._last_beat = now
                channel.send(_HEARTBEAT, timeout=0)
        except RLMeshError:
            pass  # the client is gone or not reading: the session finds out on its own
        finally:
            self._send_lock.release()

    def _authenticate(self, token: str | None) -> bool:
        """Check the client's auth token (constant time); answer and refuse a missing or wrong one.

        Runs before the session allocates anything: no env, no segment, no worker.
        """
        expected = self.config.auth_token
        if expected is None:
            return True
        if token is not None and hmac.compare_digest(_digest(token), _digest(expected)):
            return True
        if token is None:
            why = "this server requires an auth token and the client sent none"
        else:
            why = "the server refused the client's auth token"
        self.log.warning("session %s: %s (peer %s)", self.id[:8], why, self.stream.peer_name)
        self._send_error(
            P.E_AUTH, f"authentication failed: {why}; pass auth_token= or set RLMESH_AUTH_TOKEN on the client"
        )
        return False

    def _vector_offer(self, vector_offer: Any) -> Any:
        """The handler's vector offer; a memfd segment named by its descriptor's index in the WELCOME."""
        offer = vector_offer()
        fileno = getattr(self.handler, "vector_fileno", None)
        if offer is None or not self._offer_fds or fileno is None:
            return offer
        fd = fileno()
        if fd is None:
            return offer  # a named segment: the client opens it by name
        self._offer_fds.append(fd)
        return {**offer, "segment": len(self._offer_fds) - 1}

    def _make_offer(self, contract: EnvContract, *, memfd: bool = False) -> tuple[P.Offer | None, str | None]:
        """Create the session's shared memory and the offer naming it (memfd: by descriptor index).

        With ``memfd``, the descriptors to send with the WELCOME are left in
        ``_offer_fds`` (the segments keep owning them).
        """
        try:
            self.data = DataPlane(contract, memfd=memfd)
            req_cap = pow2(max(64 << 10, 4 * action_bytes_bound(contract)))
            # Room for 4 responses whose small tensors travel inline (SHM_INLINE_LIMIT), up to
            # _MAX_RESPONSE_RING: a contract of very many small leaves spills its larger responses.
            inline = min(4 * response_bytes_bound(contract), _MAX_RESPONSE_RING)
            resp_cap = pow2(max(256 << 10, 4 * 1024 * contract.num_envs, inline))
            size, req_off, resp_off = channel_layout(req_cap, resp_cap)
            if memfd:
                self.channel_segment = Segment.create_memfd(size, SegmentKind.CHANNEL)
            else:
                self.channel_segment = Segment.create(size, SegmentKind.CHANNEL)
            token = write_token(self.channel_segment)
        except RLMeshError as exc:
            self.log.warning(
                "session %s: no shared memory for this session (%s); copying inline", self.id[:8], exc
            )
            self._drop_shm()
            return None, None
        self._rings = ((req_off, req_cap), (resp_off, resp_cap))
        segments = self.data.slab.take_new_segments()
        if not memfd:
            rings = P.ChannelOffer(self.channel_segment.name, size, req_off, req_cap, resp_off, resp_cap)
            return P.Offer(rings, list(segments)), token
        slab = self.data.slab.segments
        self._offer_fds = [self.channel_segment.fileno()] + [slab[i].fileno() for i, _, _ in segments]
        rings = P.ChannelOffer(0, size, req_off, req_cap, resp_off, resp_cap)
        return P.Offer(rings, [(i, n + 1, sz) for n, (i, _, sz) in enumerate(segments)]), token

    def _start_rings(self) -> None:
        assert self.channel_segment is not None and self.data is not None
        req, resp = self._rings
        self.channel = RingChannel(self.stream, self.channel_segment, tx=resp, rx=req, spin=self.spin)
        # Both sides have mapped everything: the names can go. The memory lives
        # on until both unmap, and nothing is left in /dev/shm even after a SIGKILL.
        self.channel_segment.unlink()
        for segment in self.data.slab.segments.values():
            segment.unlink()

    def _drop_shm(self) -> None:
        if self.data is not None:
            self.data.close()
            self.data = None
        if self.channel_segment is not None:
            self.channel_segment.close()
            self.channel_segment = None

    # -- serving ----------------------------------------------------------------------------

    def _check_stop(self) -> None:
        if self.host.stopping.is_set():
            raise ClosedError("the server is stopping")

    def _serve(self) -> None:
        handler, channel, host = self.handler, self.channel, self.host
        assert handler is not None and channel is not None
        ring_mode = channel.data_plane == "shm"
        self._ring_data = self.data if ring_mode else None
        stopping = host.stopping
        recv, check, on_step = channel.recv, self._check_stop, handler.on_step
        layout = self.step_layout
        if layout is not None:
            compact_handler = _compact_handler(handler)
            assert isinstance(channel, RingChannel) and compact_handler is not None
            recv_step, on_step_compact = channel.recv_step, compact_handler.on_step_compact
            action_nbytes, action_discrete = layout.action_nbytes, layout.action_discrete
        while True:
            self.busy = False
            if stopping.is_set():
                return
            # Never more spinners than cores: spin only while this is the only session.
            self.spin.maximum = self._spin_base if host.active_sessions() == 1 else 0.0
            if self.spin.budget > self.spin.maximum:
                self.spin.budget = self.spin.maximum
            if layout is not None:
                # A compact STEP, or None: the next message is msgpack (recv below takes it at once).
                compact = recv_step(action_nbytes, action_discrete, None, check)
                if compact is not None:
                    self.busy = True
                    self.last_request = time.monotonic()
                    if self._pending_unlink:
                        self._apply_releases(P.NO_RELEASES)
                    if not on_step_compact(compact[0], compact[1]):
                        return
                    continue
            message = recv(None, check)
            self.busy = True
            self.last_request = time.monotonic()
            try:
                request = decode(
                    message.head, tail=message.tail, tail_address=message.tail_address, copy_inline=ring_mode
                )
            finally:
                message.done()
            if type(request) is not list or len(request) < 2 or type(request[1]) is not int:
                self.reply(P.Error.from_exception(0, P.E_PROTOCOL, None, "malformed request").to_wire())
                return
            try:
                if request[0] == P.STEP:
                    # The per-step path reads the checked array in place (see P.Step).
                    P.Step.check(request)
                    self._apply_releases(request[3])
                    if not on_step(request[1], request[2]):
                        return
                elif not self._dispatch(P.parse_request(request)):
                    return
            except (ProtocolError, InvalidHandle) as exc:
                self.reply(P.Error.from_exception(request[1], P.E_PROTOCOL, exc, str(exc)).to_wire())
                return

    def _dispatch(self, request: P.Request) -> bool:
        """Serve one request other than STEP; False ends the session."""
        handler = self.handler
        assert handler is not None
        if isinstance(request, P.Reset):
            self._apply_releases(request.releases)
            return handler.on_reset(request.rid, request.seed, request.options)
        if isinstance(request, P.Render):
            self._apply_releases(request.releases)
            return handler.on_render(request.rid, request.env_index)
        if isinstance(request, P.Close):
            # Release before answering: a client that connects right after this
            # one closed must find a single shared env object free.
            self._release_handler()
            self.reply(P.Ok(request.rid, []).to_wire())
            return False
        if isinstance(request, P.Shutdown):
            accepted = self.host.shutdown_allowed()
            self.reply(P.Ok(request.rid, [accepted]).to_wire())
            if accepted:
                self.log.info("shutdown requested by a client: %s", request.reason)
                self.host.request_stop()
                return False
            return True
        if isinstance(request, P.Ping):
            self.reply(P.Ok(request.rid, []).to_wire())
            return True
        if isinstance(request, P.Predict):
            self._apply_releases(request.releases)
            on_predict = getattr(handler, "on_predict", None)
            if on_predict is None:
                message = "this endpoint serves an env, not a model: drive it with RemoteEnv, not RemoteModel"
                self.reply_error(request.rid, P.E_INVALID_ARGUMENT, None, message)
                return True
            result: bool = on_predict(request)
            return result
        raise ProtocolError(f"unexpected request {request!r}")  # Step comes by the per-step path

    def _apply_releases(self, releases: list[int]) -> None:
        pending = self._pending_unlink
        if pending:
            # The client read SEGMENTS before sending this request: it has mapped them.
            assert self.data is not None
            segments = self.data.slab.segments
            for seg_id in pending:
                if seg_id in segments:
                    segments[seg_id].unlink()
            pending.clear()
        if releases:
            if self.data is None:
                raise ProtocolError("malformed release list")
            self.data.release(releases)

    # -- answering (for handlers) -------------------------------------------------------------

    def reply(self, message: list[Any], tail: TailBuilder | None = None) -> None:
        """Send one message to the client.

        Raises:
            BrokenError: the client is gone. FramingError: too large a message.
            ClosedError: the session is closed (or has no channel yet).
        """
        if self._send is None:
            raise ClosedError("the session has no channel (closed before its handshake)")
        self._send(pack(message), tail)

    def begin_response(self) -> TailBuilder | None:
        """Start building a response: a tail for its tensors inline, or None over shared memory.

        Over shared memory, tensors go into blocks of :attr:`data` (its
        ``acquire``); the blocks of the last response went out with it.
        """
        data = self._ring_data
        if data is not None:
            data.unsent.clear()
            return None
        return TailBuilder()

    def reply_ok(self, rid: int, values: list[Any], tail: TailBuilder | None) -> None:
        """Answer ``rid`` with OK and ``values`` (announcing new slab segments first).

        Raises:
            TypeError: a value msgpack cannot encode (nothing was sent).
            BrokenError: the client is gone.
            ClosedError: the session is closed (or has no channel yet).
        """
        send = self._send
        if send is None:
            raise ClosedError("the session has no channel (closed before its handshake)")
        data = self.data
        if data is not None and data.slab.has_new_segments:
            new = data.slab.take_new_segments()
            if data.slab.memfd:
                # The memfds ride with the announcement, as a frame on the socket.
                slab = data.slab.segments
                announce: list[tuple[int, str | int, int]] = [(i, n, sz) for n, (i, _, sz) in enumerate(new)]
                fds = [slab[i].fileno() for i, _, _ in new]
                channel = self.channel
                assert channel is not None
                channel.send_fds(pack(P.Segments(announce).to_wire()), fds)
            else:
                send(pack(P.Segments(list(new)).to_wire()))
            self._pending_unlink.extend(seg_id for seg_id, _, _ in new)
        send(pack(P.Ok.encode(rid, values), tail), tail)

    def reply_step(self, rid: int, reward: float, terminated: bool, truncated: bool, obs: Any) -> bool:
        """Answer a step with a compact OK (:attr:`step_layout` is set); False: send :meth:`reply_ok`.

        False, with nothing sent, when a slab segment must be announced
        first, or the values do not fit the record (a reward that is no
        float, an observation of another size): the msgpack OK carries them.

        Raises:
            BrokenError: the client is gone. ClosedError: the session is closed.
        """
        data, layout, channel = self.data, self.step_layout, self.channel
        assert layout is not None and isinstance(channel, RingChannel)
        if data is not None and data.slab.has_new_segments:
            return False
        try:
            channel.send_ok(rid, reward, terminated, truncated, obs, layout.obs_nbytes)
        except (ValueError, OverflowError, TypeError):
            return False
        return True

    def reply_error(self, rid: int, code: str, exc: BaseException | None, message: str) -> None:
        """Answer ``rid`` with an ERROR of ``code`` (one of ``protocol.E_*``)."""
        self.reply(P.Error.from_exception(rid, code, exc, message).to_wire())

    def fail(self, rid: int, exc: BaseException) -> None:
        """Answer ``rid`` whose response could not be built, and free the blocks it had taken.

        Call it from the ``except`` block that caught ``exc``: the ERROR carries
        the traceback being handled.
        """
        if self.data is not None:
            self.data.take_back_unsent()
        # Shared memory running out is the server's trouble, not the env's.
        code = P.E_INTERNAL if isinstance(exc, ShmError) else P.E_ENV
        error = P.Error.from_exception(rid, code, exc, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        self.reply(error.to_wire())
