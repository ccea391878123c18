"""``ShardedVectorEnv``: many vector endpoints stepped as one vector env.

Lanes are laid out endpoint after endpoint: endpoint ``i`` owns the contiguous
global lanes :meth:`ShardedVectorEnv.lanes_of` ``(i)``. ``step`` sends every
live endpoint its slice of the actions and then collects the answers; the
endpoints step in parallel. One endpoint is driven inline by the calling
thread (no hand-off, so one endpoint costs what its client costs); each other
endpoint has a thread that makes its client's blocking calls (the clients
release the GIL while they wait on sockets or shared memory). A thread also
reconnects its endpoint in the background after a loss.

Lane states travel in ``info`` as boolean arrays over all lanes, with ``_``
masks as Gymnasium batches infos: ``rlmesh_live`` (the lane stepped),
``rlmesh_lost`` (its endpoint was lost by this call) and ``rlmesh_restarted``
(its endpoint rejoined: this is a reset observation of a new episode).

A lost endpoint (its connection broke, its server died, it missed the call's
deadline) returns ``truncated=True`` once for its lanes with their last
observation, then its lanes are masked: zero observations, ``rlmesh_live``
False, their actions dropped. With ``reconnect=True`` its thread dials the
same address again with backoff (50 ms doubling to 2 s); when a server answers
with the same spaces, its lanes are reset, with the seeds of their last seeded
reset (so they replay the episodes they started then) or unseeded, and the
next call returns those reset observations flagged ``rlmesh_restarted``.
``on_lost="raise"`` raises :class:`~rlmesh.errors.EndpointLostError` instead,
carrying the batch ``truncate`` would have returned.

Layer 4: no Ray, no Gymnasium; numpy is imported when an env is built.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Sequence
from typing import Any

from .._lifecycle import Lifecycle, State
from ..client import DEFAULT_REQUEST_TIMEOUT, _seconds
from ..errors import EndpointLostError, OperationTimeout, RLMeshError
from ._batches import (
    check_batch as _check_batch,
    no_flags as _no_flags,
    tree_map as _tree_map,
    tree_slice as _tree_slice,
    tree_take as _tree_take,
    without_bookkeeping as _without_bookkeeping,
)
from ._endpoint import (
    LIVE as _LIVE,
    LOST as _LOST,
    REJOINED as _REJOINED,
    Endpoint as _Endpoint,
    is_loss as _is_loss,
    mismatch as _mismatch,
    release as _release,
)

# The lane bookkeeping lives in its own module (the base class); the names are
# re-exported here, where they were first defined.
from ._shard_book import DEADLINE_GRACE as DEADLINE_GRACE, _Part as _Part, _ShardBook

__all__ = ["ShardedVectorEnv", "ShardedVectorEnvBase"]

log = logging.getLogger(__name__)


class ShardedVectorEnvBase(_ShardBook):
    """Many vector endpoints as one vector env (see the module's docstring).

    Args:
        addresses: the endpoints, each serving a vector env (``num_envs >= 2``)
            with the same spaces and autoreset mode. Lanes are laid out in
            this order.
        on_lost: "truncate" (the lost lanes end truncated and are masked) or
            "raise" (:class:`EndpointLostError`).
        auth_token: the servers' shared secret (passed to every client; None:
            ``RLMESH_AUTH_TOKEN``, else none).
        connect_timeout_seconds: retry each first connection until this deadline.
        request_timeout_seconds: the default deadline of each call (None:
            300 s; 0 or ``math.inf``: none). An endpoint that misses it is lost.
        reconnect: dial a lost endpoint again in the background.
        shared_memory, spin: as the NumPy vector client.

    Raises:
        ValueError: no addresses, an endpoint whose spaces or autoreset mode
            differ from the first's (named), a bad ``on_lost``.
        ConnectError, VersionMismatch: as the clients' constructors.

    Lifetime:
        :meth:`close` detaches from every endpoint and stops the threads; it is
        idempotent and the context manager calls it; a close from another
        thread wakes a call in flight, which raises ClosedError. An env never
        closed is closed when collected, with a ``ResourceWarning``.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        on_lost: str = "truncate",
        auth_token: str | None = None,
        connect_timeout_seconds: float | None = None,
        request_timeout_seconds: float | None = None,
        reconnect: bool = True,
        shared_memory: bool = True,
        spin: bool | None = None,
    ) -> None:
        import numpy as np

        self._np = np
        if isinstance(addresses, str) or not addresses:
            raise ValueError("addresses must be a non-empty sequence of endpoint addresses")
        if on_lost not in ("truncate", "raise"):
            raise ValueError(f"on_lost must be 'truncate' or 'raise', got {on_lost!r}")
        self._on_lost = on_lost
        self._timeout_default = _seconds(
            "request_timeout_seconds", request_timeout_seconds, DEFAULT_REQUEST_TIMEOUT
        )
        kwargs: dict[str, Any] = {
            "connect_timeout_seconds": connect_timeout_seconds,
            "request_timeout_seconds": request_timeout_seconds,
            "shared_memory": shared_memory,
            "spin": spin,
            "auth_token": auth_token,
        }
        redial = {**kwargs, "connect_timeout_seconds": None}
        from ..numpy import RemoteVectorEnv as cls

        self._out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        endpoints: list[_Endpoint] = []
        try:
            lo = 0
            for index, address in enumerate(addresses):
                client = cls(str(address), **kwargs)
                if endpoints:
                    problem = _mismatch(endpoints[0].contract, client.env_contract)
                    if problem:
                        client.close()
                        raise ValueError(f"endpoint {index} ({address}) serves another {problem}")

                def connect(address: str) -> Any:
                    return cls(address, **redial)

                endpoints.append(_Endpoint(index, str(address), lo, client, connect, self._out, reconnect))
                lo += client.num_envs
        except BaseException:
            _release(endpoints)
            raise
        self._endpoints = endpoints
        self._n = lo
        self._ticket = 0
        self._pending: dict[int, range] = {}  # endpoint -> lanes sent, not received
        self._ready: list[tuple[int, Any, Any]] = []  # (endpoint, part, flags) received, not returned
        self._contract = endpoints[0].contract
        self._spaces = (endpoints[0].client.single_observation_space, endpoints[0].client.single_action_space)
        self._step_pending = False
        self._step_deadline: float | None = None
        self._inline: list[_Endpoint] = []
        self._lost_pending: set[int] = set()  # replaced while live: reported lost by the next call
        self._early: dict[int, tuple[Any, Any]] = {}
        self._life = Lifecycle(f"the ShardedVectorEnv over {len(endpoints)} endpoints")
        self._life.watch(self, _release, endpoints)

    # -- properties ---------------------------------------------------------------------------

    @property
    def num_envs(self) -> int:
        """The total number of lanes."""
        return self._n

    @property
    def endpoints(self) -> list[str]:
        """The endpoints' addresses, in lane order."""
        return [ep.address for ep in self._endpoints]

    @property
    def address(self) -> str:
        """The endpoints' addresses, comma-separated (as error messages name the env)."""
        return ", ".join(ep.address for ep in self._endpoints)

    @property
    def live(self) -> list[bool]:
        """Per endpoint: True unless lost and not yet rejoined (as of the last call)."""
        return [ep.state != _LOST for ep in self._endpoints]

    @property
    def env_contract(self) -> Any:
        """The first endpoint's contract, with ``num_envs`` the total."""
        from ..specs import EnvContract

        c = self._contract
        return EnvContract(
            c.id,
            c.observation_space,
            c.action_space,
            render_mode=c.render_mode,
            num_envs=self._n,
            metadata=c.metadata,
            autoreset_mode=c.autoreset_mode,
        )

    @property
    def autoreset_mode(self) -> str:
        """The endpoints' autoreset mode: "NextStep", "SameStep" or "Disabled"."""
        return str(self._contract.autoreset_mode)

    @property
    def single_observation_space(self) -> Any:
        """One lane's observation space (the first endpoint client's)."""
        return self._spaces[0]

    @property
    def single_action_space(self) -> Any:
        """One lane's action space (the first endpoint client's)."""
        return self._spaces[1]

    @property
    def render_mode(self) -> str | None:
        """The served render mode."""
        mode: str | None = self._contract.render_mode
        return mode

    @property
    def metadata(self) -> Any:
        """The first endpoint's metadata."""
        return dict(self._contract.metadata)

    @property
    def state(self) -> State:
        """OPEN, CLOSING or CLOSED."""
        return self._life.state

    @property
    def closed(self) -> bool:
        """True once closing began."""
        return self._life.closed

    # -- calls ----------------------------------------------------------------------------------

    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """Reset every live lane, or those of ``options["reset_mask"]`` (a bool array over all lanes).

        Args:
            seed: None, an int (lane ``g`` gets ``seed + g``) or one seed per lane.
            options: passed to every endpoint's reset; a ``reset_mask`` is sliced per endpoint.
            timeout: this call's deadline in seconds.

        Returns:
            ``(observations, infos)`` over all lanes; lanes of lost endpoints are zeros.

        Raises:
            EndpointLostError: (``on_lost="raise"``) an endpoint was lost.
            ValueError: lanes in flight, bad seeds or mask. RemoteError, ClosedError.
        """
        np = self._np
        self._check_idle()
        self._drain()
        n = self._n
        if seed is None:
            seeds: list[int | None] | None = None
        elif isinstance(seed, int) and not isinstance(seed, bool):
            seeds = [seed + g for g in range(n)]
        else:
            if isinstance(seed, (bool, int)):
                raise ValueError(f"seed must be a non-negative int or one per lane, got {seed!r}")
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"expected {n} seeds, one per lane, got {len(seeds)}")
        mask = None
        rest: dict[str, Any] = {}
        if options is not None:
            rest = dict(options)
            mask = rest.pop("reset_mask", None)
            if mask is not None:
                mask = np.asarray(mask)
                if mask.dtype != np.bool_ or mask.shape != (n,):
                    raise ValueError(f"reset_mask must be a bool array of shape ({n},)")
        deadline = self._deadline(timeout)
        left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        asked: set[int] = set()
        for ep in self._endpoints:
            if ep.state == _LOST:
                continue
            sub_mask = None if mask is None else mask[ep.lo : ep.hi]
            if sub_mask is not None and not sub_mask.any():
                continue
            sub_seeds = None if seeds is None else seeds[ep.lo : ep.hi]
            if sub_seeds is not None and any(s is not None for s in sub_seeds):
                ep.seeds = sub_seeds
            sub_options = dict(rest)
            if sub_mask is not None and not sub_mask.all():
                sub_options["reset_mask"] = sub_mask.copy()
            opts = sub_options or None

            def call(client: Any, s: Any = sub_seeds, o: Any = opts) -> Any:
                return client.reset(seed=s, options=o, timeout=left)

            self._submit(ep, call)
            asked.add(ep.index)
        got = self._wait_all(asked, deadline)
        parts: list[_Part] = []
        lost: set[int] = set()
        restarted: set[int] = set()
        for ep in self._endpoints:
            answer = got.get(ep.index)
            if answer is not None and answer[0] is not None and not _is_loss(answer[0]):
                raise answer[0]
            if answer is not None and answer[0] is None:
                obs, info = answer[1]
                ep.last_obs = obs
                if ep.state == _REJOINED:
                    ep.state, ep.rejoin = _LIVE, None
                    restarted.add(ep.index)
                parts.append((ep, obs, np.zeros(ep.n), *_no_flags(np, ep.n), _without_bookkeeping(info)))
            elif ep.index in asked:
                lost.add(ep.index)
                parts.append(self._masked_part(ep, lost_now=True))
            elif ep.state == _REJOINED:
                restarted.add(ep.index)
                parts.append(self._rejoin_part(ep))
            elif ep.state == _LIVE and ep.last_obs is not None:  # outside the reset mask
                parts.append((ep, ep.last_obs, np.zeros(ep.n), *_no_flags(np, ep.n), None))
            else:
                parts.append(self._masked_part(ep, lost_now=False))
        obs, _, _, _, info = self._assemble(parts, lost, restarted)
        obs = _tree_map(self._array, obs)
        self._raise_if_lost((obs, info), lost, "reset")
        return obs, info

    def step(
        self, actions: Any, *, timeout: float | None = None
    ) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step every live lane; see :meth:`step_async` and :meth:`step_wait`.

        Returns:
            ``(observations, rewards, terminations, truncations, infos)`` over all lanes.

        Raises:
            As :meth:`step_wait`.
        """
        self.step_async(actions, timeout=timeout)
        return self.step_wait(timeout=timeout)

    def step_async(self, actions: Any, *, timeout: float | None = None) -> None:
        """Send every live endpoint its slice of ``actions`` and return at once.

        Args:
            actions: a batch over all lanes (an array of shape ``(num_envs, ...)``,
                a dict or tuple of such) or a list of per-lane actions.
            timeout: the endpoints' deadline (default: ``request_timeout_seconds``).

        Raises:
            ValueError: the wrong number of actions, a step or lanes in flight.
        """
        if self._step_pending:
            raise ValueError("a step is already in flight: call step_wait() first")
        self._check_idle()
        if not self._out.empty():
            self._drain()
        _check_batch(actions, self._n)
        actions = self._host_actions(actions)
        deadline = self._deadline(timeout)
        left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        # The calling thread drives every endpoint whose client splits a step for
        # real (step_async returns once the request is out: the vector fast path,
        # or a client with a readiness probe) and one other inline; the rest go
        # to their threads. Either way the endpoints step in parallel.
        self._inline = []
        self._early = {}
        slot = True
        for ep in self._endpoints:
            if ep.state != _LIVE:
                continue
            sub = _tree_slice(actions, ep.lo, ep.hi)
            self._pending[ep.index] = range(ep.lo, ep.hi)
            client = ep.client
            split = bool(getattr(client, "fast_path", False)) or callable(getattr(client, "poll", None))
            if split or slot:
                slot = slot and split
                try:
                    client.step_async(sub)
                except BaseException as exc:
                    if not _is_loss(exc):
                        raise
                    self._early[ep.index] = (exc, None)
                    self._lose(ep, tell_thread=True)
                    continue
                self._inline.append(ep)
                continue

            def call(client: Any, a: Any = sub) -> Any:
                return client.step(a, timeout=left)

            self._submit(ep, call)
        self._step_deadline = deadline
        self._step_pending = True

    def step_wait(self, *, timeout: float | None = None) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Collect the step :meth:`step_async` sent, waiting for every live endpoint.

        An endpoint that misses the deadline, breaks or dies is lost: its lanes
        return ``truncated=True`` (``on_lost="truncate"``) or the call raises.

        Raises:
            EndpointLostError: (``on_lost="raise"``) an endpoint was lost; ``partial`` is the batch.
            ValueError: no step in flight. RemoteError, InvalidActionError: an env
            raised (its endpoint stays live). ClosedError.
        """
        self._life.check_open()
        if not self._step_pending:
            raise ValueError("no step in flight: call step_async() first")
        self._step_pending = False
        deadline = self._step_deadline if timeout is None else self._deadline(timeout)
        asked = set(self._pending) | set(self._early) | self._lost_pending
        self._lost_pending = set()
        got: dict[int, tuple[Any, Any]] = dict(self._early)
        for ep in self._inline:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            try:
                got[ep.index] = (None, ep.client.step_wait(timeout=left))
            except BaseException as exc:
                self._life.check_open()
                if not _is_loss(exc) and not isinstance(exc, RLMeshError):
                    raise
                got[ep.index] = (exc, None)
                if _is_loss(exc):
                    log.warning("endpoint %d (%s) lost: %s", ep.index, ep.address, exc)
                    self._lose(ep, tell_thread=True)
        inline = {ep.index for ep in self._inline}
        got.update(self._wait_all({i for i in self._pending if i not in inline}, deadline))
        self._pending.clear()
        self._inline, self._early = [], {}
        return self._collect(got, asked, "step")

    def _collect(
        self, got: dict[int, tuple[Any, Any]], asked: set[int], what: str
    ) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        parts: list[_Part] = []
        lost: set[int] = set()
        restarted: set[int] = set()
        error: BaseException | None = None
        for ep in self._endpoints:
            answer = got.get(ep.index)
            if answer is not None and answer[0] is None:
                obs, rewards, terminated, truncated, info = answer[1]
                ep.last_obs = obs
                parts.append((ep, obs, rewards, terminated, truncated, info))
            elif answer is not None and not _is_loss(answer[0]):
                error = error or answer[0]
                parts.append(self._masked_part(ep, lost_now=False))
            elif ep.index in asked:
                lost.add(ep.index)
                parts.append(self._masked_part(ep, lost_now=True))
            elif ep.state == _REJOINED:
                restarted.add(ep.index)
                parts.append(self._rejoin_part(ep))
            else:
                parts.append(self._masked_part(ep, lost_now=False))
        if error is not None:
            raise error
        obs, rewards, terminated, truncated, info = self._assemble(parts, lost, restarted)
        arr = self._array
        batch = (_tree_map(arr, obs), arr(rewards), arr(terminated), arr(truncated), info)
        self._raise_if_lost(batch, lost, what)
        return batch

    def send(self, actions: Any, env_ids: Any = None) -> None:
        """Send actions to whole endpoints' lanes (default: every lane) and return at once.

        Args:
            actions: ``len(env_ids)`` actions, batched, in ``env_ids`` order.
            env_ids: global lanes covering whole endpoints (:meth:`lanes_of`),
                none of them in flight.

        A lost endpoint's lanes are answered when it rejoins (its reset
        observations, flagged ``rlmesh_restarted``), at once with ``reconnect=False``.

        Raises:
            ValueError: lanes out of range, repeated, in flight, or not whole
                endpoints; the wrong number of actions; a step_async in flight.
        """
        np = self._np
        self._life.check_open()
        if self._step_pending:
            raise ValueError("a step_async() is in flight: call step_wait() first")
        self._harvest()  # answers already in go to the ready list, never dropped
        ids = list(range(self._n)) if env_ids is None else [int(i) for i in np.asarray(env_ids).reshape(-1)]
        _check_batch(actions, len(ids))
        actions = self._host_actions(actions)
        if len(set(ids)) != len(ids) or any(not 0 <= i < self._n for i in ids):
            raise ValueError(f"env_ids must be distinct lanes in [0, {self._n}), got {ids}")
        at: dict[int, int] = {}
        for pos, lane in enumerate(ids):
            at.setdefault(lane, pos)
        plan: list[tuple[_Endpoint, list[int]]] = []
        for ep in self._endpoints:
            mine = [at[g] for g in range(ep.lo, ep.hi) if g in at]
            if not mine:
                continue
            if len(mine) != ep.n:
                raise ValueError(
                    f"send() covers whole endpoints: endpoint {ep.index} owns lanes {ep.lo}..{ep.hi - 1}"
                )
            if ep.index in self._pending or any(i == ep.index for i, _, _ in self._ready):
                raise ValueError(f"lanes {ep.lo}..{ep.hi - 1} are in flight: recv() them first")
            plan.append((ep, mine))
        for ep, positions in plan:
            contiguous = positions == list(range(positions[0], positions[0] + ep.n))
            sub = (
                _tree_slice(actions, positions[0], positions[0] + ep.n)
                if contiguous
                else _tree_take(np, actions, positions)
            )
            self._pending[ep.index] = range(ep.lo, ep.hi)
            if ep.index in self._lost_pending:
                self._lost_pending.discard(ep.index)
                self._ready.append((ep.index, self._masked_part(ep, lost_now=True), "lost"))
                del self._pending[ep.index]
            elif ep.state == _LIVE:

                def call(client: Any, a: Any = sub) -> Any:
                    return client.step(a, timeout=self._timeout_default)

                self._submit(ep, call)
            elif ep.state == _REJOINED:
                self._ready.append((ep.index, self._rejoin_part(ep), "restarted"))
                del self._pending[ep.index]
            elif not ep.reconnect_on:
                self._ready.append((ep.index, self._masked_part(ep, lost_now=False), None))
                del self._pending[ep.index]

    def recv(
        self, min_envs: int | None = None, *, timeout: float | None = None
    ) -> tuple[Any, Any, Any, Any, dict[str, Any], Any]:
        """The results of the endpoints ready first (at least ``min_envs`` lanes; default: all sent).

        Returns:
            ``(observations, rewards, terminations, truncations, infos, env_ids)``
            over the lanes returned, ascending; lanes not returned now are
            returned by a later call (nothing is lost). An endpoint lost while
            its lanes were in flight returns them truncated (``rlmesh_lost``).

        Raises:
            ValueError: nothing sent, or ``min_envs`` out of range.
            OperationTimeout: fewer than ``min_envs`` lanes ready in time (they stay in flight).
            EndpointLostError: (``on_lost="raise"``). RemoteError, ClosedError.
        """
        np = self._np
        self._life.check_open()
        outstanding = sum(len(v) for v in self._pending.values()) + sum(
            self._endpoints[i].n for i, _, _ in self._ready
        )
        if outstanding == 0:
            raise ValueError("recv() with nothing sent: call send() first")
        if min_envs is None:
            min_envs = outstanding
        if isinstance(min_envs, bool) or not isinstance(min_envs, int) or not 1 <= min_envs <= outstanding:
            raise ValueError(
                f"min_envs must be between 1 and the {outstanding} lanes in flight, got {min_envs!r}"
            )
        seconds = self._timeout_default if timeout is None else _seconds("timeout", timeout, None)
        end = None if seconds is None else time.monotonic() + seconds
        while True:
            self._harvest()
            if sum(self._endpoints[i].n for i, _, _ in self._ready) >= min_envs:
                break
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                raise OperationTimeout(
                    f"recv() timed out after {seconds:.3g}s with {min_envs} lanes asked, "
                    f"{sum(self._endpoints[i].n for i, _, _ in self._ready)} ready",
                    timeout=seconds,
                )
            taken = self._take(left)
            if taken is not None:
                self._ready_answer(*taken)
        ready, self._ready = sorted(self._ready, key=lambda r: r[0]), []
        error = next((part for _, part, flag in ready if flag == "error"), None)
        if error is not None:
            self._ready = [r for r in ready if r[2] != "error"]
            raise error
        parts = [part for _, part, _ in ready]
        lost = {i for i, _, flag in ready if flag == "lost"}
        restarted = {i for i, _, flag in ready if flag == "restarted"}
        obs, rewards, terminated, truncated, info = self._assemble(parts, lost, restarted)
        ids = np.concatenate([np.arange(p[0].lo, p[0].hi, dtype=np.int64) for p in parts])
        arr = self._array
        batch = (_tree_map(arr, obs), arr(rewards), arr(terminated), arr(truncated), info, arr(ids))
        self._raise_if_lost(batch, lost, "recv")
        return batch

    def _ready_answer(self, ep: _Endpoint, exc: BaseException | None, result: Any) -> None:
        if ep.index not in self._pending:
            return
        del self._pending[ep.index]
        if exc is None:
            obs, rewards, terminated, truncated, info = result
            ep.last_obs = obs
            self._ready.append((ep.index, (ep, obs, rewards, terminated, truncated, info), None))
        elif _is_loss(exc):
            self._ready.append((ep.index, self._masked_part(ep, lost_now=True), "lost"))
        else:
            self._ready.append((ep.index, exc, "error"))

    def _harvest(self) -> None:
        """Lanes sent to lost endpoints that rejoined since become ready (reset observations)."""
        for ep in self._endpoints:
            if ep.index in self._pending and ep.state == _REJOINED and ep.ticket is None:
                del self._pending[ep.index]
                self._ready.append((ep.index, self._rejoin_part(ep), "restarted"))
        while True:
            taken = self._take(0)
            if taken is None:
                if self._out.empty():
                    return
                continue
            self._ready_answer(*taken)

    def replace_endpoint(self, index: int, address: str) -> None:
        """Serve endpoint ``index``'s lanes from ``address`` from now on (a host that moved).

        A live endpoint is dropped: the next call returns its lanes truncated
        (``rlmesh_lost``), then masked; the new address is dialled in the
        background (even with ``reconnect=False``) and its lanes rejoin as a
        lost endpoint's do, reset and flagged ``rlmesh_restarted``.

        Raises:
            IndexError: no such endpoint. ValueError: lanes or a step in flight. ClosedError.
        """
        self._check_idle()
        if self._step_pending:
            raise ValueError("a step_async() is in flight: call step_wait() first")
        self._drain()
        ep = self._endpoints[index]
        ep.address = str(address)
        ep.epoch += 1
        if ep.state == _LIVE:
            self._lost_pending.add(ep.index)
        ep.state, ep.rejoin = _LOST, None
        ep.inbox.put(("redial", ep.epoch))

    def render(self, *, env_index: int = 0, timeout: float | None = None) -> Any:
        """Render global lane ``env_index`` (its endpoint's ``render(env_index=...)``).

        Raises:
            ValueError: out of range. EndpointLostError: its endpoint is lost.
            RemoteError, OperationTimeout, ClosedError.
        """
        self._check_idle()
        if isinstance(env_index, bool) or not isinstance(env_index, int) or not 0 <= env_index < self._n:
            raise ValueError(f"env_index must be a lane in [0, {self._n}), got {env_index!r}")
        ep = next(e for e in self._endpoints if e.lo <= env_index < e.hi)
        if ep.state == _LOST:
            raise EndpointLostError(
                f"endpoint {ep.index} ({ep.address}) is lost",
                lanes=list(self.lanes_of(ep.index)),
                endpoints=[ep.index],
            )
        deadline = self._deadline(timeout)
        left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        local = env_index - ep.lo
        self._submit(ep, lambda client: client.render(env_index=local, timeout=left))
        answer = self._wait_all({ep.index}, deadline).get(ep.index)
        if answer is None:
            raise EndpointLostError(
                f"endpoint {ep.index} ({ep.address}) missed the deadline",
                lanes=list(self.lanes_of(ep.index)),
                endpoints=[ep.index],
            )
        if answer[0] is not None:
            raise answer[0]
        return self._decode_frame(answer[1])

    def close(self) -> None:
        """Detach from every endpoint and stop the threads. Idempotent; wakes a call in flight."""
        if not self._life.begin_close():
            return
        try:
            self._out.put((None, None, None, None))  # wakes a caller blocked in _take
            self._life.release()
        finally:
            self._life.finish_close()

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{sum(self.live)}/{len(self._endpoints)} live"
        return f"<{type(self).__name__} {self._contract.id} num_envs={self._n} {state}>"

    # -- backend hooks ----------------------------------------------------------------------

    #: The backend whose arrays the calls return: "numpy", "jax" or "rlmesh" (Tensors).
    _backend = "rlmesh"

    def _bridge(self) -> Any:
        from .._bridge import IDENTITY

        if self._backend == "jax":
            from ..backends.jax import BRIDGE

            return BRIDGE
        return IDENTITY

    def _array(self, value: Any) -> Any:
        """A NumPy batch array as this backend's array (NumPy: itself)."""
        if self._backend == "numpy":
            return value
        from ..tensor import Tensor

        value = self._np.ascontiguousarray(value)
        return self._bridge().decode(Tensor.wrap(value, value.shape, value.dtype.name))

    def _host_actions(self, actions: Any) -> Any:
        """Actions as the NumPy clients take them (a backend's arrays become NumPy arrays)."""
        if self._backend == "numpy":
            return actions
        np = self._np

        def host(leaf: Any) -> Any:
            if hasattr(leaf, "__dlpack__") and not isinstance(leaf, np.ndarray):
                return np.from_dlpack(leaf)
            return leaf

        return _tree_map(host, actions)

    def _decode_frame(self, frame: Any) -> Any:
        if frame is None or self._backend == "numpy" or not hasattr(frame, "dtype"):
            return frame
        return self._array(frame)


class ShardedVectorEnv(ShardedVectorEnvBase):
    """A sharded vector env whose batches are :class:`rlmesh.Tensor` (``rlmesh.ShardedVectorEnv``).

    ``rlmesh.numpy.ShardedVectorEnv`` returns NumPy arrays and
    ``rlmesh.jax.ShardedVectorEnv`` JAX arrays; infos hold NumPy arrays in
    every backend. See :class:`ShardedVectorEnvBase`.
    """
