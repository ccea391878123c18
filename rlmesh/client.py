"""Remote clients: drive a served environment from another process.

:class:`RemoteEnv` (one env) and :class:`RemoteVectorEnv` (a vector env)
connect and handshake in their constructor. Tensor leaves arrive as
:class:`rlmesh.Tensor` here; ``rlmesh.numpy`` and ``rlmesh.jax`` subclass
these clients with their backend's arrays. What both share (dial, handshake,
deadlines, reset, render, close) is :class:`RemoteEnvBase`, in :mod:`rlmesh._client_base`.

When the server shares our /dev/shm (a Unix socket, or TCP to this host after
a probe), requests and responses travel through shared-memory rings and
observations arrive as zero-copy views of the server's slab; a view holds a
lease on its block until every array made from it is gone. Otherwise tensors
are copied inline in socket frames.

Every call has a deadline: ``request_timeout_seconds`` (default 300 s) or a
per-call ``timeout=``. A server that dies is noticed within 50 ms on a Unix
socket (its socket closes), whatever the deadline.
"""

from __future__ import annotations

import logging
import secrets
import time
import types
from collections.abc import Callable
from typing import Any

# The base every client shares lives in its own module; the names are
# re-exported here, where they were first defined.
from ._client_base import (
    DEFAULT_REQUEST_TIMEOUT as DEFAULT_REQUEST_TIMEOUT,
    ActT as ActT,
    ObsT as ObsT,
    RemoteEnvBase as RemoteEnvBase,
    _release_session as _release_session,
    _seconds as _seconds,
    _seed_ok as _seed_ok,
    open_session as open_session,
    uuid7 as uuid7,
)
from ._deadline import check_timeout
from .errors import RLMeshError
from .net.address import resolve_address
from .net.framing import DEFAULT_MAX_FRAME
from .specs import EnvContract
from .tensor import Tensor
from .wire.client_session import ClientSession
from .wire.codec import TailBuilder
from .wire.step_codec import StepLayout

__all__ = ["RemoteEnv", "RemoteEnvBase", "RemoteVectorEnv", "RemoteVectorEnvBase", "dial"]

log = logging.getLogger(__name__)

#: Default deadline of a request when the caller gives none.
#: Wire values that cannot hold a tensor; their STEP needs no tail.
_SCALARS = frozenset((int, float, bool, str))
#: The tail of every scalar action's STEP: nothing is ever added to it (a scalar holds no tensor).
_EMPTY_TAIL = TailBuilder()


class RemoteEnv(RemoteEnvBase[Any, Any]):
    """A client for one served environment; tensor leaves are :class:`rlmesh.Tensor`.

    See :class:`RemoteEnvBase` for the constructor.

    Example:
        >>> env = RemoteEnv("unix:///tmp/cartpole.sock")      # doctest: +SKIP
        >>> obs, info = env.reset(seed=42)                     # doctest: +SKIP
        >>> obs, reward, terminated, truncated, info = env.step(0)  # doctest: +SKIP
        >>> env.close()                                        # doctest: +SKIP
    """

    def step(
        self, action: Any, *, timeout: float | None = None
    ) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Advance one step.

        Args:
            action: an element of the action space, in this client's backend's values.
            timeout: this call's deadline in seconds.

        Returns:
            ``(observation, reward, terminated, truncated, info)``; reward and
            flags are Python scalars. ``info`` gains ``episode_ids`` and, when
            the episode ended, ``completed_episodes = 1`` (unless the env set
            those keys itself).

        Raises:
            InvalidActionError: (a ValueError) the action does not fit the
                action space; the session stays usable.
            RemoteError: the env raised; the server keeps serving.
            OperationTimeout, BrokenError, ClosedError.
        """
        # A Python int (a Discrete action) is its own wire value in every backend.
        wire = action if type(action) is int else self._bridge.encode(action)
        seconds = self._request_timeout if timeout is None else _seconds("timeout", timeout, None)
        layout = self._step_layout
        if layout is not None and (
            type(wire) is int
            if layout.action_discrete
            else type(wire) is Tensor
            and wire._shape == layout.action_shape
            and wire._dtype == layout.action_dtype
        ):
            # The fixed-shape step codec (rlmesh.wire.step_codec): no msgpack either way.
            result = self._conn.step_compact(wire, seconds)
            if type(result) is tuple:
                _, reward, terminated, truncated, obs = result
                info: dict[str, Any] = {"episode_ids": list(self._episode_ids)}
                if terminated or truncated:
                    info["completed_episodes"] = 1
                    self._episode_ids = [uuid7()]
                return self._compact_obs(obs), reward, terminated, truncated, info
            _, _, obs, reward, terminated, truncated, info = result
        else:
            # A scalar action (Discrete, Text) holds no tensor: no tail to collect one.
            tail = _EMPTY_TAIL if type(wire) in _SCALARS else TailBuilder()
            _, _, obs, reward, terminated, truncated, info = self._conn.step(wire, tail, seconds)
        # The info was decoded for this response alone: it is ours to extend, no copy.
        if type(info) is not dict:
            info = {}
        if "episode_ids" not in info:
            info["episode_ids"] = list(self._episode_ids)
        if terminated or truncated:
            info.setdefault("completed_episodes", 1)
            self._episode_ids = [uuid7()]
        if self._fix_obs is not None:
            obs = self._fix_obs(obs)
        return self._bridge.decode(obs), float(reward), bool(terminated), bool(truncated), info

    def _attach(self, conn: ClientSession) -> None:
        super()._attach(conn)
        layout = self._step_layout = conn.step_layout
        self._compact_obs: Callable[[Any], Any] = _identity
        if layout is not None and not layout.obs_discrete:
            self._compact_obs = self._compact_decoder(layout)

    def _compact_decoder(self, layout: StepLayout) -> Callable[[bytearray], Any]:
        """How a compact OK's observation bytes (a fresh bytearray, ours) become this client's value."""
        dtype, shape, bridge = layout.obs_dtype, layout.obs_shape, self._bridge
        assert dtype is not None
        if bridge.name == "numpy":
            from .backends.numpy import numpy_dtype

            try:
                np_dtype = numpy_dtype(dtype.name)
            except ImportError:
                pass
            else:
                import numpy

                frombuffer = numpy.frombuffer
                # A writable array over the bytearray itself: no second copy.
                return lambda data: frombuffer(data, np_dtype).reshape(shape)
        if bridge.name == "jax":
            from .backends.jax import bytes_importer

            make = bytes_importer(shape, dtype.name)
            if make is not None:
                return make  # one copy, straight from the bytes into a jax.Array
        # One leaf: straight to the bridge's tensor conversion where it has one (a copy into
        # an aligned Tensor, then, for JAX, a DLPack import of that fresh memory).
        decode = getattr(bridge, "decode_tensor", bridge.decode)
        return lambda data: decode(Tensor(data, shape, dtype))


class RemoteVectorEnvBase(RemoteEnvBase[ObsT, ActT]):
    """A client for a vector endpoint (``num_envs >= 2``).

    Observations arrive batched: tensor leaves of shape ``(num_envs, ...)``
    (Discrete leaves too, as int64 arrays, as Gymnasium returns them);
    rewards are float64 and terminations/truncations bool arrays of length
    ``num_envs``. ``observation_space`` and ``action_space`` are the
    per-lane spaces (aliases of ``single_*``).
    """

    _vector = True

    def _check_arity(self, contract: EnvContract) -> None:
        if contract.num_envs < 2:
            raise ValueError(
                f"Endpoint '{self._conn.address}' serves a single environment. Use RemoteEnv instead."
            )

    @property
    def single_observation_space(self) -> Any:
        """The per-lane observation space."""
        return self.observation_space

    @property
    def single_action_space(self) -> Any:
        """The per-lane action space."""
        return self.action_space

    @property
    def autoreset_mode(self) -> str:
        """The endpoint's autoreset mode: "NextStep", "SameStep" or "Disabled"."""
        return self._contract.autoreset_mode

    @property
    def metadata(self) -> types.MappingProxyType[str, Any]:
        """The served env's metadata; ``autoreset_mode`` is Gymnasium's enum when importable."""
        data = dict(self._contract.metadata)
        mode = data.get("autoreset_mode")
        if isinstance(mode, str):
            try:
                from gymnasium.vector import AutoresetMode

                data["autoreset_mode"] = AutoresetMode(mode)
            except (ImportError, ValueError):
                pass
        return types.MappingProxyType(data)

    def _encode_actions(self, actions: Any) -> Any:
        n = self._contract.num_envs
        if isinstance(actions, (list, tuple)):
            if len(actions) != n:
                raise ValueError(f"expected {n} batched values, got {len(actions)}")
            lanes = [self._bridge.encode(a) for a in actions]
            return self._stack_actions(lanes)
        length = getattr(actions, "shape", None)
        if length is not None and len(length) >= 1 and length[0] != n:
            raise ValueError(f"expected {n} batched values, got {length[0]}")
        return self._bridge.encode(actions)

    # -- the vector fast path (rlmesh.vector) ---------------------------------------------------

    _lanes: Any = None
    #: Makes the fast path's new episode ids (set on attach).
    _new_ids: _EpisodeIds

    def _attach(self, conn: ClientSession) -> None:
        super()._attach(conn)
        self._lanes = None
        self._pending_new_ids = []
        self._new_ids = _EpisodeIds()
        # (shape, dtype name) -> this backend's maker of arrays of that kind (see _array).
        self._array_makers: dict[tuple[Any, ...], Callable[[Any], Any] | None] = {}
        taken = conn.take_vector()
        if taken is None:
            return
        offer, segment = taken
        try:
            from .vector.lanes import Lanes

            self._lanes = Lanes.attach(
                offer, segment, self._contract, copy=self._bridge.name == "numpy", check=self._fast_check
            )
        except ImportError:
            segment.close_when_unpinned()  # no numpy here: the session relays every step
        except RLMeshError as exc:
            # Lanes.attach closed the segment; the session relays every step.
            log.warning("the vector fast path is unavailable (%s); stepping through the server", exc)

    def _fast_check(self) -> None:
        # Runs every 50 ms while a fast-path call sleeps: a closed client, or a server gone.
        self._life.check_open()
        self._conn.channel.peer_check()

    @property
    def fast_path(self) -> bool:
        """True when steps go straight to the server's worker processes (:mod:`rlmesh.vector`)."""
        return self._lanes is not None

    def _array(self, value: Any) -> Any:
        """A fresh numpy array (ours: a copy) as this backend's array (numpy: itself)."""
        if self._bridge.name == "numpy":
            return value
        # The dtype itself, not its name, keys the cache: '>f8' and '<f8' share a name.
        key = (value.shape, value.dtype)
        make = self._array_makers.get(key, _UNSET)
        if make is _UNSET:
            make = self._array_makers[key] = self._array_maker(*key)
        if make is not None:
            return make(value)
        return self._bridge.decode(Tensor.wrap(value, value.shape, value.dtype.name))

    def _array_maker(self, shape: tuple[int, ...], dtype: Any) -> Callable[[Any], Any] | None:
        """A faster way than the bridge's for this backend to make arrays of this kind, if it has one."""
        if self._bridge.name == "jax" and dtype.isnative:
            from .backends.jax import array_importer

            # Committed to the CPU, as the DLPack import it replaces makes them.
            return array_importer(shape, dtype.name, committed=True)
        return None

    def _track(self, lanes: list[int], done: list[int], info: dict[str, Any]) -> dict[str, Any]:
        """Episode ids of ``lanes`` (one step each) and ``completed_episodes``; ``done`` indexes ``lanes``."""
        mode = self._contract.autoreset_mode
        pending = self._pending_new_ids
        if pending:
            renew = set(pending).intersection(lanes)
            for lane in renew:
                self._episode_ids[lane] = self._new_ids()
            self._pending_new_ids = [lane for lane in pending if lane not in renew]
        self._renew_restarted(lanes, info)
        ended = [lanes[i] for i in done]
        if len(lanes) == self._contract.num_envs:
            info.setdefault("episode_ids", list(self._episode_ids))
        else:
            info.setdefault("episode_ids", [self._episode_ids[lane] for lane in lanes])
        info.setdefault("completed_episodes", len(ended))
        if mode == "SameStep":
            for lane in ended:
                self._episode_ids[lane] = self._new_ids()
        elif mode == "NextStep":
            self._pending_new_ids = self._pending_new_ids + ended
        return info

    def _renew_restarted(self, lanes: Any, info: dict[str, Any]) -> None:
        """New episode ids for the lanes a restarted worker reset (``info["rlmesh_restarted"]``)."""
        flags = info.get("rlmesh_restarted")
        if flags is None:
            return
        mask = info.get("_rlmesh_restarted", flags)
        restarted = [
            lanes[pos]
            for pos, (flag, has) in enumerate(zip(_flags(flags), _flags(mask), strict=False))
            if flag and has
        ]
        for lane in restarted:
            self._episode_ids[lane] = self._new_ids()
        if restarted:
            self._pending_new_ids = [lane for lane in self._pending_new_ids if lane not in restarted]

    def _track_all(self, done: list[int], info: dict[str, Any]) -> dict[str, Any]:
        """:meth:`_track` for a step of every lane (the fast path's step): no lane lists to filter."""
        ids = self._episode_ids
        new_id = self._new_ids
        if self._pending_new_ids:
            for lane in self._pending_new_ids:
                ids[lane] = new_id()
            self._pending_new_ids = []
        if "rlmesh_restarted" in info:
            self._renew_restarted(range(len(ids)), info)
        info.setdefault("episode_ids", list(ids))
        info.setdefault("completed_episodes", len(done))
        mode = self._contract.autoreset_mode
        if mode == "NextStep":
            self._pending_new_ids = done
        elif mode == "SameStep":
            for lane in done:
                ids[lane] = new_id()
        return info

    def _fast_result(self, result: Any, done: list[int]) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        obs, rewards, terminated, truncated, info = result
        info = self._track_all(done, info)
        if self._bridge.name == "numpy":
            return obs, rewards, terminated, truncated, info
        obs = self._bridge.decode(obs)
        return obs, self._array(rewards), self._array(terminated), self._array(truncated), info

    def _fast_lanes(self, what: str) -> Any:
        lanes = self._lanes
        if lanes is None:
            raise NotImplementedError(
                f"{what} needs the vector fast path: a vector endpoint with worker processes "
                "(EnvServer(..., num_envs=N) with a Gymnasium id or a module-level factory) on this host"
            )
        return lanes

    def reset(  # type: ignore[override]
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """Reset every lane, or the lanes of ``options["reset_mask"]``.

        Args:
            seed: None, an int (lane i gets ``seed + i``) or a list of per-lane seeds
                (None entries allowed on the fast path).
            options: passed to every lane's reset; ``options["reset_mask"]`` (a
                numpy bool array of shape ``(num_envs,)``) resets only those lanes.
            timeout: this call's deadline in seconds.

        Returns:
            ``(observations, infos)``; ``infos`` gains ``episode_ids``.

        Raises:
            ValueError, TypeError: bad seeds or mask (as Gymnasium's SyncVectorEnv).
            RemoteError, WorkerError, OperationTimeout, BrokenError, ClosedError.
        """
        lanes = self._lanes
        if lanes is None:
            return super().reset(seed=seed, options=options, timeout=timeout)  # type: ignore[arg-type]
        self._life.check_open()
        obs, info = lanes.reset(seed, options, self._timeout(timeout))
        mask = options.get("reset_mask") if isinstance(options, dict) else None
        reset_lanes = range(self._contract.num_envs) if mask is None else [i for i, m in enumerate(mask) if m]
        for lane in reset_lanes:
            self._episode_ids[lane] = self._new_ids()
        self._pending_new_ids = [lane for lane in self._pending_new_ids if lane not in set(reset_lanes)]
        info.setdefault("episode_ids", list(self._episode_ids))
        if self._bridge.name != "numpy":
            obs = self._bridge.decode(obs)
        return obs, info

    def step_async(self, actions: Any) -> None:
        """Send a step's actions and return at once; :meth:`step_wait` collects the results.

        The request is on its way when this returns, on every kind of
        endpoint: on the fast path the workers step while the caller
        computes; otherwise the STEP request is sent to the server, which
        steps while the caller computes. One step in flight per client: any
        other call but :meth:`poll`, :meth:`step_wait` and :meth:`close`
        raises ValueError until it is collected.

        Raises:
            ValueError: a step already in flight, or the wrong number of actions.
            OperationTimeout, BrokenError, ClosedError.
        """
        self._life.check_open()
        lanes = self._lanes
        if lanes is not None:
            lanes.start_step(actions)
            return
        self._conn.begin_step(self._encode_actions(actions), TailBuilder())

    def step_wait(self, *, timeout: float | None = None) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """The results of the step :meth:`step_async` sent, as :meth:`step` returns them.

        Off the fast path, an OperationTimeout leaves the step in flight: a
        later call collects it (:meth:`poll` says when it is in).

        Raises:
            ValueError: no step in flight. As :meth:`step`.
        """
        self._life.check_open()
        lanes = self._lanes
        if lanes is not None:
            result, done = lanes.finish_step(self._timeout(timeout))
            return self._fast_result(result, done)
        return self._sync_result(self._conn.finish_step(self._timeout(timeout)))

    def poll(self, timeout: float | None = 0.0, *, min_envs: int | None = None) -> bool:
        """Whether results are in: True when :meth:`step_wait` (or :meth:`recv`) would not wait.

        A readiness probe for stepping many clients at once: True also when
        collecting would raise at once (a server or worker lost, an env
        error). It consumes nothing.

        Args:
            timeout: seconds to wait for the results: 0 (the default) looks
                and returns; None waits until they are in.
            min_envs: with lanes sent by :meth:`send`, how many lanes must be
                ready (default: every lane sent), as :meth:`recv` counts them.

        Raises:
            ValueError: nothing in flight (no step_async, no send), or a bad ``min_envs``.
            ClosedError, BusyError.
        """
        self._life.check_open()
        seconds = None if timeout is None else check_timeout(timeout, "timeout")
        lanes = self._lanes
        if lanes is not None:
            return bool(lanes.poll(seconds, min_envs))
        if min_envs is not None:
            raise ValueError("min_envs is for lanes sent with send() (the fast path)")
        return self._conn.poll(seconds)

    def send(self, actions: Any, env_ids: Any = None) -> None:
        """Send actions to some lanes (default: all) and return at once (the fast path only).

        Args:
            actions: ``len(env_ids)`` actions, batched, in ``env_ids`` order.
            env_ids: lane indices, none of them sent and not yet received.

        Raises:
            ValueError: out-of-range or repeated ``env_ids``, lanes in flight,
                the wrong number of actions.
            NotImplementedError: the endpoint has no fast path.
        """
        self._life.check_open()
        self._fast_lanes("send()").send(actions, env_ids)

    def recv(
        self, min_envs: int | None = None, *, timeout: float | None = None
    ) -> tuple[Any, Any, Any, Any, dict[str, Any], Any]:
        """The results of the lanes ready first (at least ``min_envs``; default: every lane sent).

        Returns:
            ``(observations, rewards, terminations, truncations, infos, env_ids)``
            over the lanes returned, in ascending lane order; a lane not
            returned now is returned by a later call (nothing is lost), and
            lanes of a slow worker never hold back the others.

        Raises:
            ValueError: nothing sent, or ``min_envs`` out of range.
            RemoteError, WorkerError, OperationTimeout, BrokenError, ClosedError.
            NotImplementedError: the endpoint has no fast path.
        """
        self._life.check_open()
        lanes = self._fast_lanes("recv()")
        obs, rewards, terminated, truncated, info, ids = lanes.recv(min_envs, self._timeout(timeout))
        got = ids.tolist()
        done = (terminated | truncated).nonzero()[0].tolist()
        info = self._track(got, done, info)
        if self._bridge.name != "numpy":
            obs = self._bridge.decode(obs)
        arr = self._array
        return obs, arr(rewards), arr(terminated), arr(truncated), info, arr(ids)

    def close(self) -> None:
        """Detach from the server (which reaps this session's workers). Idempotent."""
        lanes = self._lanes
        if lanes is not None:
            lanes.close()
        super().close()

    def step(
        self, actions: Any, *, timeout: float | None = None
    ) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Advance every lane one step.

        Args:
            actions: a batch (an array of shape ``(num_envs, ...)``, a dict of
                such arrays for Dict spaces) or a list of per-lane actions.
            timeout: this call's deadline in seconds.

        Returns:
            ``(observations, rewards, terminations, truncations, infos)``;
            ``infos`` gains ``episode_ids`` and ``completed_episodes`` (the
            number of lanes whose episode ended on this step).

        Raises:
            ValueError: the wrong number of actions. InvalidActionError,
            RemoteError, OperationTimeout, BrokenError, ClosedError.
        """
        lanes = self._lanes
        if lanes is not None:
            result, done = lanes.step(actions, self._timeout(timeout))
            return self._fast_result(result, done)
        wire = self._encode_actions(actions)
        return self._sync_result(self._conn.step(wire, TailBuilder(), self._timeout(timeout)))

    def _sync_result(self, response: list[Any]) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """A step's results from the server's OK (off the fast path), with episode ids tracked."""
        _, _, obs, rewards, terminations, truncations, info = response
        # The info was decoded for this response alone: it is ours to extend, no copy.
        if type(info) is not dict:
            info = {}
        mode = self._contract.autoreset_mode
        # Lanes that ended on the previous step were reset by this one (NextStep).
        if self._pending_new_ids:
            for lane in self._pending_new_ids:
                self._episode_ids[lane] = uuid7()
            self._pending_new_ids = []
        self._renew_restarted(range(self._contract.num_envs), info)
        term = _flags(terminations)
        trunc = _flags(truncations)
        done = [i for i, (a, b) in enumerate(zip(term, trunc, strict=False)) if a or b]
        info.setdefault("episode_ids", list(self._episode_ids))
        info.setdefault("completed_episodes", len(done))
        if mode == "SameStep":
            for lane in done:
                self._episode_ids[lane] = uuid7()
            self._pending_new_ids = []
        elif mode == "NextStep":
            self._pending_new_ids = done
        else:
            self._pending_new_ids = []
        decode = self._bridge.decode
        return self._obs(obs), decode(rewards), decode(terminations), decode(truncations), info


def _identity(value: Any) -> Any:
    return value


#: A cache miss (a cached maker may be None: none faster than the bridge).
_UNSET: Any = object()


class _EpisodeIds:
    """New episode ids of a vector client: UUIDv7 strings, cheap to make.

    RFC 9562's method 1: the millisecond timestamp, then a counter started at
    random in the random bits (74 random bits drawn once per client), so ids
    stay unique, ordered by time, and valid UUIDv7, without a system call for
    random bytes per episode (a vector env ends episodes every few steps).
    """

    __slots__ = ("_high", "_count")

    def __init__(self) -> None:
        rand = int.from_bytes(secrets.token_bytes(10), "big")
        #: version 7 and rand_a (12 random bits), above the variant and rand_b.
        self._high = 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62
        self._count = rand & ((1 << 62) - 1)

    def __call__(self) -> str:
        self._count = (self._count + 1) & ((1 << 62) - 1)
        value = (time.time_ns() // 1_000_000 & ((1 << 48) - 1)) << 80 | self._high | self._count
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _flags(value: Any) -> list[bool]:
    if isinstance(value, Tensor):
        return [bool(v) for v in value.tolist()]
    return [bool(v) for v in value]


class RemoteVectorEnv(RemoteVectorEnvBase[Any, Any]):
    """A client for a vector endpoint; tensor leaves are :class:`rlmesh.Tensor`."""


def dial(
    address: str,
    *,
    single: type[RemoteEnvBase[Any, Any]],
    vector: type[RemoteVectorEnvBase[Any, Any]],
    connect_timeout_seconds: float | None = None,
    request_timeout_seconds: float | None = None,
    shared_memory: bool = True,
    spin: bool | None = None,
    auth_token: str | None = None,
) -> RemoteEnvBase[Any, Any]:
    """Connect to an endpoint with ``single`` or ``vector`` as its ``num_envs`` asks (one handshake).

    ``auth_token``: as the clients' (None: ``RLMESH_AUTH_TOKEN``, else none).

    Raises:
        ConnectError, AuthenticationError, VersionMismatch, BusyError: as the client constructors.
    """
    probe = single.__new__(single)
    probe._ensure_backend()
    conn, request_timeout = open_session(
        resolve_address(address),
        connect_timeout_seconds=connect_timeout_seconds,
        request_timeout_seconds=request_timeout_seconds,
        shared_memory=shared_memory,
        max_message_bytes=DEFAULT_MAX_FRAME,
        spin=spin,
        auth_token=auth_token,
    )
    cls = vector if conn.contract.num_envs > 1 else single
    client = cls.__new__(cls)
    client._request_timeout = request_timeout
    client._attach(conn)
    return client
