"""``ModelServer``: serve a model's predict to clients in other processes.

``Model.serve(address)`` (blocking) and ``Model.server(address)`` (a
:class:`ModelServer` to start or use as a context manager) put a model behind
the same session machinery as :class:`~rlmesh.server.EnvServer`: the same
listener, handshake, auth, channel (shared-memory rings on one host, frames
on the socket otherwise) and data plane. Only the requests differ: a client
(:class:`rlmesh.remote_model.RemoteModel`) sends PREDICT with an observation
(or a batch of them) and gets the action back (see
:class:`rlmesh.wire.protocol.Predict`).

The contract in the WELCOME carries the spaces the model declares
(:func:`model_contract`), with ``metadata["rlmesh.endpoint"] == "model"``.
Every observation is checked against the observation space before the model
sees it (a :class:`~rlmesh.errors.SpecError` for the client, the session goes
on), and every action against the action space before it goes back (a
:class:`~rlmesh.errors.RemoteError` naming the model). The model gets its
backend's values: NumPy arrays for ``rlmesh.numpy.Model``, JAX arrays for
``rlmesh.jax.Model``, :class:`~rlmesh.Tensor` leaves for ``rlmesh.Model``, as
it would in an in-process run.

One model object serves every session; its predict calls are serialised (one
at a time, whichever session asks), so a model need not be thread-safe. A
PREDICT whose ``reset`` flag is set runs the model's ``reset()`` first; the
model's ``close()`` and ``on_close`` run once, when the server shuts down.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from ._adapter import InlineSink, ShmSink, Sink, compile_decoder, compile_encoder
from .errors import ClosedError, ConnectError, InvalidActionError, SpecError
from .server import EnvServer, ServeOptions
from .specs import EnvContract
from .wire import protocol as P
from .wire.codec import TailBuilder

if TYPE_CHECKING:
    from .models import ModelBase
    from .wire.server_session import ServerSession

__all__ = ["ENDPOINT_KEY", "MAX_LANES", "ModelServer", "model_contract"]

log = logging.getLogger(__name__)

#: The contract metadata key that tells a model endpoint from an env endpoint.
ENDPOINT_KEY = "rlmesh.endpoint"

#: The most lanes a batched PREDICT may carry (the largest vector env a contract allows).
MAX_LANES = 1 << 16

#: Decoders and encoders compiled per lane count, kept for this many distinct counts.
_CACHE_LIMIT = 16

_NOT_AN_ENV = (
    "this endpoint serves a model (Model.serve), not an env: connect to it with RemoteModel "
    "and drive an env with rlmesh.run(remote_model, env)"
)


def model_contract(
    model: ModelBase[Any, Any], observation_space: Any = None, action_space: Any = None
) -> EnvContract:
    """The contract a served model declares: its observation and action spaces.

    The spaces come from the arguments, else from the model's
    ``observation_space`` / ``action_space`` attributes (class or instance),
    else from its ``spec`` when that is an :class:`~rlmesh.specs.EnvContract`.
    Each may be an rlmesh space, a SpaceSpec, a spec dict or a Gymnasium space.

    Raises:
        TypeError: a space is missing or of an unsupported kind.
        ValueError: a malformed space.
    """
    spec = getattr(model, "spec", None)
    obs = observation_space
    if obs is None:
        obs = getattr(model, "observation_space", None)
    if obs is None and isinstance(spec, EnvContract):
        obs = spec.observation_space
    act = action_space
    if act is None:
        act = getattr(model, "action_space", None)
    if act is None and isinstance(spec, EnvContract):
        act = spec.action_space
    if obs is None or act is None:
        missing = " and ".join(n for n, v in (("observation_space", obs), ("action_space", act)) if v is None)
        raise TypeError(
            f"a served model declares its spaces, and {type(model).__name__} has no {missing}: pass "
            "observation_space= and action_space= to serve()/server(), or set them on the model"
        )
    name = type(model).__name__
    return EnvContract(
        id=f"model:{name}"[:1024],
        observation_space=obs,
        action_space=act,
        metadata={ENDPOINT_KEY: "model"},
    )


def _reworded(exc: Exception, old: str, new: str) -> str:
    # The space checks of rlmesh._adapter speak of the env's observations and
    # actions; on a model endpoint the roles are the other way round.
    return str(exc).replace(old, new, 1)


class _ModelSource:
    """What a :class:`ModelServer` serves every session: one model, its contract, its predict lock."""

    def __init__(self, model: ModelBase[Any, Any], contract: EnvContract) -> None:
        self.model = model
        self.contract = contract
        # The served model sizes the session's memory with the spaces swapped
        # (requests carry observations, answers carry actions).
        self.sizing_contract = EnvContract(
            id=contract.id, observation_space=contract.action_space, action_space=contract.observation_space
        )
        self.lock = threading.Lock()
        self._closed = False
        self._cache_lock = threading.Lock()
        self._decoders: dict[int, Any] = {}
        self._encoders: dict[int, Any] = {}
        self._numpy_bridge: Any = None
        try:
            from .backends.numpy import BRIDGE, ensure_available

            ensure_available()
            self._numpy_bridge = BRIDGE
        except ImportError:
            pass  # without numpy, observations stay Tensors (the plain backend)

    def coders(self, lanes: int) -> tuple[Any, Any]:
        """The observation decoder and action encoder for ``lanes`` (0: unbatched)."""
        with self._cache_lock:
            decoder = self._decoders.get(lanes)
            encoder = self._encoders.get(lanes)
        if decoder is None or encoder is None:
            batch = lanes or None
            decoder = compile_decoder(self.contract.observation_space, batch)
            encoder = compile_encoder(self.contract.action_space, batch)
            with self._cache_lock:
                if len(self._decoders) >= _CACHE_LIMIT:
                    self._decoders.clear()
                    self._encoders.clear()
                self._decoders[lanes] = decoder
                self._encoders[lanes] = encoder
        return decoder, encoder

    def to_model(self, checked: Any) -> Any:
        """The checked observation in the model's backend's values."""
        bridge = self.model._bridge
        np_bridge = self._numpy_bridge
        if np_bridge is None:
            return bridge.decode(checked)  # the checks left Tensor leaves
        if bridge.name == np_bridge.name:
            return checked  # already writable NumPy copies
        return bridge.decode(np_bridge.encode(checked))

    def check_open(self) -> None:
        """Raise ClosedError once the server is shutting down."""
        if self._closed:
            raise ClosedError("the model server is shutting down")

    def close(self, close_timeout: float) -> None:
        """Close the model once (its ``close()`` and ``on_close``), at server shutdown. Idempotent."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.model._closed()
            except Exception:  # the model's failure to close is logged, not fatal
                log.exception("the served model's close() raised")


class _ModelHandler:
    """Serves one session's PREDICT requests (the wire session's :class:`RequestHandler`)."""

    def __init__(self, source: _ModelSource, session: ServerSession) -> None:
        self._source = source
        self._session = session
        self.sink: ShmSink | None = None

    @property
    def contract(self) -> EnvContract:
        """The model's contract (its spaces)."""
        return self._source.contract

    @property
    def sizing_contract(self) -> EnvContract:
        """The contract that sizes the session's rings and slots (spaces swapped)."""
        return self._source.sizing_contract

    def release(self) -> None:
        """Nothing to give back: the model outlives its sessions."""

    def _refuse(self, rid: int) -> bool:
        self._session.reply_error(rid, P.E_INVALID_ARGUMENT, None, _NOT_AN_ENV)
        return True

    def on_reset(self, rid: int, seed: Any, options: Any) -> bool:
        """A model endpoint has no env to reset: an ERROR, the session goes on."""
        return self._refuse(rid)

    def on_step(self, rid: int, action: Any) -> bool:
        """A model endpoint has no env to step: an ERROR, the session goes on."""
        return self._refuse(rid)

    def on_render(self, rid: int, env_index: int) -> bool:
        """A model endpoint has no env to render: an ERROR, the session goes on."""
        return self._refuse(rid)

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

    def on_predict(self, request: P.Predict) -> bool:
        """Check the observation, run the model's corner, check and send back the action."""
        session, source, rid, lanes = self._session, self._source, request.rid, request.lanes
        if lanes > MAX_LANES:
            message = f"a batched PREDICT carries at most {MAX_LANES} lanes, got {lanes}"
            session.reply_error(rid, P.E_INVALID_ARGUMENT, None, message)
            return True
        context = request.context
        if context is not None and not _valid_context(context):
            session.reply_error(rid, P.E_INVALID_ARGUMENT, None, f"malformed episode context {context!r}")
            return True
        decoder, encoder = source.coders(lanes)
        try:
            checked = decoder(request.observation)
        except InvalidActionError as exc:
            message = _reworded(exc, "invalid action", "invalid observation").replace(
                "the action space", "the model's observation space"
            )
            session.reply_error(rid, P.E_INVALID_OBSERVATION, exc, message)
            return True
        model = source.model
        corners = model._corners
        try:
            observation = source.to_model(checked)
            with source.lock:
                source.check_open()
                if request.reset:
                    model.reset()
                if lanes == 0:
                    action = corners.predict(observation, context)
                elif corners.predict_batch is not None:
                    action = corners.predict_batch(observation)
                else:
                    # No batched corner: predict gets the whole batch, as in an in-process run.
                    action = corners.predict(observation, None)
        except ClosedError:
            session.reply_error(rid, P.E_STOPPING, None, "the model server is shutting down")
            return False
        except Exception as exc:
            self._fail(rid, exc, f"{type(exc).__name__}: {exc}")
            return True
        sink, tail = self._sink()
        try:
            wire = encoder(model._bridge.encode(action), sink)
        except SpecError as exc:
            message = _reworded(
                exc, "the env produced an invalid observation", "the model returned an action"
            )
            self._fail(rid, exc, message.replace("the space has", "its action space has"))
            return True
        except Exception as exc:
            self._fail(rid, exc, f"the model returned an action that cannot be sent: {exc}")
            return True
        session.reply_ok(rid, [wire], tail)
        return True

    def _fail(self, rid: int, exc: BaseException, message: str) -> None:
        import traceback

        data = self._session.data
        if data is not None:
            data.take_back_unsent()
        error = P.Error.from_exception(rid, P.E_MODEL, exc, message, traceback.format_exc())
        self._session.reply(error.to_wire())


def _dial_host(address: str, timeout: float = 10.0) -> socket.socket:
    """Connect to a host's ``unix://`` address, retrying until ``timeout`` (a sandbox's dial-back).

    Raises:
        ValueError: not a unix:// address.
        ConnectError: not reachable by then.
    """
    if not address.startswith("unix://"):
        raise ValueError(f"RLMESH_DIAL must be a unix:// address, got {address!r}")
    path = address[len("unix://") :]
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(deadline - time.monotonic(), 0.1))
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            if time.monotonic() >= deadline:
                raise ConnectError(f"could not reach the host at {path}: {exc}") from exc
            time.sleep(0.05)
            continue
        sock.settimeout(None)
        return sock


def _valid_context(context: dict[Any, Any]) -> bool:
    episode_id, seed = context.get("episode_id"), context.get("episode_seed")
    return (
        len(context) <= 2
        and (episode_id is None or (type(episode_id) is str and len(episode_id) <= 256))
        and (seed is None or (type(seed) is int and seed >= 0))
    )


class ModelServer(EnvServer):
    """Serve a model's predict on a Unix or TCP socket.

    Args:
        model: the model (any :class:`~rlmesh.models.ModelBase`: ``rlmesh.Model``,
            ``rlmesh.numpy.Model``, ``rlmesh.jax.Model`` or a subclass).
        address: where to listen, as for :class:`~rlmesh.server.EnvServer`
            (default ``tcp://127.0.0.1:0``, a free port).
        host, port, path, transport: the address as helpers instead.
        options: :class:`~rlmesh.server.ServeOptions` (auth token, timeouts,
            shared memory, spinning; ``validation`` does not apply).
        observation_space, action_space: the spaces the model works in (see
            :func:`model_contract`).

    Lifetime: as :class:`~rlmesh.server.EnvServer`: binds in the constructor;
    :meth:`serve` blocks (SIGINT/SIGTERM stop it), :meth:`start` serves on a
    thread, :meth:`shutdown` (idempotent; also :meth:`close` and the context
    manager) ends the sessions and then closes the model once. A server
    never started and never shut down releases its listener when garbage
    collected, with a ``ResourceWarning``.

    Raises:
        ConnectError: the address cannot be bound.
        TypeError: ``model`` is not a Model, or its spaces are missing.
        ValueError: a malformed space; a TCP address beyond loopback without an auth token.
    """

    def __init__(
        self,
        model: ModelBase[Any, Any],
        address: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        path: str | None = None,
        transport: str | None = None,
        options: ServeOptions | None = None,
        observation_space: Any = None,
        action_space: Any = None,
    ) -> None:
        from .models import ModelBase

        if not isinstance(model, ModelBase):
            raise TypeError(f"ModelServer serves a Model, got {type(model).__name__}")
        self._model_contract = model_contract(model, observation_space, action_space)
        super().__init__(
            model, address, host=host, port=port, path=path, transport=transport, options=options
        )
        self._life.what = f"the ModelServer at {self.address}"

    def serve(self) -> None:
        """Serve until stopped (SIGINT or SIGTERM stop it gracefully).

        In a sandbox (:class:`rlmesh.sandbox.model.SandboxModel` sets
        ``RLMESH_DIAL=unix:///...``), the server dials its host at that
        address instead and serves that one session (the host listens, so
        the container needs no writable host path); it stops when the
        session ends.

        Raises:
            RuntimeError: the server was already started.
            ClosedError: (a RuntimeError) the server was shut down.
            ConnectError: ``RLMESH_DIAL`` is set and the host cannot be reached.
        """
        dial = os.environ.get("RLMESH_DIAL")
        if not dial:
            super().serve()
            return
        self.serve_connection(_dial_host(dial))

    def _make_source(self, env: Any, *args: Any, **kwargs: Any) -> Any:
        """The model as every session's source (the env server's options do not apply)."""
        return _ModelSource(env, self._model_contract)

    def _open_handler(self, session: ServerSession) -> _ModelHandler:
        """The handler of a new client (refused once the server is stopping).

        Raises:
            ClosedError: the server is shutting down.
        """
        source: _ModelSource = self._source  # type: ignore[assignment]
        source.check_open()
        return _ModelHandler(source, session)

    @property
    def model(self) -> ModelBase[Any, Any]:
        """The served model."""
        source: _ModelSource = self._source  # type: ignore[assignment]
        return source.model

    @property
    def contract(self) -> EnvContract:
        """The served model's contract (its spaces); also :attr:`env_contract`."""
        return self._model_contract

    def __enter__(self) -> ModelServer:
        return self

    def __repr__(self) -> str:
        return f"<ModelServer {self._model_contract.id} at {self.address} {self.state.name.lower()}>"
