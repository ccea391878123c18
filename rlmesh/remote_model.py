"""``RemoteModel``: a served model (``Model.serve``) used wherever a Model is.

A :class:`RemoteModel` is a :class:`~rlmesh.models.ModelBase` whose
``predict`` and ``predict_batch`` corners are PREDICT requests to a
:class:`~rlmesh.model_server.ModelServer`: ``rlmesh.run(remote_model, env,
seeds=...)``, ``remote_model.run(env, ...)`` and ``remote_model.session(env)``
drive a local or remote env with it, one PREDICT per step (one per vector
step, with every lane's observation in one batch).

The observation goes inline in the request (through the session's request
ring on one host); the action comes back as the env's observations do, in a
leased slab block on one host, inline otherwise. ``rlmesh.numpy.RemoteModel``
and ``rlmesh.jax.RemoteModel`` take and return their backend's arrays.

Episodes: the runtime calls a model's ``reset()`` before every episode; a
RemoteModel forwards it with its next PREDICT (the served model's ``reset()``
runs first), so a stateful served policy starts every episode afresh, and an
unbatched PREDICT carries the episode's context (``episode_id``,
``episode_seed``) for a served corner that declares one.
"""

from __future__ import annotations

import types
from typing import Any

from ._lifecycle import Lifecycle, State
from .client import open_session
from .errors import ConnectError
from .models import ModelBase
from .net.address import resolve_address
from .net.framing import DEFAULT_MAX_FRAME
from .spaces._values import tuple_restorer
from .specs import EnvContract
from .wire.client_session import ClientSession
from .wire.codec import TailBuilder

__all__ = ["ENDPOINT_KEY", "RemoteModel", "RemoteModelBase"]

#: The contract metadata key of a model endpoint (see :mod:`rlmesh.model_server`).
ENDPOINT_KEY = "rlmesh.endpoint"


def _release_session(conn: ClientSession) -> None:
    # The finalizer of a RemoteModel never closed: its session only, never the model.
    conn.close(timeout=0)


class RemoteModelBase(ModelBase[Any, Any]):
    """A client of a served model; see the module docstring.

    Args:
        address: the model server's address (``"unix:///tmp/model.sock"``,
            ``"tcp://host:port"``, ``"host:port"``).
        host, port, path, transport: the address as helpers instead.
        connect_timeout_seconds: keep retrying the connection until this
            deadline (None: one attempt).
        request_timeout_seconds: the deadline of each predict (None: 300 s;
            0 or ``math.inf``: none).
        shared_memory: use shared memory when the server is on this host.
        max_message_bytes: the largest message accepted.
        spin: spin briefly for each answer before sleeping (None: ``RLMESH_SPIN``).
        auth_token: the server's shared secret (None: ``RLMESH_AUTH_TOKEN``, else none).
        on_episode_end, on_close: local callbacks, as for any Model.

    Raises:
        ConnectError: (a ConnectionError) the server cannot be reached, the
            handshake failed, or the endpoint serves an env, not a model.
        AuthenticationError: the server refused the auth token.
        VersionMismatch: the server speaks another protocol version.

    Lifetime:
        Connects in the constructor. :meth:`close` detaches from the server
        (which keeps serving); it is idempotent and the context manager calls
        it. A run or session does not close it (its ``close()`` is the
        connection's, not the model hook's), so one RemoteModel serves many
        runs. A close from another thread wins over a predict in flight, which
        raises ClosedError at once; every predict after close raises
        ClosedError. A RemoteModel never closed detaches when garbage
        collected, with a ``ResourceWarning``.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        path: str | None = None,
        transport: str | None = None,
        connect_timeout_seconds: float | None = None,
        request_timeout_seconds: float | None = None,
        shared_memory: bool = True,
        max_message_bytes: int = DEFAULT_MAX_FRAME,
        spin: bool | None = None,
        auth_token: str | None = None,
        on_episode_end: Any = None,
        on_close: Any = None,
    ) -> None:
        self._ensure_backend()
        conn, self._request_timeout = open_session(
            resolve_address(address, host=host, port=port, path=path, transport=transport),
            connect_timeout_seconds=connect_timeout_seconds,
            request_timeout_seconds=request_timeout_seconds,
            shared_memory=shared_memory,
            max_message_bytes=max_message_bytes,
            spin=spin,
            auth_token=auth_token,
        )
        self._setup(conn, on_episode_end, on_close)

    def _setup(self, conn: ClientSession, on_episode_end: Any, on_close: Any) -> None:
        """Take ``conn`` (a session with a model endpoint) as this model's; closes it if that fails.

        Raises:
            ConnectError: the endpoint serves an env, not a model.
        """
        try:
            contract = conn.contract
            if contract.metadata.get(ENDPOINT_KEY) != "model":
                raise ConnectError(
                    f"'{conn.address}' serves an env ({contract.id}), not a model: drive it with a "
                    "RemoteEnv, or connect RemoteModel to a Model.serve() address"
                )
            self._attach(conn, contract)
            super().__init__(on_episode_end=on_episode_end, on_close=on_close)
        except BaseException:
            conn.close()
            raise

    def _attach(self, conn: ClientSession, contract: EnvContract) -> None:
        self._conn = conn
        self._contract = contract
        self._address = str(conn.address)
        self._fix_action = tuple_restorer(contract.action_space)
        self._reset_pending = False
        self._observation_space: Any = None
        self._action_space: Any = None
        self._life = Lifecycle(f"the {type(self).__name__} connected to {conn.address}")
        self._life.watch(self, _release_session, conn)

    def _ensure_backend(self) -> None:
        """Raise ImportError if the backend's array library is missing."""

    # -- properties -------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The model server's address."""
        return self._address

    @property
    def model_contract(self) -> EnvContract:
        """The served model's contract: the spaces it declares."""
        return self._contract

    @property
    def metadata(self) -> types.MappingProxyType[str, Any]:
        """The served model's contract metadata (read-only)."""
        return types.MappingProxyType(self._contract.metadata)

    @property
    def observation_space(self) -> Any:
        """The observation space the served model declares, in this client's backend."""
        if self._observation_space is None:
            self._observation_space = self._contract.observation_space.to_space(self._bridge)
        return self._observation_space

    @property
    def action_space(self) -> Any:
        """The action space the served model declares, in this client's backend."""
        if self._action_space is None:
            self._action_space = self._contract.action_space.to_space(self._bridge)
        return self._action_space

    @property
    def data_plane(self) -> str:
        """How tensors travel: "shm" or "inline"."""
        return self._conn.data_plane

    @property
    def state(self) -> State:
        """OPEN, CLOSING or CLOSED (see :mod:`rlmesh._lifecycle`)."""
        return self._life.state

    @property
    def closed(self) -> bool:
        """True once :meth:`close` began."""
        return self._life.closed

    # -- the corners ------------------------------------------------------------------------

    def _remote(self, observation: Any, lanes: int, context: Any) -> Any:
        reset, self._reset_pending = self._reset_pending, False
        wire = self._bridge.encode(observation)
        try:
            answer = self._conn.predict(wire, TailBuilder(), lanes, reset, context, self._request_timeout)
        except BaseException:
            self._reset_pending = reset  # the served model did not see it: the next predict carries it
            raise
        action = answer.action
        if self._fix_action is not None:
            action = self._fix_action(action)
        return self._bridge.decode(action)

    def predict(self, observation: Any, context: Any = None) -> Any:
        """The served model's action for one observation.

        Raises:
            SpecError: (a ValueError) the observation does not fit the model's
                observation space; the session stays usable.
            RemoteError: the served model raised, or returned an action outside its space.
            OperationTimeout, BrokenError (the server died), ClosedError.
        """
        wire_context = None
        if isinstance(context, dict):
            seed = context.get("episode_seed")
            episode_id = context.get("episode_id")
            wire_context = {
                "episode_id": episode_id if isinstance(episode_id, str) else None,
                "episode_seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            }
        return self._remote(observation, 0, wire_context)

    def predict_batch(self, observations: Any) -> Any:
        """The served model's actions for a batch (every leaf's leading axis: the lanes).

        Raises:
            ValueError: the batch has no leaf with a lane axis to count.
            As :meth:`predict`.
        """
        return self._remote(observations, _lanes(observations), None)

    def reset(self) -> None:
        """A new episode begins: the served model's ``reset()`` runs before the next predict."""
        self._reset_pending = True

    def _closed(self) -> None:
        # A session ending: only the local callback. The connection stays for the
        # next run (close() is the connection's), and the served model's close()
        # runs when its server shuts down.
        if self._on_close is not None:
            self._on_close()

    def close(self) -> None:
        """Detach from the model server (it keeps serving) and release the connection. Idempotent."""
        if not self._life.begin_close():
            return
        try:
            self._life.forget()
            self._conn.close()
        finally:
            self._life.finish_close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._life.closed else self._conn.data_plane
        return f"<{type(self).__name__} {self._contract.id} at {self._address} ({state})>"


def _lanes(value: Any) -> int:
    """The lane count of a batch: the leading axis of its first array leaf, or a list's length."""
    if isinstance(value, dict):
        for item in value.values():
            return _lanes(item)
    elif isinstance(value, tuple):
        for item in value:
            return _lanes(item)
    elif isinstance(value, list):
        return len(value)
    else:
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) >= 1:
            return int(shape[0])
    raise ValueError("predict_batch needs observations with a leading lane axis")


class RemoteModel(RemoteModelBase):
    """A served model's client whose values are :class:`rlmesh.Tensor` leaves.

    See :class:`RemoteModelBase`.

    Example:
        >>> model = rlmesh.RemoteModel("unix:///tmp/model.sock")          # doctest: +SKIP
        >>> rlmesh.run(model, "CartPole-v1", seeds=[0]).mean_reward      # doctest: +SKIP
    """
