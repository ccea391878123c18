"""One endpoint of a sharded vector env: its client, its thread, its reconnects.

The caller's state of an endpoint (live, lost, rejoined; the call in flight)
lives here too, but only the calling thread touches it; the endpoint's thread
owns the client while it runs a call or reconnects. Layer 4.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from ..errors import ClosedError, OperationTimeout, ProtocolError, RLMeshError, TransportError

log = logging.getLogger("rlmesh.vector.sharded")

#: Reconnect backoff: first delay and cap, in seconds.
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0

#: Endpoint states, as the caller sees them.
LIVE, LOST, REJOINED = "live", "lost", "rejoined"
#: The ticket of a rejoin report.
REJOIN = -1


def is_loss(exc: BaseException) -> bool:
    """Errors that lose an endpoint (not an env's own error, not a bad argument)."""
    return isinstance(exc, (TransportError, OperationTimeout, ProtocolError, ClosedError))


class Endpoint:
    """One endpoint: its client, its thread and where the caller stands with it.

    Holds no reference to the sharded env (its finalizer closes endpoints).
    """

    def __init__(
        self,
        index: int,
        address: str,
        lo: int,
        client: Any,
        connect: Callable[[str], Any],
        out: queue.SimpleQueue[Any],
        reconnect: bool,
    ) -> None:
        self.index = index
        self.address = address
        self.lo = lo
        self.n: int = client.num_envs
        self.client: Any = client
        self.contract = client.env_contract
        self._connect = connect
        self._out = out
        self.reconnect_on = reconnect
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # The caller's side (only the calling thread touches these).
        self.state = LIVE
        self.ticket: int | None = None  # the command in flight on the thread
        self.rejoin: Any = None  # (obs, info) of a rejoin not yet delivered
        self.last_obs: Any = None
        self.seeds: list[int | None] | None = None  # the last seeded reset's seeds, for a rejoin
        self.thread = threading.Thread(target=self._run, name=f"rlmesh-shard-{index}", daemon=True)
        self._failed: int | None = None  # the thread's side: the last ticket whose call failed
        # Redials so far: the caller's count (epoch) and the thread's (_epoch, from the
        # commands); a rejoin report carries the thread's, so one for an old address is dropped.
        self.epoch = 0
        self._epoch = 0
        self.thread.start()

    @property
    def hi(self) -> int:
        return self.lo + self.n

    # -- the endpoint's thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            command = self.inbox.get()
            kind = command[0]
            if kind == "close":
                self._drop_client()
                return
            if kind == "redial":
                self._epoch = command[1]
            if kind == "lost" or kind == "redial":
                # The caller gave up on the endpoint (a missed deadline, an inline
                # loss), or moved it to another address (replace_endpoint).
                if kind == "redial" or command[1] is None or command[1] != self._failed:
                    self._drop_client()
                    if not self._reconnect(force=kind == "redial"):
                        return
                continue
            _, ticket, call = command
            try:
                result = call(self.client)
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                self._out.put((self.index, ticket, exc, None))
                if is_loss(exc):
                    self._failed = ticket
                    self._drop_client()
                    if not self._reconnect():
                        return
                continue
            self._out.put((self.index, ticket, None, result))

    def _drop_client(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                client.close()
            except RLMeshError:
                pass  # a broken session closes all the same

    def _reconnect(self, force: bool = False) -> bool:
        """Dial :attr:`address` until a compatible server answers; False when told to close.

        Without ``reconnect`` (and not ``force``: a new address) it only waits
        for a redial or the close.
        """
        if not self.reconnect_on and not force:
            return self._wait_close()
        delay = BACKOFF_FIRST
        while True:
            try:
                command = self.inbox.get(timeout=delay)
            except queue.Empty:
                command = None
            if command is not None and command[0] == "close":
                return False
            if command is not None and command[0] == "redial":
                self._epoch = command[1]
                delay = BACKOFF_FIRST  # a new address: dial it now
            delay = min(delay * 2, BACKOFF_MAX)
            try:
                client = self._connect(self.address)
            except RLMeshError as exc:
                log.debug("endpoint %s: reconnect failed: %s", self.address, exc)
                continue
            try:
                problem = mismatch(self.contract, client.env_contract)
                if problem:
                    log.warning("endpoint %s came back with %s; not rejoining", self.address, problem)
                    client.close()
                    continue
                seeds = self.seeds
                obs, info = client.reset(seed=list(seeds) if seeds is not None else None)
            except RLMeshError as exc:
                log.debug("endpoint %s: reset after reconnect failed: %s", self.address, exc)
                client.close()
                continue
            self.client = client
            self._out.put((self.index, REJOIN, self._epoch, (obs, info)))
            return True

    def _wait_close(self) -> bool:
        while True:
            command = self.inbox.get()
            if command[0] == "close":
                return False
            if command[0] == "redial":
                self._epoch = command[1]
                return self._reconnect(force=True)


def release(endpoints: list[Endpoint]) -> None:
    """Close every endpoint: stop its thread (it closes its client)."""
    for ep in endpoints:
        ep.inbox.put(("close",))
    for ep in endpoints:
        if ep.thread is not threading.current_thread():
            ep.thread.join(timeout=5.0)


def mismatch(first: Any, other: Any) -> str:
    """What differs between two endpoints' contracts that lanes must share ("" if nothing)."""
    if other.observation_space != first.observation_space:
        return f"observation space {other.observation_space!r} (expected {first.observation_space!r})"
    if other.action_space != first.action_space:
        return f"action space {other.action_space!r} (expected {first.action_space!r})"
    if other.autoreset_mode != first.autoreset_mode:
        return f"autoreset mode {other.autoreset_mode} (expected {first.autoreset_mode})"
    return ""
