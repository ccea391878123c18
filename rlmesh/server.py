"""``EnvServer``: serve a Gymnasium environment to clients in other processes.

One thread accepts connections; each connection gets a session thread that
runs the handshake, then serves requests until the client detaches, dies or
the server stops. Per session:

* a **channel** (two shared-memory message rings) when the client can map our
  /dev/shm, else frames on the socket;
* a **data plane** (a slab of leased blocks) holding the observations and
  frames the client has not released yet;
* an env: its own instance when the server was given a factory or an env id,
  or the one shared env object (then one session at a time).

An exception inside the env goes back to the client as a RemoteError with the
remote traceback; the session and the server keep going.

The session itself (handshake, channel, data plane, request loop) is
:class:`rlmesh.wire.server_session.ServerSession`; this module gives it the
env, as a ``RequestHandler``, and the server, as a ``SessionHost``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from ._conformance import check_policy, resolve_policy

# The env sources and the session handler live in their own modules; the names
# are re-exported here, where they were first defined.
from ._env_sessions import (
    _encode_lanes as _encode_lanes,
    _EnvHandler as _EnvHandler,
    _Host as _Host,
    _turn_away as _turn_away,
    _valid_seed as _valid_seed,
)
from ._env_sources import (
    _close_env as _close_env,
    _EnvSource as _EnvSource,
    _gym_factory as _gym_factory,
    _make_source as _make_source,
)
from ._framework import action_converter
from ._lifecycle import Lifecycle, State
from ._restart import RestartPolicy
from ._spin import spin_enabled
from .errors import ClosedError
from .net.address import resolve_address
from .net.framing import DEFAULT_MAX_FRAME
from .net.listener import Listener
from .net.stream import SocketStream
from .shm import janitor as _janitor
from .specs import EnvContract
from .wire.protocol import auth_token_from_env, check_auth_token
from .wire.server_session import HEARTBEAT_INTERVAL, ServerSession, SessionConfig

if TYPE_CHECKING:
    from .vector.pool import VectorEnvSource
    from .wire.server_session import RequestHandler

__all__ = ["EnvServer", "ServeOptions"]

log = logging.getLogger(__name__)

__version__ = "0.1.0"

#: The server spins while waiting for a request only if it has a single
#: session and at least two cores: never more spinners than cores.
SERVER_SPIN = 500e-6


def _check_seconds(name: str, value: float | None, *, allow_zero: bool = True) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None")
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value}")
    return float(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """How an :class:`EnvServer` behaves. Keyword-only, immutable.

    Attributes:
        allow_remote_shutdown: let a client stop the server with
            ``client.shutdown()`` (also enabled by ``RLMESH_ALLOW_REMOTE_SHUTDOWN=1``).
        idle_timeout_seconds: stop the server after this long without any
            request (armed when the server starts; None: never).
        drain_timeout_seconds: at shutdown, how long sessions may take to
            finish the request they are serving (None: 5 s).
        close_timeout_seconds: how long ``env.close()`` may take (None: 10 s).
        handshake_timeout_seconds: how long a new connection may take to
            complete the handshake.
        max_message_bytes: the largest message accepted or sent.
        shared_memory: offer shared memory to clients that can map it.
        validation: how observations are checked against the observation
            space: "warn" (deliver, and report deviations once per value path
            and session in ``info["rlmesh.conformance.warning"]``), "strict"
            (reject them) or "off" (no checks, NaN included). NaN is rejected
            under warn and strict. None: ``RLMESH_VALIDATION_POLICY``, else warn.
        spin: whether a session spins briefly for its client's next request
            before sleeping (it answers sooner when a core is free). None:
            ``RLMESH_SPIN`` (on unless it is 0). Never on a single core, and
            it stops by itself while the machine has more runnable processes
            than cores.
        auth_token: a shared secret every client must present (its
            ``auth_token=`` or ``RLMESH_AUTH_TOKEN``), compared in constant
            time at the handshake before the session allocates anything (no
            env, no shared memory, no worker); a client without it, or with
            another, gets :class:`~rlmesh.errors.AuthenticationError`. None:
            ``RLMESH_AUTH_TOKEN`` if set, else no token. Required when the
            server binds anything but loopback or a Unix socket. It is not
            encryption: traffic is in the clear (keep it on a private network).

    Raises:
        TypeError: a positional argument, a non-numeric timeout, a non-string token.
        ValueError: a negative, NaN or infinite timeout, a too small
            ``max_message_bytes``, an unknown ``validation``, or an empty or
            too long (over 1024 bytes) ``auth_token``.
    """

    allow_remote_shutdown: bool = False
    idle_timeout_seconds: float | None = None
    drain_timeout_seconds: float | None = None
    close_timeout_seconds: float | None = None
    handshake_timeout_seconds: float = 10.0
    max_message_bytes: int = DEFAULT_MAX_FRAME
    shared_memory: bool = True
    validation: str | None = None
    spin: bool | None = None
    auth_token: str | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_auth_token(self.auth_token, "auth_token")
        _check_seconds("idle_timeout_seconds", self.idle_timeout_seconds, allow_zero=False)
        _check_seconds("drain_timeout_seconds", self.drain_timeout_seconds)
        _check_seconds("close_timeout_seconds", self.close_timeout_seconds)
        _check_seconds("handshake_timeout_seconds", self.handshake_timeout_seconds, allow_zero=False)
        if not isinstance(self.max_message_bytes, int) or self.max_message_bytes < 4096:
            raise ValueError("max_message_bytes must be an int >= 4096")
        if self.validation is not None:
            check_policy(self.validation)


# -- the server -------------------------------------------------------------------------


def _release_server(listener: Listener, source: Any, close_timeout: float) -> None:
    # The finalizer of a server never shut down (and never started: a running
    # server is kept alive by its thread): its parts, never the server.
    listener.close()
    source.close(close_timeout)


class EnvServer:
    """Serve an environment on a Unix or TCP socket.

    Args:
        env: what to serve: an env object (one client at a time), a
            zero-argument factory or env class (one env per client), or a
            Gymnasium id such as ``"CartPole-v1"`` (one ``gymnasium.make`` per
            client). Gymnasium 1.x envs, legacy 4-tuple gym envs and vector
            envs (``num_envs >= 2``) are all accepted.
        address: where to listen: ``"unix:///tmp/env.sock"``,
            ``"tcp://127.0.0.1:5555"``, ``"127.0.0.1:0"`` or a bare port.
            Default ``tcp://127.0.0.1:0`` (a free port). A TCP host is bound
            exactly (``tcp://10.0.0.5:0`` listens on that interface only);
            anything but loopback needs ``ServeOptions(auth_token=...)``.
        host, port, path, transport: the address as helpers instead.
        options: :class:`ServeOptions`.
        num_envs: serve N lanes: with a Gymnasium id or a factory of single
            envs, a vector endpoint (see ``vectorization_mode``).
        make_kwargs: keyword arguments for ``gymnasium.make`` with an id (or
            for the factory on the vector fast path); further keyword
            arguments of this constructor are added to them.
        vectorization_mode: with ``num_envs >= 2``: "async" runs the lanes in
            ``workers`` worker processes that write straight into shared
            memory (the vector fast path, :mod:`rlmesh.vector`); "sync" keeps
            one in-process ``gymnasium.make_vec(..., "sync")`` vector env (a
            ``SyncVectorEnv``); "vector_entry_point" (an id only) serves the
            id's own vector env (``make_vec``'s choice, such as CartPole's
            native one). None (the default) takes "async" where it can (an id
            or an importable module-level factory of single envs with
            fixed-shape spaces) and ``make_vec``'s choice otherwise.
        workers: the fast path's worker processes (default
            ``min(num_envs, cores - 1)``, at least 1: a core stays free for
            the client's policy). Each owns a contiguous group of lanes.
        restart: a :class:`RestartPolicy` for the fast path's workers (None,
            the default: a worker that dies is a :class:`WorkerError` naming
            its lanes). With one, a dead worker is respawned: its lanes start
            new unseeded episodes, reported by the next step or ``recv`` that
            covers them (reset observation, reward 0, not terminated nor
            truncated, ``info["rlmesh_restarted"]`` True), while the other
            lanes run on untouched; a worker that dies more than
            ``max_restarts`` times within ``window_seconds`` gives the
            WorkerError. Restarts are counted in :meth:`stats`.
        autoreset_mode: "NextStep" (default), "SameStep" or "Disabled", as
            Gymnasium's vector envs (with an id or a factory).
        close_env_on_shutdown: close a single env object at shutdown (False
            leaves it open for its owner; envs the server made are always closed).
        framework: how the env wants its actions: None or "numpy" (NumPy
            arrays and Python scalars), "jax" (array leaves as ``jax.Array``
            on ``device``; JAX is imported only then), "torch" (array leaves
            as ``torch.Tensor`` on ``device``; torch is imported only then).
            Observations need no declaration: NumPy and JAX arrays (on any
            device) and CPU torch tensors are read.
        device: where a JAX or torch env wants its actions: a ``jax.Device``,
            a ``torch.device`` or a name such as "cpu", "gpu:0", "cuda:1"; None
            for the framework's default. Only with ``framework="jax"`` or "torch".

    The listener is bound and the contract built in the constructor, so
    :attr:`address` and :attr:`env_contract` are available at once.

    Lifetime:
        :meth:`serve` blocks until stopped (SIGINT or SIGTERM stop it
        gracefully); :meth:`start` serves on a background thread and leaves
        signal handlers alone; :meth:`shutdown` stops serving, closes every
        session, closes the env (a single env object exactly once, also when
        the server never started) and removes the Unix socket file. It is
        idempotent; :meth:`close` is the same call, and the context manager
        calls it. :attr:`state` is NEW until started, OPEN while serving,
        CLOSING during shutdown, CLOSED after; a shutdown from another thread
        wins over :meth:`serve` or :meth:`wait` blocked in this one, which
        return at once. Starting a server that was shut down raises
        ClosedError (a RuntimeError). A server never started and never shut
        down releases its listener and env when garbage collected, with a
        ``ResourceWarning``.

    Raises:
        ConnectError: (a ConnectionError) the address cannot be bound.
        TypeError: the env lacks reset/step/close or uses an unsupported space.
        ValueError: a TCP address beyond loopback without an auth token
            (nothing is built), a vector env with num_envs < 2, bad options, an unknown
            framework, ``device`` without a framework that has devices, or a
            device JAX does not have.
        BackendUnavailable: (an ImportError) ``framework="jax"`` without jax
            (>= 0.4.24), or ``framework="torch"`` without torch.
    """

    def __init__(
        self,
        env: Any,
        address: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        path: str | None = None,
        transport: str | None = None,
        options: ServeOptions | None = None,
        num_envs: int | None = None,
        make_kwargs: dict[str, Any] | None = None,
        close_env_on_shutdown: bool = True,
        framework: str | None = None,
        device: Any = None,
        vectorization_mode: str | None = None,
        workers: int | None = None,
        autoreset_mode: str | None = None,
        restart: RestartPolicy | None = None,
        **more_make_kwargs: Any,
    ) -> None:
        self._listener: Listener | None = None
        self._life = Lifecycle("the EnvServer", State.NEW)
        # Signals, not lifecycle: sessions watch `_stopping`; wait() watches `_stopped`.
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self.options = options if options is not None else ServeOptions()
        if not isinstance(self.options, ServeOptions):
            raise TypeError("options must be a ServeOptions")
        bind = resolve_address(
            address,
            host=host,
            port=port,
            path=path,
            transport=transport,
            default="tcp://127.0.0.1:0",
            for_bind=True,
        )
        # Settled before any env is built: a server that would refuse to start
        # must not cost a factory call.
        self._auth_token = auth_token_from_env(self.options.auth_token)
        if self._auth_token is None and not bind.is_loopback:
            raise ValueError(
                f"refusing to serve on {bind} without an auth token: a server reachable from other "
                "hosts needs ServeOptions(auth_token=...) or RLMESH_AUTH_TOKEN (rlmesh serve "
                "--auth-token-file); bind 127.0.0.1 or a Unix socket to serve this host only"
            )
        self._close_timeout = (
            self.options.close_timeout_seconds if self.options.close_timeout_seconds is not None else 10.0
        )
        self._drain_timeout = (
            self.options.drain_timeout_seconds if self.options.drain_timeout_seconds is not None else 5.0
        )
        # Both are settled before any env is built: a bad framework or device
        # must not cost a factory call (or leave an env behind).
        to_framework = action_converter(framework, device)
        validation = resolve_policy(self.options.validation)
        kwargs = {**(make_kwargs or {}), **more_make_kwargs}
        self._source: _EnvSource | VectorEnvSource = self._make_source(
            env,
            num_envs,
            kwargs,
            vectorization_mode=vectorization_mode,
            workers=workers,
            autoreset_mode=autoreset_mode,
            close_shared=close_env_on_shutdown,
            restart=restart,
            validation=validation,
            to_framework=to_framework,
        )
        try:
            # Stale segments of dead servers go first (cheap, and a server
            # that was SIGKILLed could not clean up after itself).
            _janitor.clean()
            self._listener = Listener(bind, reject=_turn_away)
        except BaseException:
            self._source.close(self._close_timeout)
            raise
        self._sessions: set[ServerSession] = set()
        self._host = _Host(self)
        self._session_config = SessionConfig(
            handshake_timeout=self.options.handshake_timeout_seconds,
            shared_memory=self.options.shared_memory,
            spin=SERVER_SPIN if (os.cpu_count() or 1) >= 2 and spin_enabled(self.options.spin) else 0.0,
            log=log,
            auth_token=self._auth_token,
            heartbeat=HEARTBEAT_INTERVAL if bind.transport == "tcp" else None,
        )
        self._heartbeats: threading.Thread | None = None
        self._sessions_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_activity = time.monotonic()
        self._life.what = f"the EnvServer at {self._listener.address}"
        self._life.watch(self, _release_server, self._listener, self._source, self._close_timeout)

    # -- what a model server changes (rlmesh.model_server) ---------------------------

    #: Builds what serves the sessions from the constructor's ``env`` and options.
    _make_source = staticmethod(_make_source)

    def _open_handler(self, session: ServerSession) -> RequestHandler:
        """The request handler of a new session (an env adapter from the source).

        Raises:
            BusyError: a single env object already has a client.
            ClosedError: the server is stopping.
        """
        # A vector pool makes its session segment a memfd for a session that takes descriptors.
        if getattr(self._source, "memfd_sessions", False):
            acquire: Any = self._source.acquire  # a VectorEnvSource's
            return _EnvHandler(self, session, acquire(memfd=session.memfd))
        return _EnvHandler(self, session, self._source.acquire())

    # -- properties -----------------------------------------------------------------

    @property
    def address(self) -> str:
        """The address clients connect to, with the real port (``tcp://127.0.0.1:54321``).

        A server bound to one IP reports that IP. One bound to a wildcard
        (``tcp://0.0.0.0:PORT``, ``[::]``) listens on every interface and
        reports this host's routable address (its default route's source IP,
        else what its hostname resolves to, else loopback).
        """
        assert self._listener is not None
        return str(self._listener.address)

    @property
    def env_contract(self) -> EnvContract:
        """The served env's contract (spaces, num_envs, metadata...)."""
        return self._source.contract

    @property
    def spec(self) -> EnvContract:
        """Alias of :attr:`env_contract` (the published docs' name)."""
        return self._source.contract

    @property
    def state(self) -> State:
        """NEW, OPEN (serving), CLOSING (shutting down) or CLOSED."""
        return self._life.state

    @property
    def running(self) -> bool:
        """True between start/serve and the end of shutdown."""
        return self._life.state is State.OPEN or (
            self._life.state is State.CLOSING and self._thread is not None and not self._stopped.is_set()
        )

    def stats(self) -> dict[str, Any]:
        """Live sessions and, per session, its data plane and leases outstanding.

        On the vector fast path also ``worker_restarts``: workers respawned
        under the restart policy, per session and in all (ended sessions included).
        """
        with self._sessions_lock:
            sessions = list(self._sessions)
        out = []
        for s in sessions:
            data = s.data
            entry: dict[str, Any] = {
                "id": s.id,
                "data_plane": s.data_plane,
                "leases": data.leased if data is not None else 0,
                "slab_segments": len(data.slab.segments) if data is not None else 0,
            }
            pool = getattr(getattr(getattr(s.handler, "adapter", None), "env", None), "pool", None)
            if pool is not None:
                entry["worker_restarts"] = pool.restarts
            out.append(entry)
        result: dict[str, Any] = {"sessions": out}
        restarts = getattr(self._source, "restarts", None)
        if restarts is not None:
            result["worker_restarts"] = restarts
        return result

    # -- running ----------------------------------------------------------------------

    def serve(self) -> None:
        """Serve until stopped; SIGINT and SIGTERM stop gracefully.

        Signal handlers are installed only when called from the main thread,
        and restored afterwards.

        Raises:
            RuntimeError: the server was already started.
            ClosedError: (a RuntimeError) the server was shut down.
        """
        self._begin()
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: self._request_stop())
        try:
            self._accept_loop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.shutdown()

    def start(self) -> EnvServer:
        """Serve on a background thread; returns self.

        Raises:
            RuntimeError: the server was already started.
            ClosedError: (a RuntimeError) the server was shut down.
        """
        self._begin()
        self._thread = threading.Thread(target=self._run_background, name="rlmesh-server", daemon=True)
        self._thread.start()
        return self

    def serve_connection(self, sock: socket.socket) -> None:
        """Serve one session on a connection this process made, until it ends; then shut down.

        A sandboxed env dials back to its host (:mod:`rlmesh.sandbox`): the
        host listens, so the container needs no writable host path. The
        session runs as any accepted one (handshake deadline, liveness,
        drain); the listener bound by the constructor stays unused. SIGINT
        and SIGTERM stop it gracefully, as in :meth:`serve`.

        Args:
            sock: a connected stream socket; the server owns it from now on.

        Raises:
            RuntimeError: the server was already started.
            ClosedError: (a RuntimeError) the server was shut down.
        """
        try:
            self._begin()
        except BaseException:
            sock.close()
            raise
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: self._request_stop())
        try:
            stream = SocketStream(sock, max_frame=self.options.max_message_bytes)
            session = ServerSession(self._host, stream, self._session_config)
            with self._sessions_lock:
                self._sessions.add(session)
            session.thread.start()
            # Joined in slices so that a stop request (a signal) is seen.
            while session.thread.is_alive() and not self._stopping.is_set():
                session.thread.join(0.1)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.shutdown()

    def _begin(self) -> None:
        if self._life.state is State.OPEN:
            raise RuntimeError("the server was already started")
        if self._life.state is not State.NEW:
            raise ClosedError("the server was shut down")
        self._life.start()
        self._last_activity = time.monotonic()
        if self._session_config.heartbeat is not None:
            self._heartbeats = threading.Thread(
                target=self._heartbeat_loop, name="rlmesh-heartbeat", daemon=True
            )
            self._heartbeats.start()

    def _heartbeat_loop(self) -> None:
        """Tick each session's heartbeat (:meth:`ServerSession.beat`) until the server stops.

        A thread of its own, not the session's: the session thread is inside
        the env's step, which is what the heartbeat speaks for. It needs the
        GIL only for a moment each tick, which an env step holding the GIL
        for seconds at a stretch (a C extension that never releases it)
        would deny; such a step looks like a silent host to the client.
        """
        interval = self._session_config.heartbeat
        assert interval is not None
        while not self._stopping.wait(interval / 2):
            with self._sessions_lock:
                sessions = list(self._sessions)
            now = time.monotonic()
            for session in sessions:
                session.beat(now)

    def _run_background(self) -> None:
        try:
            self._accept_loop()
        except Exception:
            log.exception("the server's accept loop failed")
        finally:
            self.shutdown()

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        idle = self.options.idle_timeout_seconds
        while not self._stopping.is_set():
            try:
                sock = listener.accept(0.1)
            except ClosedError:
                return
            if idle is not None and self._idle_for() > idle and not self._any_busy():
                log.info("no request for %.1fs: stopping (idle_timeout_seconds)", idle)
                self._request_stop()
                return
            if sock is None:
                continue
            stream = SocketStream(sock, max_frame=self.options.max_message_bytes)
            session = ServerSession(self._host, stream, self._session_config)
            with self._sessions_lock:
                if self._stopping.is_set():
                    stream.close()
                    return
                self._sessions.add(session)
            session.thread.start()

    def _any_busy(self) -> bool:
        with self._sessions_lock:
            return any(s.busy for s in self._sessions)

    def _session_ended(self, session: ServerSession) -> None:
        with self._sessions_lock:
            self._sessions.discard(session)
            if session.last_request is not None:
                self._last_activity = max(self._last_activity, session.last_request)

    def _idle_for(self) -> float:
        """Seconds since the last request any session received (or since the start)."""
        with self._sessions_lock:
            last = max([self._last_activity, *(s.last_request or 0.0 for s in self._sessions)])
        return time.monotonic() - last

    def _request_stop(self) -> None:
        self._stopping.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the server has stopped; True if it has.

        Raises:
            RuntimeError: called before :meth:`start`.
            ValueError: a negative, NaN or infinite timeout.
        """
        if timeout is not None:
            _check_seconds("timeout", timeout)
        if self._life.state is State.NEW:
            raise RuntimeError("wait() called before start()")
        return self._stopped.wait(timeout)

    def shutdown(self) -> None:
        """Stop serving and release everything. Idempotent.

        Sessions get ``drain_timeout_seconds`` to finish the request they are
        serving; the env's ``close()`` gets ``close_timeout_seconds``. A
        second call, also one racing the first from another thread, returns
        at once.
        """
        if not self._life.begin_close():
            return
        try:
            self._shutdown()
        finally:
            self._life.finish_close()

    def close(self) -> None:
        """The same as :meth:`shutdown` (every rlmesh owner has a ``close()``). Idempotent."""
        self.shutdown()

    def _shutdown(self) -> None:
        self._life.forget()
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        deadline = time.monotonic() + self._drain_timeout
        with self._sessions_lock:
            sessions = list(self._sessions)
        for session in sessions:
            if not session.busy:
                # Wake it: closing the socket makes its liveness check fail.
                session.stream.close()
        for session in sessions:
            session.thread.join(max(deadline - time.monotonic(), 0.0))
            if session.thread.is_alive():
                log.warning("session %s did not finish within the drain timeout", session.id[:8])
                session.stream.close()
        self._source.close(self._close_timeout)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(1.0)
        if self._heartbeats is not None:
            self._heartbeats.join(1.0)
        self._stopped.set()

    def __enter__(self) -> EnvServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = {State.NEW: "idle", State.OPEN: "running"}.get(self._life.state, "stopped")
        return f"<EnvServer {self.env_contract.id} at {self.address if self._listener else '?'} {state}>"
