"""The client's side of a session: dial, handshake, channel, requests.

:class:`ClientSession` connects to a server, runs the handshake, maps the
session's shared memory when the server offers it (else falls back to inline
frames), and then carries one request at a time to the server and its
response back, as the typed messages of :mod:`rlmesh.wire.protocol`.
Endpoints (the env clients, later the model and vector clients) build on its
methods and never touch its channel or stream.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from .._lifecycle import Lifecycle, State
from .._spin import spin_enabled
from ..errors import (
    BrokenError,
    BusyError,
    ClosedError,
    ConnectError,
    OperationTimeout,
    ProtocolError,
    RLMeshError,
    ShmError,
    VersionMismatch,
)
from ..net.address import Address
from ..net.stream import MAX_FDS, SocketStream, close_fds, connect
from ..shm import PeerMemory, Segment, SpinPolicy
from ..specs import EnvContract
from . import protocol as P
from .channel import FRAME_DEADLINE, Channel, Message, RingChannel, SocketChannel, read_token
from .codec import TailBuilder, decode, pack
from .step_codec import StepLayout, step_codec_enabled, step_layout

log = logging.getLogger("rlmesh.client")

__all__ = ["CLIENT_SPIN", "CONNECT_ATTEMPT_TIMEOUT", "ClientSession"]

#: The per-step state check compares against this (one global, no enum attribute lookup).
_OPEN = State.OPEN

#: Deadline of one connection attempt (connect plus handshake).
CONNECT_ATTEMPT_TIMEOUT = 10.0
#: The client spins this long for a response before sleeping.
CLIENT_SPIN = 500e-6
#: With server heartbeats (inline TCP), this much silence while a request is
#: in flight (no response, no heartbeat) means the server's host is gone:
#: stopped, frozen or cut off. At least 4 heartbeat intervals.
SILENCE_LIMIT = 2.0
#: How long close() waits for a call it woke in another thread to leave,
#: before releasing the memory that call reads (it leaves at once when woken).
CLOSE_WAKE_WAIT = 1.0


def _close_connection(
    stream: SocketStream, peer: PeerMemory | None, segment: Segment | None, vector: list[Any]
) -> None:
    # The finalizer: raw resources only, never the client object.
    stream.close()
    if peer is not None:
        peer.close()
    if segment is not None:
        segment.close_when_unpinned()
    if vector:
        vector[1].close_when_unpinned()
        vector.clear()


def _take_fd(fds: list[int], index: int) -> int:
    """Hand out descriptor ``fds[index]`` once (its slot becomes -1).

    Raises:
        ProtocolError: no such descriptor came, or it was handed out already.
    """
    if not 0 <= index < len(fds) or fds[index] < 0:
        raise ProtocolError(
            f"the server named descriptor {index}, which its message did not carry (or it came with "
            "more descriptors than a frame may carry, or this process is out of descriptors)"
        )
    fd, fds[index] = fds[index], -1
    return fd


class ClientSession:
    """One session with a server: the handshake, the channel, and requests.

    Args:
        address: the server's address.
        connect_timeout: keep retrying the connection until this deadline
            (None: one attempt).
        request_timeout: the deadline endpoints use when a call names none
            (kept here for them; the request methods take theirs explicitly).
        shared_memory: ask for the shared-memory data plane.
        max_message_bytes: the largest frame sent or accepted.
        spin: whether to spin briefly for a response before sleeping; None
            follows ``RLMESH_SPIN`` (on unless it is 0). Spinning also stops by
            itself while the machine has more runnable tasks than cores
            (:mod:`rlmesh._spin`).
        auth_token: the server's shared secret, sent in HELLO (None: none).
        stream: a connection already made, to handshake on instead of
            dialing ``address`` (a sandboxed server dials back to its host,
            :mod:`rlmesh.sandbox`); the session owns it, also if the
            handshake fails.

    Raises:
        ConnectError: the server cannot be reached, or the handshake failed.
        VersionMismatch: the server speaks another protocol version.
        AuthenticationError: the server refused this client's auth token (or its lack of one).
        BusyError, BrokenError: the server turned the session away (an ERROR
            answering HELLO).

    Lifetime: connects and handshakes in the constructor (and releases
    everything if that fails). :meth:`close` detaches and releases the
    socket and shared memory; it is idempotent. A close from another thread
    wins over a request in flight: it does not wait for the request's
    deadline but closes the channel and shuts the socket's read side, so the
    request raises ClosedError at once; then it releases everything. Every
    request after close raises ClosedError. A session that is never closed
    is released by a finalizer when garbage-collected, with a
    ``ResourceWarning``. Observations the caller holds stay valid after
    close: their segments are unmapped once the last view dies.

    One request at a time: a second thread calling while one waits gets
    BusyError. A step may also be split (:meth:`begin_step`, then
    :meth:`poll` and :meth:`finish_step`): the request is in flight between
    the calls, and no other request may start until it is collected.

    Liveness: a dead server is an EOF or a reset (BrokenError at once); on a
    TCP session without shared memory the server also sends heartbeats while
    it serves a request, and :data:`SILENCE_LIMIT` seconds without any byte
    from it is a BrokenError too (a stopped or cut-off host), while a slow
    step of a live server waits for the request's deadline.
    """

    def __init__(
        self,
        address: Address,
        *,
        connect_timeout: float | None,
        request_timeout: float | None,
        shared_memory: bool,
        max_message_bytes: int,
        spin: bool | None = None,
        stream: SocketStream | None = None,
        auth_token: str | None = None,
    ) -> None:
        self.address = address
        self._auth_token = auth_token
        #: Seconds of silence that break the session while a request waits (None: no heartbeats).
        self.silence_limit: float | None = None
        # The split request in flight: [rid, what, response or exception or None].
        self._pending: list[Any] | None = None
        self._spin_enabled = spin_enabled(spin)
        self.request_timeout = request_timeout
        self.peer: PeerMemory | None = None
        self.segment: Segment | None = None
        self.channel: Channel
        self._offer: P.Offer | None = None
        self._rid = 0
        self._lock = threading.Lock()
        self._life = Lifecycle(f"the session with {address}")
        self._broken: BaseException | None = None
        # [offer, segment] of the vector fast path until an endpoint takes it (take_vector).
        self._vector: list[Any] = []
        #: The compact step records' layout when the server agreed to them (else None).
        self.step_layout: StepLayout | None = None
        # The channel again, typed as the rings that carry compact records, when they do.
        self._rings: RingChannel | None = None
        # A stream handed in is a connection the server made to us (a
        # sandbox dials back): it is this session's from now on.
        self.stream = stream if stream is not None else self._dial(connect_timeout, max_message_bytes)
        try:
            self._handshake(shared_memory)
        except BaseException:
            _close_connection(self.stream, self.peer, self.segment, self._vector)
            raise
        self._life.watch(self, _close_connection, self.stream, self.peer, self.segment, self._vector)

    # -- connecting -----------------------------------------------------------------

    def _dial(self, connect_timeout: float | None, max_frame: int) -> SocketStream:
        deadline = None if connect_timeout is None else time.monotonic() + connect_timeout
        delay = 0.02
        while True:
            attempt = CONNECT_ATTEMPT_TIMEOUT
            if deadline is not None:
                attempt = max(min(attempt, deadline - time.monotonic()), 0.05)
            try:
                return connect(self.address, timeout=attempt, max_frame=max_frame)
            except ConnectError as exc:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is None or remaining <= 0:
                    raise ConnectError(
                        f"could not connect to an env at '{self.address}'; is the EnvServer running? ({exc})"
                    ) from exc
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.25)

    def _handshake(self, shared_memory: bool) -> None:
        stream = self.stream
        # One deadline for the whole exchange, not one per message: a server
        # that accepts and then stalls costs at most this, not four times it.
        deadline = time.monotonic() + CONNECT_ATTEMPT_TIMEOUT
        # Over a Unix socket the server's segments come as sealed memfds with its WELCOME.
        with_fds = bool(shared_memory) and stream.is_unix
        stream.accept_fds = MAX_FDS if with_fds else 0
        fds: list[int] = []
        try:
            self._handshake_with(stream, shared_memory, with_fds, deadline, fds)
        finally:
            # Every descriptor the server sent is closed once: mapped ones were
            # consumed (-1), unused or extra ones go here.
            close_fds([fd for fd in fds if fd >= 0])

    def _handshake_with(
        self, stream: SocketStream, shared_memory: bool, with_fds: bool, deadline: float, fds: list[int]
    ) -> None:
        hello = P.Hello(
            magic=P.MAGIC,
            protocol=P.PROTOCOL_VERSION,
            version=P.RELEASE,
            pid=os.getpid(),
            shm=bool(shared_memory),
            max_frame=stream.max_frame,
            auth=self._auth_token,
            fds=with_fds,
            step_codec=step_codec_enabled(),
        )
        answer = self._exchange(hello.to_wire(), deadline)
        fds.extend(stream.take_fds())
        if type(answer) is list and answer and answer[0] == P.ERROR:
            raise P.Error.from_wire(answer).to_exception("the handshake")
        try:
            welcome = P.Welcome.from_wire(answer)
        except ProtocolError:
            raise ConnectError(
                f"connected to '{self.address}', but it did not answer like an rlmesh server"
            ) from None
        if welcome.protocol != P.PROTOCOL_VERSION:
            raise VersionMismatch(
                f"protocol version mismatch: this client (rlmesh {P.RELEASE}) speaks protocol "
                f"{P.PROTOCOL_VERSION}, the server (rlmesh {welcome.version}) speaks "
                f"{welcome.protocol!r}; run the same rlmesh release on both sides",
                local=P.PROTOCOL_VERSION,
                remote=welcome.protocol,
            )
        if not isinstance(welcome.contract, dict):
            raise ConnectError(f"the server at '{self.address}' sent no env contract")
        self.contract = EnvContract.from_dict(welcome.contract)
        self.session = welcome.session
        token, reason = None, None
        if welcome.offer is not None:
            token, reason = self._attach(welcome.offer, fds)
            if token is not None and welcome.vector is not None:
                # Mapped before ATTACHED: the server unlinks the name once it has the answer.
                self._attach_vector(welcome.vector, fds)
        elif shared_memory:
            reason = "the server offered no shared memory"
        answer = self._exchange(P.Attached(token, reason).to_wire(), deadline)
        try:
            ready = P.Ready.from_wire(answer)
        except ProtocolError:
            raise ConnectError("the server did not confirm the session") from None
        # A server thread in this very process needs the GIL a spin would hold.
        spin = CLIENT_SPIN if welcome.pid != os.getpid() and self._spin_enabled else 0.0
        if ready.data_plane == "shm" and token is not None:
            assert self.segment is not None and self._offer is not None
            rings = self._offer.channel
            self.channel = RingChannel(
                stream,
                self.segment,
                tx=(rings.request_offset, rings.request_capacity),
                rx=(rings.response_offset, rings.response_capacity),
                spin=SpinPolicy(spin, enabled=True),
            )
            if ready.step_codec and step_codec_enabled():
                self.step_layout = step_layout(self.contract)
                self.channel.skip_compact = self.step_layout is not None
                if self.step_layout is not None:
                    self._rings = self.channel
        else:
            self._drop_shm()
            stream.accept_fds = 0  # inline: no segment will come
            stream.spin = SpinPolicy(spin, enabled=True)
            self.channel = SocketChannel(stream)
            if ready.heartbeat is not None:
                self.silence_limit = max(SILENCE_LIMIT, 4 * ready.heartbeat)

    def _exchange(self, message: list[Any], deadline: float) -> Any:
        """Send one handshake message and return the decoded answer, by ``deadline``.

        Raises:
            ConnectError: the server went away, stalled or answered garbage.
        """
        try:
            self.stream.send(pack(message), timeout=max(deadline - time.monotonic(), 0.0))
            head, _, _ = self.stream.recv_frame(max(deadline - time.monotonic(), 0.0))
            return decode(head)
        except (BrokenError, OperationTimeout, ProtocolError) as exc:
            raise ConnectError(
                f"connected to an env at '{self.address}', but the handshake failed ({exc})"
            ) from exc

    def _attach(self, wire_offer: Any, fds: list[int]) -> tuple[str | None, str | None]:
        """Map the offered memory; ``(token, None)``, or ``(None, why not)`` to go inline.

        Named segments are opened by name; an int names a descriptor in
        ``fds`` (sealed memfds that came with the WELCOME), which is consumed.
        """
        try:
            offer = P.Offer.from_wire(wire_offer)
            channel = offer.channel
            if isinstance(channel.name, int):
                self.segment = Segment.attach_memfd(_take_fd(fds, channel.name), channel.size)
            else:
                self.segment = Segment.attach(channel.name, channel.size)
            self.peer = PeerMemory()
            for seg_id, seg_ref, seg_size in offer.segments:
                if isinstance(seg_ref, int):
                    self.peer.add_memfd(seg_id, _take_fd(fds, seg_ref), seg_size)
                else:
                    self.peer.add_segment(seg_id, seg_ref, seg_size)
            self._offer = offer
            return read_token(self.segment), None
        except (ShmError, ProtocolError, ValueError) as exc:
            self._drop_shm()
            return None, str(exc)

    def _attach_vector(self, offer: Any, fds: list[int]) -> None:
        name, size = (offer.get("segment"), offer.get("size")) if isinstance(offer, dict) else (None, None)
        if not isinstance(name, (str, int)) or isinstance(name, bool) or type(size) is not int:
            # Malformed: the session serves this client without the fast path.
            log.warning(
                "%s: the vector fast path's offer is malformed; stepping through the session", self.address
            )
            return
        try:
            if isinstance(name, int):
                segment = Segment.attach_memfd(_take_fd(fds, name), size)
            else:
                segment = Segment.attach(name, size)
            self._vector[:] = [offer, segment]
        except (ShmError, ProtocolError) as exc:
            # Still correct (the server relays steps), only slower: say why once.
            log.warning(
                "%s: cannot map the vector fast path's segment (%s); stepping through the session",
                self.address,
                exc,
            )

    def take_vector(self) -> tuple[Any, Segment] | None:
        """The vector fast path's offer and its mapped segment, handed over once (None without one).

        The caller owns the segment from then on.
        """
        if not self._vector:
            return None
        offer, segment = self._vector
        self._vector.clear()
        return offer, segment

    def _drop_shm(self) -> None:
        if self.peer is not None:
            self.peer.close()
            self.peer = None
        if self.segment is not None:
            self.segment.close_when_unpinned()
            self.segment = None

    @property
    def data_plane(self) -> str:
        """How tensors travel: "shm" (through the rings and slabs) or "inline" (in frames)."""
        return self.channel.data_plane

    @property
    def state(self) -> State:
        """OPEN, CLOSING or CLOSED (see :mod:`rlmesh._lifecycle`); a broken session stays OPEN."""
        return self._life.state

    @property
    def closed(self) -> bool:
        """True once :meth:`close` began."""
        return self._life.closed

    # -- requests ---------------------------------------------------------------------

    def reset(self, seed: Any, options: Any, timeout: float | None) -> P.ResetOk:
        """Send RESET and return its answer.

        Raises:
            ClosedError, BusyError, OperationTimeout, BrokenError, ProtocolError,
            and the errors an ERROR response maps to (RemoteError, ValueError...).
        """
        rid = self._enter()
        try:
            request = P.Reset(rid, seed, options, self._releases()).to_wire()
            response = self._roundtrip(request, None, timeout, rid, "reset")
        finally:
            self._lock.release()
        return P.ResetOk.from_wire(response)

    def step(self, action: Any, tail: TailBuilder, timeout: float | None) -> list[Any]:
        """Send STEP and return its OK, checked: ``[OK, rid, obs, reward, terminated, truncated, info]``.

        The per-step path: no message objects are built (see :class:`~rlmesh.wire.protocol.Step`).

        Raises:
            As :meth:`reset`; InvalidActionError when the server rejects the action.
        """
        rid = self._enter()
        try:
            response = self._roundtrip(
                P.Step.encode(rid, action, self._releases()), tail, timeout, rid, "step"
            )
        finally:
            self._lock.release()
        return P.StepOk.check(response)

    def step_compact(self, action: Any, timeout: float | None) -> tuple[Any, ...] | list[Any]:
        """Send STEP as a compact record (:attr:`step_layout` is set) and return its answer.

        ``action``: an int (a Discrete) or a Tensor of the contract's exact
        shape and dtype. The answer is the compact OK ``(rid, reward,
        terminated, truncated, obs)`` (``obs`` an int or a bytearray), or
        the msgpack OK as :meth:`step` returns it when the server answered
        with one (a step with an info, say). With lease releases pending the
        request goes as msgpack, carrying them.

        Raises:
            As :meth:`step`.
        """
        rid = self._enter()
        try:
            peer = self.peer
            if peer is not None and peer._pending:
                request = P.Step.encode(rid, action, self._releases())
                return P.StepOk.check(self._roundtrip(request, TailBuilder(), timeout, rid, "step"))
            response = self._roundtrip(None, action, timeout, rid, "step")
        finally:
            self._lock.release()
        return response if type(response) is tuple else P.StepOk.check(response)

    def render(self, env_index: int, timeout: float | None) -> P.RenderOk:
        """Send RENDER and return its answer.

        Raises:
            As :meth:`reset`.
        """
        rid = self._enter()
        try:
            request = P.Render(rid, env_index, self._releases()).to_wire()
            response = self._roundtrip(request, None, timeout, rid, "render")
        finally:
            self._lock.release()
        return P.RenderOk.from_wire(response)

    def predict(
        self,
        observation: Any,
        tail: TailBuilder,
        lanes: int,
        reset: bool,
        context: Any,
        timeout: float | None,
    ) -> P.PredictOk:
        """Send PREDICT to a model endpoint and return its answer (see :class:`P.Predict`).

        Raises:
            As :meth:`reset`; SpecError when the observation does not fit the
            model's space, RemoteError when the model raised.
        """
        rid = self._enter()
        try:
            request = P.Predict(rid, observation, lanes, reset, context, self._releases()).to_wire()
            response = self._roundtrip(request, tail, timeout, rid, "predict")
        finally:
            self._lock.release()
        return P.PredictOk.from_wire(response)

    def shutdown(self, reason: str, timeout: float | None) -> P.ShutdownOk:
        """Send SHUTDOWN and return whether the server agreed.

        Raises:
            As :meth:`reset`.
        """
        rid = self._enter()
        try:
            response = self._roundtrip(P.Shutdown(rid, reason).to_wire(), None, timeout, rid, "shutdown")
        finally:
            self._lock.release()
        return P.ShutdownOk.from_wire(response)

    def _enter(self) -> int:
        """Take the session for one request and return its id; the caller releases ``_lock``."""
        if not self._lock.acquire(blocking=False):
            self._life.check_open()  # closing: say so rather than busy
            raise BusyError("this client is already in use by another thread; use one client per thread")
        try:
            if self._life.state is not _OPEN:
                raise ClosedError("the client is closed")
            if self._broken is not None:
                raise BrokenError(
                    f"the connection to {self.address} is broken: {self._broken}"
                ) from self._broken
            if self._pending is not None:
                raise ValueError("a step is already in flight: call step_wait() first")
        except BaseException:
            self._lock.release()
            raise
        self._rid += 1
        return self._rid

    def _releases(self) -> list[int]:
        """The leases that ended since the last request, as a flat list of handle fields."""
        peer = self.peer
        if peer is not None:
            releases = peer.take_releases()
            if releases:
                return [field for handle in releases for field in handle]
        return P.NO_RELEASES

    def _roundtrip(
        self, request: list[Any] | None, tail: Any, timeout: float | None, rid: int, what: str
    ) -> Any:
        """Send a request and return the OK answering it (the caller holds ``_lock``).

        ``request`` None: a compact STEP (:meth:`step_compact`) whose action is
        ``tail``; its answer may be a compact OK (a tuple) or a msgpack one.

        Raises:
            OperationTimeout, BrokenError (the session is then broken), and the
            errors an ERROR response maps to. ClosedError: :meth:`close` ran
            in another thread while this request waited.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        channel = self.channel
        layout = self.step_layout if request is None else None
        rings = self._rings
        try:
            if layout is not None:
                assert rings is not None  # set with the layout
                rings.send_step(rid, tail, layout.action_nbytes, timeout)
            else:
                channel.send(pack(request, tail), tail, timeout=timeout)
            while True:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise OperationTimeout(
                        f"remote environment call timed out after {timeout:.3g}s", timeout=timeout
                    )
                if layout is not None:
                    assert rings is not None
                    # A compact OK, or None: the next message is msgpack (read below, at once).
                    compact = rings.recv_ok(layout.obs_nbytes, layout.obs_discrete, remaining)
                    if compact is not None:
                        if compact[0] != rid:
                            continue  # the late answer to a request that timed out
                        return compact
                if self.silence_limit is None:
                    response = self._decode(channel.recv(remaining))
                else:
                    response = self._decode(self._receive(remaining))
                kind = response[0]
                if kind == P.SEGMENTS:
                    self._add_segments(response)
                    continue
                if len(response) < 2 or response[1] != rid:
                    continue  # the late answer to a request that timed out, or a heartbeat
                if kind == P.ERROR:
                    raise P.Error.from_wire(response).to_exception(what)
                if kind != P.OK:
                    raise ProtocolError(f"unexpected response kind {kind!r}")
                return response
        except OperationTimeout as exc:
            if "timed out after" not in str(exc):
                raise OperationTimeout(
                    f"remote environment call timed out after {timeout:.3g}s", timeout=timeout
                ) from exc
            raise
        except (BrokenError, ProtocolError) as exc:
            if self._life.state is not _OPEN:
                # Our own close() (another thread) ended the wait, not the server.
                raise ClosedError("the client was closed while a request waited") from None
            self._broken = exc
            raise BrokenError(f"lost the connection to the env at {self.address}: {exc}") from exc

    def _receive(self, remaining: float | None) -> Message:
        """The next message within ``remaining`` seconds, for a socket channel.

        A frame that has begun gets the rest of the request's time, and at
        least :data:`FRAME_DEADLINE` (a poll with a short timeout must not cut
        a frame in half). With heartbeats, :attr:`silence_limit` seconds
        without a byte from the server is a BrokenError.

        Raises:
            OperationTimeout: nothing before the deadline. BrokenError: the
            server is gone or silent. ClosedError, ProtocolError.
        """
        silence = self.silence_limit
        wait = remaining
        if silence is not None and (wait is None or wait > silence):
            wait = silence
        if not self.stream.wait_readable(wait):
            if wait == remaining:
                raise OperationTimeout("no response yet", timeout=remaining)
            raise BrokenError(
                f"the server at {self.address} went silent: no response and no heartbeat for "
                f"{silence:.3g}s while a request was in flight (its host is stopped, frozen or unreachable)"
            )
        rest = None if remaining is None else max(remaining, FRAME_DEADLINE)
        return self.channel.recv(rest)

    # -- split requests ------------------------------------------------------------------

    def begin_step(self, action: Any, tail: TailBuilder) -> None:
        """Send STEP and return at once; :meth:`finish_step` collects the answer.

        Until then the request is in flight: any other request raises
        ValueError (one request in flight per session).

        Raises:
            ValueError: a step is already in flight. ClosedError, BusyError,
            OperationTimeout (no room to send), BrokenError.
        """
        rid = self._enter()
        try:
            request = P.Step.encode(rid, action, self._releases())
            try:
                self.channel.send(pack(request, tail), tail, timeout=self.request_timeout)
            except (BrokenError, ProtocolError) as exc:
                raise self._lost(exc) from exc
            self._pending = [rid, "step", None]
        finally:
            self._lock.release()

    def _take(self) -> list[Any]:
        """Take ``_lock`` for a split call and return the request in flight (the caller releases)."""
        if not self._lock.acquire(blocking=False):
            self._life.check_open()
            raise BusyError("this client is already in use by another thread; use one client per thread")
        try:
            self._life.check_open()
            if self._pending is None:
                raise ValueError("no step in flight: call step_async() first")
        except BaseException:
            self._lock.release()
            raise
        return self._pending

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether the answer to the step in flight is in (True also when collecting it will raise).

        Reads what has arrived (never cutting a frame in half), waiting up
        to ``timeout`` seconds (0: not at all; None: until it is in).

        Raises:
            ValueError: no step in flight. ClosedError, BusyError.
        """
        pending = self._take()
        try:
            if pending[2] is None:
                try:
                    pending[2] = self._collect(pending[0], timeout)
                except OperationTimeout:
                    return False
                except (BrokenError, ProtocolError) as exc:
                    pending[2] = self._lost(exc)
            return True
        finally:
            self._lock.release()

    def finish_step(self, timeout: float | None) -> list[Any]:
        """The checked OK answering the step :meth:`begin_step` sent (as :meth:`step` returns it).

        A timeout leaves the step in flight (call again to collect it); any
        other outcome ends it.

        Raises:
            ValueError: no step in flight. OperationTimeout, BrokenError,
            ClosedError, BusyError, and the errors an ERROR maps to.
        """
        pending = self._take()
        try:
            response = pending[2]
            if response is None:
                try:
                    response = self._collect(pending[0], timeout)
                except OperationTimeout:
                    raise OperationTimeout(
                        f"remote environment call timed out after {timeout}s", timeout=timeout
                    ) from None
                except (BrokenError, ProtocolError) as exc:
                    response = self._lost(exc)
            self._pending = None
        finally:
            self._lock.release()
        if isinstance(response, BaseException):
            raise response
        if response[0] == P.ERROR:
            raise P.Error.from_wire(response).to_exception("step")
        if response[0] != P.OK:
            raise ProtocolError(f"unexpected response kind {response[0]!r}")
        return P.StepOk.check(response)

    def _collect(self, rid: int, timeout: float | None) -> list[Any]:
        """Read messages until the answer to ``rid`` (OK or ERROR) is in; the caller holds ``_lock``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        socket_channel = self.channel.data_plane == "inline"
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            message = self._receive(remaining) if socket_channel else self.channel.recv(remaining)
            response = self._decode(message)
            if response[0] == P.SEGMENTS:
                self._add_segments(response)
                continue
            if len(response) >= 2 and response[1] == rid:
                return response

    def _lost(self, exc: BaseException) -> BaseException:
        """The error for a session that failed under a split request (it is broken from now on)."""
        if self._life.state is not _OPEN:
            return ClosedError("the client was closed while a request waited")
        self._broken = exc
        return BrokenError(f"lost the connection to the env at {self.address}: {exc}")

    def _decode(self, message: Message) -> list[Any]:
        try:
            response = decode(
                message.head,
                tail=message.tail,
                tail_address=message.tail_address,
                peer=self.peer,
                copy_inline=message.in_ring,
            )
        finally:
            message.done()
        if type(response) is not list or not response:
            raise ProtocolError("malformed response")
        return response

    def _add_segments(self, response: list[Any]) -> None:
        """Map the segments a SEGMENTS message announces (memfds: the descriptors of its frame).

        Raises:
            ProtocolError: malformed, or a segment this side refuses to map
                (the session is then broken: the server cannot be trusted).
        """
        fds = self.stream.take_fds()
        try:
            if self.peer is None:
                raise ProtocolError("unexpected segment announcement")
            for seg_id, seg_ref, seg_size in P.Segments.from_wire(response).segments:
                if isinstance(seg_ref, int):
                    self.peer.add_memfd(seg_id, _take_fd(fds, seg_ref), seg_size)
                else:
                    self.peer.add_segment(seg_id, seg_ref, seg_size)
        except ShmError as exc:
            raise ProtocolError(f"the server announced a segment this client refuses to map: {exc}") from exc
        finally:
            close_fds([fd for fd in fds if fd >= 0])

    def close(self, *, timeout: float = 1.0) -> None:
        """Detach from the server (it keeps serving) and release everything. Idempotent.

        When no request is in flight, the goodbye waits up to ``timeout``
        seconds for the server's answer; if it fails, the session is closed
        all the same. A request in flight in another thread is woken instead
        (it raises ClosedError), with no goodbye: the server sees the socket
        close. Either way close() returns within about ``timeout`` seconds.
        """
        if not self._life.begin_close():
            return
        try:
            idle = self._lock.acquire(blocking=False)
            if idle:
                if self._broken is None:
                    self._goodbye(timeout)
            else:
                # A request is in flight: wake it (its ring or socket wait ends
                # with ClosedError), and let it leave before the memory it
                # reads is unmapped.
                self.channel.close()
                idle = self._lock.acquire(timeout=max(timeout, CLOSE_WAKE_WAIT))
            try:
                self.channel.close()
                self._life.release()  # _close_connection: the socket and the shared memory
            finally:
                if idle:
                    self._lock.release()
        finally:
            self._life.finish_close()

    def _goodbye(self, timeout: float) -> None:
        """Send CLOSE and wait up to ``timeout`` for its answer (the caller holds ``_lock``)."""
        try:
            self._rid += 1
            self.channel.send(pack(P.Close(self._rid).to_wire()), timeout=timeout)
            deadline = time.monotonic() + timeout
            while True:
                message = self.channel.recv(max(deadline - time.monotonic(), 0.0))
                response = self._decode(message)
                if response[0] != P.SEGMENTS and len(response) >= 2 and response[1] == self._rid:
                    break
        except RLMeshError:
            pass  # not graceful, but closed all the same
