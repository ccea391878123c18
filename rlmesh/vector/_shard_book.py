"""The lane bookkeeping of :class:`rlmesh.vector.sharded.ShardedVectorEnvBase`.

Which global lanes each endpoint owns, the endpoint threads' reports (answers,
losses, rejoins) and the deadlines they are waited on with, and the assembly
of one batch over all lanes with its ``rlmesh_live`` / ``rlmesh_lost`` /
``rlmesh_restarted`` flags. :class:`_ShardBook` is the base the sharded env
inherits these from; it owns nothing itself (its attributes are set by the
env's constructor). Split from ``rlmesh.vector.sharded``, which re-exports
``DEADLINE_GRACE``.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from typing import Any

from .._lifecycle import Lifecycle
from ..client import _seconds
from ..errors import EndpointLostError
from ._batches import (
    merge_infos as _merge_infos,
    tree_concat as _tree_concat,
    tree_map as _tree_map,
    without_bookkeeping as _without_bookkeeping,
)
from ._endpoint import (
    LIVE as _LIVE,
    LOST as _LOST,
    REJOIN as _REJOIN,
    REJOINED as _REJOINED,
    Endpoint as _Endpoint,
    is_loss as _is_loss,
)

#: The logger of ``rlmesh.vector.sharded``, where this code was first: log filters keep working.
log = logging.getLogger("rlmesh.vector.sharded")


#: How long past a call's deadline an endpoint thread may take to answer before it counts as lost.
DEADLINE_GRACE = 1.0

#: One endpoint's share of a batch: (endpoint, obs, rewards, terminated, truncated, info).
_Part = tuple["_Endpoint", Any, Any, Any, Any, "dict[str, Any] | None"]


class _ShardBook:
    """Lane bookkeeping shared by the sharded env's calls (see the module's docstring)."""

    # Set by ShardedVectorEnvBase.__init__.
    _np: Any
    _on_lost: str
    _timeout_default: float | None
    _out: queue.SimpleQueue[Any]
    _endpoints: list[_Endpoint]
    _ticket: int
    _pending: dict[int, range]
    _ready: list[tuple[int, Any, Any]]
    _life: Lifecycle

    def lanes_of(self, endpoint_index: int) -> range:
        """The global lanes of endpoint ``endpoint_index``."""
        ep = self._endpoints[endpoint_index]
        return range(ep.lo, ep.hi)

    # -- plumbing -------------------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float | None:
        seconds = self._timeout_default if timeout is None else _seconds("timeout", timeout, None)
        return None if seconds is None else time.monotonic() + seconds

    def _submit(self, ep: _Endpoint, call: Callable[[Any], Any]) -> None:
        self._ticket += 1
        ep.ticket = self._ticket
        ep.inbox.put(("call", self._ticket, call))

    def _lose(self, ep: _Endpoint, tell_thread: bool) -> None:
        """Mask ``ep``; ``tell_thread``: its thread must drop the client (the caller gave up on it).

        The thread is told which call was abandoned (None: an inline call), so a
        call that failed there already (and was redialled) is not redialled twice.
        """
        ep.state = _LOST
        if tell_thread:
            ep.inbox.put(("lost", ep.ticket))
        ep.ticket = None

    def _take(self, timeout: float | None) -> Any:
        """The next report of an endpoint thread, or None after ``timeout``; ClosedError once closed."""
        try:
            item = (
                self._out.get(timeout=timeout) if timeout is None or timeout > 0 else self._out.get_nowait()
            )
        except queue.Empty:
            item = None
        self._life.check_open()
        if item is None or item[0] is None:
            return None
        index, ticket, exc, result = item
        ep = self._endpoints[index]
        if ticket == _REJOIN:
            if exc != ep.epoch:
                return None  # a rejoin at the address replace_endpoint left
            ep.state = _REJOINED
            ep.rejoin = result
            return None
        if ticket != ep.ticket:
            return None  # the late answer to a call the caller gave up on
        ep.ticket = None
        if exc is not None and _is_loss(exc):
            log.warning("endpoint %d (%s) lost: %s", index, ep.address, exc)
            self._lose(ep, tell_thread=False)
        return ep, exc, result

    def _drain(self) -> None:
        """Take the reports already there (rejoins) without waiting."""
        while self._take(0) is not None or not self._out.empty():
            pass

    def _wait_all(self, waiting: set[int], deadline: float | None) -> dict[int, tuple[Any, Any]]:
        """Collect the answers of the endpoints in ``waiting`` (losses past the deadline's grace)."""
        got: dict[int, tuple[Any, Any]] = {}
        while waiting:
            if deadline is None:
                left: float | None = None
            else:
                left = deadline + DEADLINE_GRACE - time.monotonic()
                if left <= 0:
                    for index in waiting:
                        ep = self._endpoints[index]
                        log.warning("endpoint %d (%s) missed the deadline: lost", index, ep.address)
                        self._lose(ep, tell_thread=True)
                    break
            taken = self._take(left)
            if taken is None:
                continue
            ep, exc, result = taken
            if ep.index in waiting:
                waiting.discard(ep.index)
                got[ep.index] = (exc, result)
        return got

    # -- assembling batches ---------------------------------------------------------------

    def _filler(self, ep: _Endpoint, last: bool) -> Any:
        np = self._np
        template = ep.last_obs
        if template is None:
            for other in self._endpoints:
                if other.last_obs is not None:
                    template = _tree_map(lambda a: a[:1].repeat(ep.n, axis=0), other.last_obs)
                    break
        if template is None:
            return None
        if last and ep.last_obs is not None:
            return ep.last_obs
        return _tree_map(np.zeros_like, template)

    def _assemble(
        self, parts: list[_Part], lost: set[int], restarted: set[int]
    ) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """One batch over ``parts`` (endpoint, obs, rewards, terminated, truncated, info), in lane order."""
        np = self._np
        obs = _tree_concat(np, [p[1] for p in parts])
        rewards = np.concatenate([p[2] for p in parts]) if len(parts) > 1 else parts[0][2]
        terminated = np.concatenate([p[3] for p in parts]) if len(parts) > 1 else parts[0][3]
        truncated = np.concatenate([p[4] for p in parts]) if len(parts) > 1 else parts[0][4]
        info = _merge_infos(np, [(p[5], p[0].n) for p in parts])
        n = len(rewards)
        # One block each for the three flag arrays and their masks: two allocations a step.
        flags = np.zeros((3, n), dtype=np.bool_)
        live, lost_flags, restarted_flags = flags
        if lost or restarted or any(p[0].state == _LOST for p in parts):
            at = 0  # parts come in lane order (a recv's subset packed)
            for ep, *_ in parts:
                live[at : at + ep.n] = ep.state != _LOST
                lost_flags[at : at + ep.n] = ep.index in lost
                restarted_flags[at : at + ep.n] = ep.index in restarted
                at += ep.n
        else:
            live.fill(True)
        prior = info.get("rlmesh_restarted")
        if prior is not None and len(prior) == n:  # a worker restart inside an endpoint
            mask = info.get("_rlmesh_restarted", prior)
            restarted_flags |= np.asarray(prior, dtype=np.bool_) & np.asarray(mask, dtype=np.bool_)
        masks = np.ones((3, n), dtype=np.bool_)
        info["rlmesh_live"], info["_rlmesh_live"] = live, masks[0]
        info["rlmesh_lost"], info["_rlmesh_lost"] = lost_flags, masks[1]
        info["rlmesh_restarted"], info["_rlmesh_restarted"] = restarted_flags, masks[2]
        return obs, rewards, terminated, truncated, info

    def _masked_part(self, ep: _Endpoint, lost_now: bool) -> tuple[Any, ...]:
        np = self._np
        obs = self._filler(ep, last=lost_now)
        if obs is None:
            raise EndpointLostError(
                f"endpoint {ep.index} ({ep.address}) is lost and no observation was ever received",
                lanes=list(range(ep.lo, ep.hi)),
                endpoints=[ep.index],
            )
        trunc = np.full(ep.n, lost_now, dtype=np.bool_)
        return (ep, obs, np.zeros(ep.n), np.zeros(ep.n, dtype=np.bool_), trunc, None)

    def _rejoin_part(self, ep: _Endpoint) -> tuple[Any, ...]:
        np = self._np
        obs, info = ep.rejoin
        ep.rejoin = None
        ep.state = _LIVE
        ep.last_obs = obs
        zeros = np.zeros(ep.n, dtype=np.bool_)
        return (ep, obs, np.zeros(ep.n), zeros, zeros.copy(), _without_bookkeeping(info))

    def _raise_if_lost(self, batch: Any, lost: set[int], what: str) -> None:
        if lost and self._on_lost == "raise":
            lanes = [g for i in sorted(lost) for g in self.lanes_of(i)]
            names = ", ".join(f"{i} ({self._endpoints[i].address})" for i in sorted(lost))
            raise EndpointLostError(
                f"{what}: lost endpoint(s) {names}, lanes {lanes}",
                lanes=lanes,
                endpoints=sorted(lost),
                partial=batch,
            )

    def _check_idle(self) -> None:
        self._life.check_open()
        if self._pending or self._ready:
            raise ValueError("lanes are in flight (send() without recv()): recv() them first")
