"""``RemoteEnvBase``: what every remote client shares.

The dial and handshake, deadlines (``request_timeout_seconds`` or a per-call
``timeout=``), the contract and spaces, reset, render, close and the
lifecycle; :class:`rlmesh.client.RemoteEnv` and
:class:`rlmesh.client.RemoteVectorEnv` add their step. Split from
``rlmesh.client``, which re-exports these names; ``RemoteEnvBase.__module__``
stays ``rlmesh.client``, where users import it from.
"""

from __future__ import annotations

import secrets
import time
import types
import uuid
from typing import Any, Generic, TypeVar

from ._bridge import IDENTITY, Bridge
from ._deadline import check_timeout
from ._lifecycle import Lifecycle, State
from .net.address import Address, resolve_address
from .net.framing import DEFAULT_MAX_FRAME
from .spaces._values import lane_stacker, tuple_restorer
from .specs import EnvContract
from .wire.client_session import ClientSession
from .wire.protocol import auth_token_from_env

DEFAULT_REQUEST_TIMEOUT = 300.0

ObsT = TypeVar("ObsT")
ActT = TypeVar("ActT")


def _seconds(name: str, value: float | None, default: float | None) -> float | None:
    """Convert a public timeout keyword to the library's one meaning, once.

    The published API: None takes the default, 0 or inf mean no deadline.
    Inside rlmesh: None waits forever, 0 never waits, a positive number is a
    deadline (see :mod:`rlmesh._deadline`).

    Raises:
        TypeError: not a number of seconds.
        ValueError: negative or NaN.
    """
    if value is None:
        return default
    seconds = check_timeout(value, name)
    return None if seconds == 0 else seconds


def _release_session(conn: ClientSession) -> None:
    # The finalizer of a client never closed: its session only, never the client.
    # A timeout of 0: a goodbye that can go at once goes, nothing waits.
    conn.close(timeout=0)


def uuid7() -> str:
    """A UUIDv7 string: 48 bits of Unix milliseconds, then random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    value = (
        (ms & ((1 << 48) - 1)) << 80
        | 0x7 << 76
        | (rand >> 68 & 0xFFF) << 64
        | 0b10 << 62
        | (rand & ((1 << 62) - 1))
    )
    return str(uuid.UUID(int=value))


def open_session(
    address: Address,
    *,
    connect_timeout_seconds: float | None,
    request_timeout_seconds: float | None,
    shared_memory: bool,
    max_message_bytes: int,
    spin: bool | None,
    auth_token: str | None,
) -> tuple[ClientSession, float | None]:
    """Dial ``address`` and handshake, with the public clients' timeout and token rules.

    Returns the session and its request timeout (``request_timeout_seconds``
    checked, with the default applied). Every client constructor (env,
    vector, model) opens its session here.

    Raises:
        ValueError: a bad timeout. ConnectError, AuthenticationError,
            VersionMismatch, BusyError: the dial or the handshake failed.
    """
    connect_timeout = _seconds("connect_timeout_seconds", connect_timeout_seconds, None)
    request_timeout = _seconds("request_timeout_seconds", request_timeout_seconds, DEFAULT_REQUEST_TIMEOUT)
    conn = ClientSession(
        address,
        connect_timeout=connect_timeout,
        request_timeout=request_timeout,
        shared_memory=shared_memory,
        max_message_bytes=max_message_bytes,
        spin=spin,
        auth_token=auth_token_from_env(auth_token),
    )
    return conn, request_timeout


class RemoteEnvBase(Generic[ObsT, ActT]):
    """The behaviour shared by every remote client (single or vector, any backend).

    Args:
        address: ``"tcp://host:port"``, ``"host:port"`` or ``"unix:///path.sock"``.
        host, port, path, transport: the address as helpers instead.
        connect_timeout_seconds: keep retrying the connection until this
            deadline (None: one attempt).
        request_timeout_seconds: the default deadline of each call (None:
            300 s; 0 or ``math.inf``: none).
        shared_memory: use shared memory when the server is on this host
            (False forces inline copies through the socket).
        max_message_bytes: the largest message accepted.
        spin: whether to spin briefly for each answer before sleeping (it
            arrives sooner when a core is free). None: ``RLMESH_SPIN`` (on
            unless it is 0). It stops by itself while the machine has more
            runnable processes than cores.
        auth_token: the server's shared secret (``ServeOptions(auth_token=...)``),
            sent at the handshake. None: ``RLMESH_AUTH_TOKEN`` if set, else none.

    Raises:
        ConnectError: (a ConnectionError) the server cannot be reached or the
            handshake failed.
        AuthenticationError: (a ConnectError) the server refused this
            client's auth token, or its lack of one.
        VersionMismatch: the server speaks another protocol version.
        BusyError: the server serves one env object and has a client already.
        ValueError: the endpoint serves the wrong number of envs for this
            class, or a bad argument.

    Lifetime:
        :meth:`close` detaches (the server keeps serving); it is idempotent
        and the context manager calls it. A close from another thread wins
        over a call in flight, which raises ClosedError at once; every call
        after close raises ClosedError. A client never closed detaches when
        garbage collected, with a ``ResourceWarning``. Observations you still
        hold stay valid after close.
    """

    _bridge: Bridge = IDENTITY
    _vector = False

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
        self._attach(conn)

    def _attach(self, conn: ClientSession) -> None:
        self._conn = conn
        contract = conn.contract
        try:
            self._check_arity(contract)
        except BaseException:
            conn.close()
            raise
        self._life = Lifecycle(f"the {type(self).__name__} connected to {conn.address}")
        self._life.watch(self, _release_session, conn)
        self._contract = contract
        self._stack_actions = lane_stacker(contract.action_space)
        self._address = str(conn.address)
        self._env_id = uuid7()
        self._observation_space: Any = None
        self._action_space: Any = None
        obs_spec = contract.observation_space
        self._fix_obs = tuple_restorer(obs_spec)
        self._episode_ids = [uuid7() for _ in range(contract.num_envs)]

    # -- hooks for subclasses --------------------------------------------------------

    def _ensure_backend(self) -> None:
        """Raise ImportError if the backend's array library is missing."""

    def _check_arity(self, contract: EnvContract) -> None:
        if contract.num_envs > 1:
            raise ValueError(
                f"Endpoint '{self._conn.address}' serves {contract.num_envs} environments. "
                "Use RemoteVectorEnv instead."
            )

    # -- properties -------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The normalised address of the endpoint."""
        return self._address

    @property
    def env_id(self) -> str:
        """This connection's id (a UUIDv7)."""
        return self._env_id

    @property
    def env_contract(self) -> EnvContract:
        """The served env's contract."""
        return self._contract

    @property
    def spec(self) -> EnvContract:
        """Alias of :attr:`env_contract` (the published docs' name)."""
        return self._contract

    @property
    def render_mode(self) -> str | None:
        """The served env's render mode."""
        return self._contract.render_mode

    @property
    def metadata(self) -> types.MappingProxyType[str, Any]:
        """The served env's metadata, read-only."""
        return types.MappingProxyType(dict(self._contract.metadata))

    @property
    def num_envs(self) -> int:
        """How many envs the endpoint serves (1 for a single env)."""
        return self._contract.num_envs

    @property
    def data_plane(self) -> str:
        """How tensors travel: "shm" (shared memory) or "inline" (copied in frames)."""
        return self._conn.data_plane

    @property
    def state(self) -> State:
        """OPEN, CLOSING or CLOSED (see :mod:`rlmesh._lifecycle`)."""
        return self._life.state

    @property
    def closed(self) -> bool:
        """True once closing began."""
        return self._life.closed

    @property
    def observation_space_spec(self) -> Any:
        """The observation space's SpaceSpec (per lane for vector endpoints)."""
        return self._contract.observation_space

    @property
    def action_space_spec(self) -> Any:
        """The action space's SpaceSpec (per lane for vector endpoints)."""
        return self._contract.action_space

    @property
    def observation_space(self) -> Any:
        """The observation space, sampling this client's backend values."""
        if self._observation_space is None:
            self._observation_space = self._contract.observation_space.to_space(self._bridge)
        return self._observation_space

    @property
    def action_space(self) -> Any:
        """The action space, sampling this client's backend values."""
        if self._action_space is None:
            self._action_space = self._contract.action_space.to_space(self._bridge)
        return self._action_space

    # -- calls -------------------------------------------------------------------------------

    def _timeout(self, timeout: float | None) -> float | None:
        return self._request_timeout if timeout is None else _seconds("timeout", timeout, None)

    def _obs(self, wire: Any) -> Any:
        if self._fix_obs is not None:
            wire = self._fix_obs(wire)
        return self._bridge.decode(wire)

    def reset(
        self,
        *,
        seed: int | list[int] | None = None,
        options: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> tuple[ObsT, dict[str, Any]]:
        """Start a new episode (every lane, for vector endpoints).

        Args:
            seed: a seed, or (vector endpoints) a list of per-lane seeds.
            options: passed to the env's ``reset``; must be metadata
                (see :func:`rlmesh.sanitize_metadata`).
            timeout: this call's deadline in seconds.

        Returns:
            ``(observation, info)``; ``info`` gains ``episode_ids``.

        Raises:
            RemoteError: the env raised. OperationTimeout, BrokenError,
            ClosedError: see the class. ValueError/TypeError: bad arguments.
        """
        from .values import encode_metadata

        if seed is not None and not _seed_ok(seed):
            raise ValueError(f"seed must be a non-negative int or a list of them, got {seed!r}")
        wire_options = encode_metadata(options) if options is not None else None
        _, obs, info = self._conn.reset(seed, wire_options, self._timeout(timeout))
        self._episode_ids = [uuid7() for _ in range(self._contract.num_envs)]
        self._pending_new_ids: list[int] = []
        info = dict(info) if isinstance(info, dict) else {}
        info.setdefault("episode_ids", list(self._episode_ids))
        return self._obs(obs), info

    def render(self, *, env_index: int = 0, timeout: float | None = None) -> Any:
        """Render a frame: a tensor of the env's own dtype and shape (no PNG, no cast).

        Args:
            env_index: which lane to render (vector endpoints).
            timeout: this call's deadline in seconds.

        Returns:
            The frame as this backend's array, a string for ``ansi`` mode, a
            list of frames for ``*_list`` modes, or None.

        Raises:
            ValueError: ``env_index`` is out of range. RemoteError: the env raised.
        """
        if isinstance(env_index, bool) or not isinstance(env_index, int):
            raise TypeError("env_index must be an int")
        if not 0 <= env_index < self._contract.num_envs:
            raise ValueError(
                f"env_index {env_index} is out of range: the endpoint serves {self._contract.num_envs} "
                f"environment{'s' if self._contract.num_envs > 1 else ''}"
            )
        frame = self._conn.render(env_index, self._timeout(timeout)).frame
        return None if frame is None else self._bridge.decode(frame)

    def shutdown(self, reason: str = "owner shutdown", *, timeout: float | None = None) -> bool:
        """Ask the server to stop; True if it agreed (``allow_remote_shutdown``).

        Raises:
            OperationTimeout, BrokenError, ClosedError.
        """
        return self._conn.shutdown(str(reason), self._timeout(timeout)).accepted

    def close(self) -> None:
        """Detach from the server, which keeps serving. Idempotent.

        A call in flight in another thread raises ClosedError at once.
        """
        if not self._life.begin_close():
            return
        try:
            self._life.forget()
            self._conn.close()  # with the goodbye's full timeout, unlike the finalizer's
        finally:
            self._life.finish_close()

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.data_plane
        return f"<{type(self).__name__} {self._contract.id} at {self._address} {state}>"


def _seed_ok(seed: Any) -> bool:
    if type(seed) is int:
        return seed >= 0
    return isinstance(seed, list) and bool(seed) and all(type(s) is int and s >= 0 for s in seed)


# Public as rlmesh.client.RemoteEnvBase: reprs and docs name that module.
RemoteEnvBase.__module__ = "rlmesh.client"
