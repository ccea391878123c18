"""The client's side of a session: dial, handshake, channel, requests.

:class:`ClientSession` connects to a server, runs the handshake, maps the
session's shared memory when the server offers it (else falls back to inline
frames), and then carries one request at a time to the server and its
response back. Endpoints (the env clients, later the model and vector
clients) build on it and never touch its channel or stream.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Any

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
from ..net.stream import SocketStream, connect
from ..shm import PeerMemory, Segment, SpinPolicy
from ..specs import EnvContract
from . import protocol as P
from .channel import Message, RingChannel, SocketChannel, read_token
from .codec import TailBuilder, decode, pack

__all__ = ["CLIENT_SPIN", "CONNECT_ATTEMPT_TIMEOUT", "ClientSession"]

#: Deadline of one connection attempt (connect plus handshake).
CONNECT_ATTEMPT_TIMEOUT = 10.0
#: The client spins this long for a response before sleeping.
CLIENT_SPIN = 500e-6


def _close_connection(stream: SocketStream, peer: PeerMemory | None, segment: Segment | None) -> None:
    # The finalizer: raw resources only, never the client object.
    stream.close()
    if peer is not None:
        peer.close()
    if segment is not None:
        segment.close_when_unpinned()


class ClientSession:
    """One session with a server: the handshake, the channel, and requests."""

    def __init__(
        self,
        address: Address,
        *,
        connect_timeout: float | None,
        request_timeout: float | None,
        shared_memory: bool,
        max_message_bytes: int,
    ) -> None:
        self.address = address
        self.request_timeout = request_timeout
        self.peer: PeerMemory | None = None
        self.segment: Segment | None = None
        self.channel: Any = None
        self._rid = 0
        self._lock = threading.Lock()
        self._closed = False
        self._broken: BaseException | None = None
        self.stream = self._dial(connect_timeout, max_message_bytes)
        try:
            self._handshake(shared_memory)
        except BaseException:
            _close_connection(self.stream, self.peer, self.segment)
            raise
        self._finalizer = weakref.finalize(self, _close_connection, self.stream, self.peer, self.segment)

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
        hello = {
            "magic": P.MAGIC,
            "protocol": P.PROTOCOL_VERSION,
            "version": P.RELEASE,
            "pid": os.getpid(),
            "shm": bool(shared_memory),
            "max_frame": stream.max_frame,
        }
        welcome = self._exchange([P.HELLO, hello], deadline)
        if isinstance(welcome, list) and welcome and welcome[0] == P.ERROR:
            raise P.error_from_wire(welcome, "the handshake")
        if not (
            isinstance(welcome, list)
            and len(welcome) == 2
            and welcome[0] == P.WELCOME
            and isinstance(welcome[1], dict)
        ):
            raise ConnectError(f"connected to '{self.address}', but it did not answer like an rlmesh server")
        info = welcome[1]
        if info.get("protocol") != P.PROTOCOL_VERSION:
            raise VersionMismatch(
                f"protocol version mismatch: this client (rlmesh {P.RELEASE}) speaks protocol "
                f"{P.PROTOCOL_VERSION}, the server (rlmesh {info.get('version', '?')}) speaks "
                f"{info.get('protocol')!r}; run the same rlmesh release on both sides",
                local=P.PROTOCOL_VERSION,
                remote=info.get("protocol"),
            )
        contract = info.get("contract")
        if not isinstance(contract, dict):
            raise ConnectError(f"the server at '{self.address}' sent no env contract")
        self.contract = EnvContract.from_dict(contract)
        self.session = str(info.get("session", ""))
        token, reason = None, None
        offer = info.get("offer")
        if offer is not None:
            token, reason = self._attach(offer)
        elif shared_memory:
            reason = "the server offered no shared memory"
        ready = self._exchange([P.ATTACHED, {"token": token, "reason": reason}], deadline)
        if not (isinstance(ready, list) and len(ready) == 2 and ready[0] == P.READY):
            raise ConnectError("the server did not confirm the session")
        # A server thread in this very process needs the GIL a spin would hold.
        spin = CLIENT_SPIN if info.get("pid") != os.getpid() else 0.0
        if ready[1].get("data_plane") == "shm" and token is not None:
            name, size, req_off, req_cap, resp_off, resp_cap = self._channel_args
            assert self.segment is not None
            self.channel = RingChannel(
                stream, self.segment, tx=(req_off, req_cap), rx=(resp_off, resp_cap), spin=SpinPolicy(spin)
            )
        else:
            self._drop_shm()
            stream.spin = SpinPolicy(spin)
            self.channel = SocketChannel(stream)

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

    def _attach(self, offer: Any) -> tuple[str | None, str | None]:
        try:
            channel = offer["channel"]
            if not (
                isinstance(channel, list) and len(channel) == 6 and all(type(v) is int for v in channel[1:])
            ):
                raise ShmError("malformed channel offer")
            name, size = channel[0], channel[1]
            self.segment = Segment.attach(name, size)
            self.peer = PeerMemory()
            for seg_id, seg_name, seg_size in offer["segments"]:
                self.peer.add_segment(seg_id, seg_name, seg_size)
            self._channel_args = channel
            return read_token(self.segment), None
        except (ShmError, KeyError, TypeError, ValueError) as exc:
            self._drop_shm()
            return None, str(exc)

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
        return str(self.channel.data_plane)

    # -- requests ---------------------------------------------------------------------

    def call(
        self, request: list[Any], tail: TailBuilder | None, timeout: float | None, what: str
    ) -> list[Any]:
        """Send a request (its rid is filled in) and return the OK response.

        Raises:
            ClosedError, BusyError, OperationTimeout, BrokenError, and the
            errors an ERROR response maps to (RemoteError, InvalidActionError...).
        """
        if not self._lock.acquire(blocking=False):
            raise BusyError("this client is already in use by another thread; use one client per thread")
        try:
            if self._closed:
                raise ClosedError("the client is closed")
            if self._broken is not None:
                raise BrokenError(
                    f"the connection to {self.address} is broken: {self._broken}"
                ) from self._broken
            self._rid += 1
            rid = request[1] = self._rid
            deadline = None if timeout is None else time.monotonic() + timeout
            peer = self.peer
            if peer is not None and len(request) >= 3 and request[0] in (P.RESET, P.STEP, P.RENDER):
                releases = peer.take_releases()
                if releases:
                    request[-1] = [field for handle in releases for field in handle]
            try:
                self.channel.send(pack(request, tail), tail, timeout=timeout)
                while True:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise OperationTimeout(
                            f"remote environment call timed out after {timeout:.3g}s", timeout=timeout
                        )
                    message = self.channel.recv(remaining)
                    response = self._decode(message)
                    kind = response[0]
                    if kind == P.SEGMENTS:
                        self._add_segments(response)
                        continue
                    if len(response) < 2 or response[1] != rid:
                        continue  # the late answer to a request that timed out
                    if kind == P.ERROR:
                        raise P.error_from_wire(response, what)
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
                self._broken = exc
                raise BrokenError(f"lost the connection to the env at {self.address}: {exc}") from exc
        finally:
            self._lock.release()

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
        if not isinstance(response, list) or not response:
            raise ProtocolError("malformed response")
        return response

    def _add_segments(self, response: list[Any]) -> None:
        if self.peer is None or len(response) != 2 or not isinstance(response[1], list):
            raise ProtocolError("unexpected segment announcement")
        for entry in response[1]:
            if not (isinstance(entry, list) and len(entry) == 3):
                raise ProtocolError("malformed segment announcement")
            self.peer.add_segment(*entry)

    def close(self, *, timeout: float = 1.0) -> None:
        """Detach from the server (it keeps serving) and release everything. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._broken is None:
                try:
                    self._rid += 1
                    self.channel.send(pack([P.CLOSE, self._rid]), timeout=timeout)
                    deadline = time.monotonic() + timeout
                    while True:
                        message = self.channel.recv(max(deadline - time.monotonic(), 0.0))
                        response = self._decode(message)
                        if response[0] != P.SEGMENTS and len(response) >= 2 and response[1] == self._rid:
                            break
                except RLMeshError:
                    pass  # not graceful, but closed all the same
            if self.channel is not None:
                self.channel.close()
            self._finalizer()
