"""``rlmesh.gymnasium``: served environments as true Gymnasium envs.

:class:`RemoteEnv` is a ``gymnasium.Env`` and :class:`RemoteVectorEnv` a
``gymnasium.vector.VectorEnv``, both over the NumPy clients
(:mod:`rlmesh.numpy`): Gymnasium spaces, writable NumPy observations, infos as
Gymnasium gives them. So the env checker, Gymnasium's wrappers and vector
wrappers, and training libraries (Stable-Baselines3, CleanRL-style loops) take
a remote env as they take a local one.

Importing this module registers ``rlmesh/Remote-v0``::

    import gymnasium, rlmesh.gymnasium
    env = gymnasium.make("rlmesh/Remote-v0", address="unix:///tmp/cartpole.sock")
    envs = gymnasium.make_vec("rlmesh/Remote-v0", num_envs=8, address="unix:///tmp/vec.sock")
    # or, importing this module through the id itself:
    env = gymnasium.make("rlmesh.gymnasium:rlmesh/Remote-v0", address=...)

What a remote face cannot do like a local env, and why:

* ``render_mode`` is the served env's: a remote env renders only in the mode
  it was served with, so ``metadata["render_modes"]`` lists that one mode (or
  none); the served env's full list is ``env.env_contract.metadata``. Asking
  for another mode raises ``ValueError``.
* ``spec`` of a directly built env is an ``EnvSpec`` with the served env's id
  (and, when that id is registered here, its ``reward_threshold`` and
  ``nondeterministic``) whose ``make()`` opens another connection to the same
  endpoint; ``max_episode_steps`` is None because the served env truncates its
  own episodes. ``gymnasium.make`` replaces it with ``rlmesh/Remote-v0``'s, as
  it does for every env.
* ``info`` loses the client's bookkeeping keys ``episode_ids`` and
  ``completed_episodes`` (the NumPy client keeps them; an env's own keys of
  those names stay), so that infos equal a local env's. Other values arrive
  as metadata: NumPy arrays an env puts in a single env's info come back as
  lists. A vector env's infos are rebuilt the
  way Gymnasium batches them (arrays per key with ``_key`` masks, ``final_obs``
  an object array of observations).
* ``np_random`` is this process's generator, seeded by ``reset(seed=...)`` as
  Gymnasium's is; the served env keeps its own, seeded by the same call.

Install with ``pip install "rlmesh[gymnasium]"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .errors import BackendUnavailable
from .net.framing import DEFAULT_MAX_FRAME

try:
    import gymnasium
    import numpy as np
except ImportError as _exc:  # pragma: no cover - the extra is installed wherever the tests run
    raise BackendUnavailable('rlmesh.gymnasium needs gymnasium: pip install "rlmesh[gymnasium]"') from _exc

from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv
from gymnasium.vector.utils import batch_space

from . import numpy as _rnp
from ._lifecycle import State
from .client import dial
from .spaces import to_gymnasium_space
from .specs import EnvContract

__all__ = ["ENV_ID", "RemoteEnv", "RemoteVectorEnv", "ShardedVectorEnv", "make_vector"]

#: The id registered with Gymnasium when this module is imported.
ENV_ID = "rlmesh/Remote-v0"

#: The render modes Gymnasium names (a face renders only in its served one).
_RENDER_MODES: tuple[str, ...] = ("human", "rgb_array", "ansi", "depth_array")
_RENDER_MODES += tuple(f"{mode}_list" for mode in _RENDER_MODES[1:])


def _face_metadata(contract: EnvContract) -> dict[str, Any]:
    """The served metadata, with ``render_modes`` narrowed to the one mode served."""
    data = dict(contract.metadata)
    data["render_modes"] = [] if contract.render_mode is None else [contract.render_mode]
    return data


def _check_render_mode(contract: EnvContract, render_mode: str | None, address: str) -> None:
    if render_mode is not None and render_mode != contract.render_mode:
        raise ValueError(
            f"the env at {address} is served with render_mode={contract.render_mode!r}; a remote env "
            f"cannot render in another mode (asked for {render_mode!r}). Serve it with "
            f"render_mode={render_mode!r}, or omit render_mode"
        )


def _strip(info: dict[str, Any], ids: list[list[str]], done: int | None) -> dict[str, Any]:
    """Drop the keys the NumPy client added, keeping an env's own keys of the same names.

    The client only adds a key the env did not set: ``episode_ids`` is its
    when it equals one of the client's id lists ``ids`` (before and after the
    call), ``completed_episodes`` when it equals ``done``, the lanes that
    ended (None: the client adds none, as on reset).
    """
    if info.get("episode_ids") in ids:
        del info["episode_ids"]
    if done is not None and info.get("completed_episodes") == done:
        del info["completed_episodes"]
    return info


def _ids(client: Any) -> list[str]:
    return list(client._episode_ids)


def _served_spec(contract: EnvContract, kwargs: dict[str, Any]) -> Any:
    """An EnvSpec named after the served env whose ``make()`` reconnects to it (None if the id is odd)."""
    registered = gymnasium.registry.get(contract.id)
    try:
        return gymnasium.envs.registration.EnvSpec(
            id=contract.id,
            entry_point=f"{__name__}:RemoteEnv",
            reward_threshold=None if registered is None else registered.reward_threshold,
            nondeterministic=False if registered is None else registered.nondeterministic,
            max_episode_steps=None,
            kwargs=kwargs,
        )
    except gymnasium.error.Error:
        return None


class RemoteEnv(gymnasium.Env[Any, Any]):
    """A served environment as a ``gymnasium.Env``, over :class:`rlmesh.numpy.RemoteEnv`.

    Args:
        address: ``"unix:///path.sock"``, ``"tcp://host:port"`` or ``"host:port"``.
        render_mode: None, or the served env's render mode (a remote env
            renders only in the mode it was served with).
        host, port, path, transport, connect_timeout_seconds,
        request_timeout_seconds, shared_memory, max_message_bytes, spin,
            auth_token: as :class:`rlmesh.numpy.RemoteEnv` (the token is kept
            out of ``spec.kwargs``).

    Observations are writable NumPy arrays (dicts and tuples of them for Dict
    and Tuple spaces); ``observation_space`` and ``action_space`` are
    Gymnasium spaces (:func:`rlmesh.spaces.to_gymnasium_space`).

    Raises:
        ConnectError, VersionMismatch, BusyError: as the NumPy client.
        ValueError: the endpoint serves a vector env (use
            :class:`RemoteVectorEnv`), or ``render_mode`` is not the served one.

    Lifetime:
        :meth:`close` detaches from the server (which keeps serving); it is
        idempotent, and ``with`` calls it. An env never closed detaches when
        garbage collected, with a ``ResourceWarning`` (the NumPy client's
        finalizer). Calls after close raise ``ClosedError``.
    """

    # gymnasium.make checks a requested mode against the class's list before
    # construction, when only the endpoint knows its mode: list every mode
    # Gymnasium names, and let the constructor compare with the served one.
    metadata: dict[str, Any] = {"render_modes": list(_RENDER_MODES)}

    def __init__(
        self,
        address: str | None = None,
        *,
        render_mode: str | None = None,
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
        client = _rnp.RemoteEnv(
            address,
            host=host,
            port=port,
            path=path,
            transport=transport,
            connect_timeout_seconds=connect_timeout_seconds,
            request_timeout_seconds=request_timeout_seconds,
            shared_memory=shared_memory,
            max_message_bytes=max_message_bytes,
            spin=spin,
            auth_token=auth_token,
        )
        kwargs = {
            "address": client.address,
            "connect_timeout_seconds": connect_timeout_seconds,
            "request_timeout_seconds": request_timeout_seconds,
            "shared_memory": shared_memory,
            "max_message_bytes": max_message_bytes,
            "spin": spin,
        }
        self._adopt(client, render_mode, kwargs)

    @classmethod
    def from_client(cls, client: _rnp.RemoteEnv, *, render_mode: str | None = None) -> RemoteEnv:
        """Wrap a connected NumPy client; the face owns it from now on (its close closes the client).

        Raises:
            ValueError: ``render_mode`` is not the served one (the client is closed).
        """
        face = cls.__new__(cls)
        face._adopt(client, render_mode, {"address": client.address})
        return face

    def _adopt(self, client: _rnp.RemoteEnv, render_mode: str | None, kwargs: dict[str, Any]) -> None:
        contract = client.env_contract
        try:
            _check_render_mode(contract, render_mode, client.address)
            self.observation_space = to_gymnasium_space(contract.observation_space)
            self.action_space = to_gymnasium_space(contract.action_space)
        except BaseException:
            client.close()
            raise
        self._client = client
        self.metadata = _face_metadata(contract)
        self.render_mode = contract.render_mode
        self.spec = _served_spec(contract, kwargs)

    @property
    def client(self) -> _rnp.RemoteEnv:
        """The NumPy client under this face (its infos keep the episode ids)."""
        return self._client

    @property
    def env_contract(self) -> EnvContract:
        """The served env's contract (its id, full metadata, spaces as specs)."""
        return self._client.env_contract

    @property
    def state(self) -> State:
        """The client's OPEN, CLOSING or CLOSED (see :mod:`rlmesh._lifecycle`)."""
        return self._client.state

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Start a new episode on the served env.

        ``seed`` seeds both this face's ``np_random`` and the served env.

        Raises:
            RemoteError: the env raised. OperationTimeout, BrokenError,
            ClosedError: as the NumPy client.
        """
        super().reset(seed=seed)
        obs, info = self._client.reset(seed=seed, options=options)
        return obs, _strip(info, [_ids(self._client)], None)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Advance the served env one step.

        Raises:
            InvalidActionError: (a ValueError) the action is outside the action
            space. RemoteError, OperationTimeout, BrokenError, ClosedError.
        """
        before = _ids(self._client)
        obs, reward, terminated, truncated, info = self._client.step(action)
        done = 1 if terminated or truncated else None
        return obs, reward, terminated, truncated, _strip(info, [before], done)

    def render(self) -> Any:
        """The served env's frame in its render mode (an array for ``rgb_array``), or None.

        Raises:
            RemoteError: the env raised. OperationTimeout, BrokenError, ClosedError.
        """
        if self.render_mode is None:
            return None
        return self._client.render()

    def close(self) -> None:
        """Detach from the server (which keeps serving). Idempotent."""
        self._client.close()
        super().close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._client!r}>"


class RemoteVectorEnv(VectorEnv):
    """A served vector env as a ``gymnasium.vector.VectorEnv``, over :class:`rlmesh.numpy.RemoteVectorEnv`.

    Args:
        address: the endpoint, serving ``num_envs >= 2`` envs (a served
            ``SyncVectorEnv`` or ``EnvServer(..., num_envs=N)``).
        render_mode: None or the served render mode.
        Other keywords: as :class:`rlmesh.numpy.RemoteVectorEnv`.

    ``single_observation_space``/``single_action_space`` are Gymnasium spaces,
    ``observation_space``/``action_space`` their batched forms;
    ``metadata["autoreset_mode"]`` is Gymnasium's :class:`AutoresetMode`.
    ``step_async``/``step_wait`` split a step (see :meth:`step_wait`).

    Raises:
        ConnectError, VersionMismatch, BusyError: as the NumPy client.
        ValueError: the endpoint serves a single env, or ``render_mode`` is
            not the served one.

    Lifetime:
        As :class:`RemoteEnv`: :meth:`close` detaches, idempotently; an env
        never closed detaches when collected, with a ``ResourceWarning``.
    """

    metadata: dict[str, Any] = {"render_modes": list(_RENDER_MODES)}

    def __init__(
        self,
        address: str | None = None,
        *,
        render_mode: str | None = None,
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
        client = _rnp.RemoteVectorEnv(
            address,
            host=host,
            port=port,
            path=path,
            transport=transport,
            connect_timeout_seconds=connect_timeout_seconds,
            request_timeout_seconds=request_timeout_seconds,
            shared_memory=shared_memory,
            max_message_bytes=max_message_bytes,
            spin=spin,
            auth_token=auth_token,
        )
        self._adopt(client, render_mode)

    @classmethod
    def from_client(cls, client: _rnp.RemoteVectorEnv, *, render_mode: str | None = None) -> RemoteVectorEnv:
        """Wrap a connected NumPy vector client; the face owns it from now on.

        Raises:
            ValueError: ``render_mode`` is not the served one (the client is closed).
        """
        face = cls.__new__(cls)
        face._adopt(client, render_mode)
        return face

    def _adopt(self, client: _rnp.RemoteVectorEnv, render_mode: str | None) -> None:
        contract = client.env_contract
        try:
            _check_render_mode(contract, render_mode, client.address)
            self.single_observation_space = to_gymnasium_space(contract.observation_space)
            self.single_action_space = to_gymnasium_space(contract.action_space)
        except BaseException:
            client.close()
            raise
        self._client = client
        self.num_envs = contract.num_envs
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        metadata = _face_metadata(contract)
        metadata["autoreset_mode"] = AutoresetMode(contract.autoreset_mode)
        self.metadata = metadata
        self.render_mode = contract.render_mode
        self._pending = False

    @property
    def client(self) -> _rnp.RemoteVectorEnv:
        """The NumPy vector client under this face."""
        return self._client

    @property
    def env_contract(self) -> EnvContract:
        """The served env's contract."""
        return self._client.env_contract

    @property
    def state(self) -> State:
        """The client's OPEN, CLOSING or CLOSED (see :mod:`rlmesh._lifecycle`)."""
        return self._client.state

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset every lane; ``seed`` is an int (lane ``i`` gets ``seed + i``) or one per lane.

        Raises:
            AlreadyPendingCallError: (Gymnasium's) a step_async awaits its step_wait.
            RemoteError, OperationTimeout, BrokenError, ClosedError.
        """
        if self._pending:
            raise gymnasium.error.AlreadyPendingCallError(
                "call step_wait() before reset(): a step_async() is pending", "step"
            )
        if isinstance(seed, int):
            super().reset(seed=seed)
        obs, info = self._client.reset(seed=seed, options=options)
        return obs, self._batch(_strip(info, [_ids(self._client)], None))

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step every lane: ``(obs, rewards, terminations, truncations, infos)`` as NumPy batches.

        Raises:
            AlreadyPendingCallError: a step_async awaits its step_wait.
            ValueError: the wrong number of actions. InvalidActionError,
            RemoteError, OperationTimeout, BrokenError, ClosedError.
        """
        if self._pending:
            raise gymnasium.error.AlreadyPendingCallError(
                "call step_wait() before step(): a step_async() is pending", "step"
            )
        return self._finish(self._client.step(actions))

    def step_async(self, actions: Any) -> None:
        """Send the actions; :meth:`step_wait` returns the step.

        The NumPy client's ``step_async``: on the vector fast path the workers
        step while the caller computes; elsewhere the step runs in ``step_wait``.

        Raises:
            AlreadyPendingCallError: a step_async already awaits its step_wait.
            ValueError: the wrong number of actions. ClosedError.
        """
        if self._pending:
            raise gymnasium.error.AlreadyPendingCallError(
                "step_async() was called twice without step_wait()", "step"
            )
        self._client.step_async(actions)
        self._pending = True

    def step_wait(self) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """The step sent by :meth:`step_async`.

        Raises:
            NoAsyncCallError: (Gymnasium's) no step_async is pending.
            As :meth:`step` otherwise.
        """
        if not self._pending:
            raise gymnasium.error.NoAsyncCallError("step_wait() without a pending step_async()", "step")
        self._pending = False
        return self._finish(self._client.step_wait())

    def _finish(self, result: tuple[Any, Any, Any, Any, dict[str, Any]]) -> tuple[Any, Any, Any, Any, Any]:
        obs, rewards, terminations, truncations, info = result
        ended = int(np.count_nonzero(np.logical_or(terminations, truncations)))
        # The client's ids are its current ones, but for lanes a SameStep reset renamed.
        after = _ids(self._client)
        emitted = info.get("episode_ids")
        if isinstance(emitted, list) and len(emitted) == len(after):
            if sum(a != b for a, b in zip(emitted, after, strict=True)) <= ended:
                del info["episode_ids"]
        if info.get("completed_episodes") == ended:
            del info["completed_episodes"]
        return obs, rewards, terminations, truncations, self._batch(info)

    def _batch(self, info: dict[str, Any]) -> dict[str, Any]:
        return _batch_infos(info, self.num_envs, self.single_observation_space)

    def render(self) -> tuple[Any, ...] | None:
        """Every lane's frame, as Gymnasium's SyncVectorEnv gives them (None without a render mode).

        Raises:
            RemoteError, OperationTimeout, BrokenError, ClosedError.
        """
        if self.render_mode is None:
            return None
        return tuple(self._client.render(env_index=i) for i in range(self.num_envs))

    def close_extras(self, **kwargs: Any) -> None:
        """Detach from the server (Gymnasium's close calls this once)."""
        self._client.close()

    def __enter__(self) -> RemoteVectorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} num_envs={self.num_envs} {self._client!r}>"


class ShardedVectorEnv(RemoteVectorEnv):
    """Many vector endpoints as one ``gymnasium.vector.VectorEnv`` (over ``rlmesh.numpy.ShardedVectorEnv``).

    Args:
        addresses: the endpoints, in lane order (see the NumPy class).
        render_mode: None or the served render mode.
        Other keywords: as :class:`rlmesh.numpy.ShardedVectorEnv` (``on_lost``,
            ``auth_token``, ``request_timeout_seconds``, ``reconnect``...).

    Infos are Gymnasium's batches and keep the lane states ``rlmesh_live``,
    ``rlmesh_lost`` and ``rlmesh_restarted`` (with their ``_`` masks); the
    NumPy client's ``episode_ids`` and ``completed_episodes`` are dropped.
    :attr:`client` is the NumPy sharded env (``lanes_of``, ``send``/``recv``).

    Raises:
        As the NumPy class; ValueError: ``render_mode`` is not the served one.

    Lifetime:
        :meth:`close` detaches from every endpoint, idempotently; an env never
        closed is closed when collected, with a ``ResourceWarning``.
    """

    def __init__(self, addresses: Sequence[str], *, render_mode: str | None = None, **kwargs: Any) -> None:
        self._adopt(_rnp.ShardedVectorEnv(addresses, **kwargs), render_mode)  # type: ignore[arg-type]

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset every live lane; ``seed`` is an int (lane ``g`` gets ``seed + g``) or one per lane.

        Raises:
            AlreadyPendingCallError: a step_async awaits its step_wait.
            EndpointLostError, RemoteError, ClosedError.
        """
        if self._pending:
            raise gymnasium.error.AlreadyPendingCallError(
                "call step_wait() before reset(): a step_async() is pending", "step"
            )
        if isinstance(seed, int):
            VectorEnv.reset(self, seed=seed)
        obs, info = self._client.reset(seed=seed, options=options)
        return obs, self._batch(_without_bookkeeping(info))

    def _finish(self, result: tuple[Any, Any, Any, Any, dict[str, Any]]) -> tuple[Any, Any, Any, Any, Any]:
        obs, rewards, terminations, truncations, info = result
        return obs, rewards, terminations, truncations, self._batch(_without_bookkeeping(info))


def _without_bookkeeping(info: dict[str, Any]) -> dict[str, Any]:
    info.pop("episode_ids", None)
    info.pop("completed_episodes", None)
    return info


# -- infos as Gymnasium batches them -----------------------------------------------------


def _batch_infos(info: dict[str, Any], n: int, obs_space: Any) -> dict[str, Any]:
    """Rebuild Gymnasium's batched infos from their metadata form (lists for arrays).

    A key ``k`` with a boolean mask ``_k`` of ``n`` lanes becomes an array of
    ``n`` entries (an object array for ``final_obs``, whose lanes become
    observations of ``obs_space`` again; a nested dict recursively); other
    keys are left as they came.
    """
    out: dict[str, Any] = {}
    for key, value in info.items():
        if key.startswith("_") and _is_mask(value, n) and key[1:] in info:
            out[key] = np.asarray(value, dtype=np.bool_)
            continue
        mask = info.get(f"_{key}")
        if mask is None or not _is_mask(mask, n):
            out[key] = value
        elif isinstance(value, dict):
            out[key] = _batch_infos(value, n, obs_space)
        elif key == "final_obs" and isinstance(value, (list, tuple)) and len(value) == n:
            lanes = np.full(n, None, dtype=object)
            for i, lane in enumerate(value):
                if mask[i]:
                    lanes[i] = _as_obs(lane, obs_space)
            out[key] = lanes
        else:
            out[key] = _lane_array(value, n)
    return out


def _is_mask(value: Any, n: int) -> bool:
    if isinstance(value, np.ndarray):
        return bool(value.dtype == np.bool_ and value.shape == (n,))
    return isinstance(value, list) and len(value) == n and all(type(v) is bool for v in value)


def _lane_array(value: Any, n: int) -> Any:
    if isinstance(value, np.ndarray) or not isinstance(value, (list, tuple)) or len(value) != n:
        return value
    if all(type(v) in (bool, int, float) for v in value) and len({type(v) for v in value}) == 1:
        return np.asarray(value)
    if all(isinstance(v, (list, tuple)) for v in value):
        try:
            array = np.asarray(value)
        except ValueError:
            array = None
        if array is not None and array.dtype.kind in "biuf":
            return array
    lanes = np.full(n, None, dtype=object)
    for i, v in enumerate(value):
        lanes[i] = v
    return lanes


def _as_obs(value: Any, space: Any) -> Any:
    """A metadata value (lists, numbers) back to an observation of a Gymnasium space."""
    spaces = gymnasium.spaces
    if isinstance(space, spaces.Dict):
        return {key: _as_obs(value[key], sub) for key, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_as_obs(v, sub) for v, sub in zip(value, space.spaces, strict=True))
    if isinstance(space, spaces.Discrete):
        return np.int64(value)
    if isinstance(space, spaces.Text):
        return str(value)
    return np.asarray(value, dtype=space.dtype).reshape(space.shape)


# -- registration ---------------------------------------------------------------------------


def make_vector(
    num_envs: int = 1,
    *,
    address: str,
    render_mode: str | None = None,
    connect_timeout_seconds: float | None = None,
    request_timeout_seconds: float | None = None,
    shared_memory: bool = True,
    spin: bool | None = None,
    max_episode_steps: int | None = None,
    auth_token: str | None = None,
) -> VectorEnv:
    """``gymnasium.make_vec("rlmesh/Remote-v0", num_envs=N, address=...)``'s entry point.

    A vector endpoint becomes one :class:`RemoteVectorEnv` (``num_envs`` must
    be the number it serves); a single-env endpoint (a Gymnasium id or a
    factory, which gives every client its own env) becomes a Gymnasium
    ``SyncVectorEnv`` of ``num_envs`` :class:`RemoteEnv` connections.

    Raises:
        ValueError: ``num_envs`` differs from a vector endpoint's, or
            ``max_episode_steps`` is given (the served env truncates its own
            episodes; wrap it in ``TimeLimit`` where it is served).
        ConnectError, BusyError and the rest: as the clients.
    """
    if max_episode_steps is not None:
        raise ValueError(
            "max_episode_steps is not applied to a remote vector env: the served env truncates its episodes"
        )
    client = dial(
        address,
        single=_rnp.RemoteEnv,
        vector=_rnp.RemoteVectorEnv,
        connect_timeout_seconds=connect_timeout_seconds,
        request_timeout_seconds=request_timeout_seconds,
        shared_memory=shared_memory,
        spin=spin,
        auth_token=auth_token,
    )
    if isinstance(client, _rnp.RemoteVectorEnv):
        if num_envs != client.num_envs:
            served = client.num_envs
            client.close()
            raise ValueError(f"the endpoint at {address} serves {served} envs; pass num_envs={served}")
        return RemoteVectorEnv.from_client(client, render_mode=render_mode)
    assert isinstance(client, _rnp.RemoteEnv)
    first = RemoteEnv.from_client(client, render_mode=render_mode)
    opened: list[RemoteEnv] = [first]
    try:
        for _ in range(num_envs - 1):
            opened.append(
                RemoteEnv(
                    address,
                    render_mode=render_mode,
                    connect_timeout_seconds=connect_timeout_seconds,
                    request_timeout_seconds=request_timeout_seconds,
                    shared_memory=shared_memory,
                    spin=spin,
                    auth_token=auth_token,
                )
            )
    except BaseException:
        for env in opened:
            env.close()
        raise
    fns: Sequence[Callable[[], Any]] = [_returns(env) for env in opened]
    return SyncVectorEnv(fns)


def _returns(env: RemoteEnv) -> Callable[[], RemoteEnv]:
    return lambda: env


def _register() -> None:
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(
            id=ENV_ID,
            entry_point=f"{__name__}:RemoteEnv",
            vector_entry_point=f"{__name__}:make_vector",
        )


_register()
