"""An ``EnvServer``'s sessions: the env request handler, the server as its sessions see it.

:class:`_EnvHandler` is the wire session's ``RequestHandler`` for an env,
:class:`_Host` its ``SessionHost``; with them the per-request helpers (per-lane
values into the slab, seed checks) and :func:`_turn_away`, the answer to a
client the server has no descriptor left for. Split from ``rlmesh.server``,
which re-exports these names.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._adapter import EnvAdapter, InlineSink, ShmSink, Sink, encode_render
from ._codecs import COMPACT_LEAF, CompactSink
from ._dtypes import DTYPES
from .errors import InvalidActionError, RLMeshError
from .net.stream import SocketStream
from .specs import EnvContract
from .tensor import Tensor
from .values import encode_metadata
from .wire import protocol as P
from .wire.codec import CODE_BY_NAME, TailBuilder, inline_ext, pack
from .wire.server_session import ServerSession

if TYPE_CHECKING:
    from .server import EnvServer
    from .wire.server_session import RequestHandler

#: The logger of ``rlmesh.server``, where this code was first: log filters keep working.
log = logging.getLogger("rlmesh.server")


class _EnvHandler:
    """Serves one session's requests with its env adapter (the wire session's :class:`RequestHandler`)."""

    def __init__(self, server: EnvServer, session: ServerSession, adapter: EnvAdapter) -> None:
        self._server = server
        self._session = session
        self.adapter = adapter
        #: The sink writing response tensors into the session's slab (built at the first response).
        self.sink: ShmSink | None = None
        #: Whether this endpoint serves compact steps (rlmesh.wire.step_codec): a single env.
        self.step_codec = not adapter.vector
        # A compact STEP's tensor action (a bytearray) as the action decoder takes it.
        self._action_array: Any = None
        # Where a compact OK's observation goes (its bytes, by reference).
        self._compact_sink = CompactSink()

    @property
    def contract(self) -> EnvContract:
        """The served env's contract."""
        return self.adapter.contract

    def release(self) -> None:
        """Give the adapter back to the server's env source."""
        self._server._source.release(self.adapter, self._server._close_timeout)

    def vector_offer(self) -> dict[str, Any] | None:
        """The vector fast path's segment and layout, when this session has worker processes."""
        pool = getattr(self.adapter.env, "pool", None)
        return None if pool is None else pool.offer()

    def vector_fileno(self) -> int | None:
        """The vector segment's descriptor if it is a memfd (sent to the client), else None."""
        pool = getattr(self.adapter.env, "pool", None)
        return None if pool is None else pool.fileno()

    def vector_attached(self) -> None:
        """The handshake is over: whoever maps the vector segment has; its name can go."""
        pool = getattr(self.adapter.env, "pool", None)
        if pool is not None:
            pool.unlink()

    def _sink(self) -> tuple[Sink, TailBuilder]:
        tail = self._session.begin_response()
        if tail is not None:
            return InlineSink(tail), tail
        sink = self.sink
        if sink is None:
            data = self._session.data
            assert data is not None
            sink = self.sink = ShmSink(data.acquire)
        # Small tensors travel in the ring record's tail (SHM_INLINE_LIMIT).
        tail = sink.tail = TailBuilder()
        return sink, tail

    def on_step(self, rid: int, action: Any) -> bool:
        """Step the env; reply with the observation, reward, flags and info."""
        adapter, session = self.adapter, self._session
        try:
            decoded = adapter.decode_action(action)
        except InvalidActionError as exc:
            session.reply_error(rid, P.E_INVALID_ACTION, exc, str(exc))
            return True
        sink, tail = self._sink()
        try:
            obs, reward, terminated, truncated, info = adapter.step(decoded)
            wire_obs, info = adapter.encode_obs_info(obs, info, sink)
            if adapter.vector:
                n = adapter.num_envs
                payload = [
                    wire_obs,
                    _encode_lanes(reward, n, "float64", sink),
                    _encode_lanes(terminated, n, "bool", sink),
                    _encode_lanes(truncated, n, "bool", sink),
                    encode_metadata(info),
                ]
            else:
                payload = [wire_obs, reward, terminated, truncated, encode_metadata(info)]
        except Exception as exc:
            session.fail(rid, exc)
            return True
        session.reply_ok(rid, payload, tail)
        return True

    def on_step_compact(self, rid: int, action: Any) -> bool:
        """:meth:`on_step` for a compact STEP (``action``: an int, or the action's bytes as a bytearray).

        The same checks and errors; the answer is a compact OK when the
        step's info is empty (conformance warnings included), else the msgpack OK.
        """
        adapter, session = self.adapter, self._session
        if type(action) is bytearray:
            to_array = self._action_array
            if to_array is None:
                to_array = self._action_array = _bytes_to_action(session)
            action = to_array(action)
        try:
            decoded = adapter.decode_action(action)
        except InvalidActionError as exc:
            session.reply_error(rid, P.E_INVALID_ACTION, exc, str(exc))
            return True
        data = session.data
        if data is not None and data.unsent:
            data.unsent.clear()  # an earlier response's blocks went out with it (begin_response's job)
        sink = self._compact_sink
        try:
            obs, reward, terminated, truncated, info = adapter.step(decoded)
            wire_obs, info = adapter.encode_obs_info(obs, info, sink)
            metadata = encode_metadata(info) if info else None
        except Exception as exc:
            session.fail(rid, exc)
            return True
        # One leaf: an int, or its bytes in the sink.
        leaf = sink.data if wire_obs is COMPACT_LEAF else wire_obs
        if metadata is None and session.reply_step(rid, reward, terminated, truncated, leaf):
            return True
        tail = TailBuilder()
        if wire_obs is COMPACT_LEAF:
            layout = session.step_layout
            assert layout is not None and layout.obs_dtype is not None
            offset = tail.add(leaf, layout.obs_nbytes)
            wire_obs = inline_ext(CODE_BY_NAME[layout.obs_dtype.name], layout.obs_shape, offset)
        payload = [wire_obs, reward, terminated, truncated, {} if metadata is None else metadata]
        session.reply_ok(rid, payload, tail)
        return True

    def on_reset(self, rid: int, seed: Any, options: Any) -> bool:
        """Reset the env; reply with the first observation and info."""
        session = self._session
        if not _valid_seed(seed):
            session.reply_error(rid, P.E_INVALID_ARGUMENT, None, f"invalid seed {seed!r}")
            return True
        if options is not None and type(options) is not dict:
            session.reply_error(rid, P.E_INVALID_ARGUMENT, None, "options must be a dict")
            return True
        sink, tail = self._sink()
        try:
            obs, info = self.adapter.reset(seed, options)
            wire_obs, info = self.adapter.encode_obs_info(obs, info, sink)
            payload = [wire_obs, encode_metadata(info)]
        except Exception as exc:
            session.fail(rid, exc)
            return True
        session.reply_ok(rid, payload, tail)
        return True

    def on_render(self, rid: int, env_index: int) -> bool:
        """Render lane ``env_index``; reply with the frame."""
        adapter, session = self.adapter, self._session
        if not 0 <= env_index < adapter.num_envs:
            message = f"env_index {env_index} is out of range: the endpoint serves {adapter.num_envs} env(s)"
            session.reply_error(rid, P.E_INVALID_ARGUMENT, None, message)
            return True
        sink, tail = self._sink()
        try:
            payload = [encode_render(adapter.render(env_index), sink)]
        except Exception as exc:
            session.fail(rid, exc)
            return True
        session.reply_ok(rid, payload, tail)
        return True


class _Host:
    """The server as its sessions see it (the wire session's :class:`SessionHost`)."""

    def __init__(self, server: EnvServer) -> None:
        self._server = server

    @property
    def stopping(self) -> threading.Event:
        """Set once the server stops."""
        return self._server._stopping

    def open_session(self, session: ServerSession) -> RequestHandler:
        """The handler of a new client: an env (its own, or the shared one if free), or a model."""
        return self._server._open_handler(session)

    def active_sessions(self) -> int:
        """Live sessions."""
        return len(self._server._sessions)

    def shutdown_allowed(self) -> bool:
        """``allow_remote_shutdown``, or ``RLMESH_ALLOW_REMOTE_SHUTDOWN=1``."""
        return bool(
            self._server.options.allow_remote_shutdown
            or os.environ.get("RLMESH_ALLOW_REMOTE_SHUTDOWN") == "1"
        )

    def request_stop(self) -> None:
        """Stop the server."""
        self._server._request_stop()

    def session_ended(self, session: ServerSession) -> None:
        """Forget a session (keeping when it was last used, for the idle timeout)."""
        self._server._session_ended(session)


def _encode_lanes(values: Any, n: int, dtype_name: str, sink: Sink) -> Any:
    dtype = DTYPES[dtype_name]
    record, view = sink.target((n,), dtype)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        import struct

        items = list(values)
        if len(items) != n:
            raise ValueError(f"expected {n} per-lane values, got {len(items)}") from None
        fmt = "<" + ("d" if dtype_name == "float64" else "?") * n
        struct.pack_into(fmt, view, 0, *[float(v) if dtype_name == "float64" else bool(v) for v in items])
        return record
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"the vector env returned {dtype_name} values of shape {arr.shape}, expected ({n},)")
    np.copyto(np.frombuffer(view, dtype=np.dtype(dtype_name)), arr, casting="unsafe")
    return record


def _bytes_to_action(session: ServerSession) -> Callable[[bytearray], Any]:
    """How a compact STEP's action bytes become the value the action decoder checks.

    A NumPy array over the bytes (as the msgpack path's Tensor would become),
    or a Tensor where NumPy is missing.
    """
    layout = session.step_layout
    assert layout is not None and layout.action_dtype is not None
    dtype, shape = layout.action_dtype, layout.action_shape
    try:
        from .backends.numpy import numpy_dtype

        np_dtype = numpy_dtype(dtype.name)
        import numpy as np
    except ImportError:
        return lambda data: Tensor(data, shape, dtype)
    return lambda data: np.frombuffer(data, np_dtype).reshape(shape)


def _turn_away(sock: socket.socket) -> None:
    """Tell a client the server has no descriptor left for it (see :class:`Listener`).

    The client's HELLO is read and dropped after the answer: closing a socket
    with unread data resets the connection, and the client could lose the
    answer to the reset.
    """
    log.warning("out of file descriptors: turning a client away (raise `ulimit -n`)")
    message = (
        "the server has run out of file descriptors and cannot take another session; "
        "try again later, or raise its limit (ulimit -n)"
    )
    try:
        stream = SocketStream(sock)
    except OSError:
        return  # the connection is gone already
    try:
        stream.send(pack(P.Error.from_exception(0, P.E_BUSY, None, message).to_wire()), timeout=1.0)
    except RLMeshError:
        pass
    finally:
        stream.detach()  # the listener owns the socket (it keeps its descriptor as a spare)
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(1.0)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and sock.recv(P.MAX_HANDSHAKE_FRAME):
            pass
    except (OSError, RLMeshError):
        pass


def _valid_seed(seed: Any) -> bool:
    if seed is None:
        return True
    if type(seed) is int:
        return seed >= 0
    return (
        isinstance(seed, list) and 0 < len(seed) <= 1 << 20 and all(type(s) is int and s >= 0 for s in seed)
    )
