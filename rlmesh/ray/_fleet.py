"""EnvFleet: host actors on a Ray cluster, one placement bundle each, supervised by the driver.

Ray is the control plane only: it places the hosts (one placement group per
fleet, one bundle per host), restarts them, and carries their addresses
(:meth:`Host.info`), death notices (a pending :meth:`Host.watch`) and stats.
The learner steps the hosts' EnvServers over rlmesh's own channel (TCP, or
shared memory when it shares their node), never through Ray.

The supervisor is one driver thread. It keeps a ``watch`` call pending on
every live host; when one fails with Ray's actor error the host died: it is
marked restarting, and an ``info`` call (retried until Ray has rebuilt the
actor, ``max_task_retries=-1``) brings its new address, generation and
restart count. A host whose constructor raised (the crash-loop breaker of
:mod:`rlmesh.ray._host`, or an env that fails to build) is retired.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import ActorDiedError, RayActorError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from .._lifecycle import Lifecycle, State
from .._restart import RestartPolicy
from ..errors import FleetError, OperationTimeout
from ._host import Host, clear_records

__all__ = ["EnvFleet", "HostInfo"]

#: Placement names -> Ray placement group strategies.
_STRATEGIES = {
    "spread": "SPREAD",
    "strict_spread": "STRICT_SPREAD",
    "pack": "PACK",
    "strict_pack": "STRICT_PACK",
}
#: How long a pending watch() waits on the host before it is renewed (seconds).
_WATCH_SECONDS = 30.0
#: How long the supervisor's ray.wait blocks before it checks for stop (seconds).
_TICK = 0.1


@dataclasses.dataclass(frozen=True)
class HostInfo:
    """One host of a fleet, as the supervisor last saw it.

    Attributes:
        index: the host's position; its lanes follow those of the hosts before it.
        state: "starting", "live", "restarting" (it died; Ray is rebuilding
            it), "retired" (it will not come back: see ``error``) or "stopped".
        address: its EnvServer's address, or None before it first started.
        node_id: the Ray node it runs on (hex), or None.
        pid: its process id, or None.
        lanes: how many lanes it serves.
        restarts: how often Ray restarted it.
        generation: how many times it came up (1 after the first start).
        error: why it was retired, or None.
    """

    index: int
    state: str
    address: str | None
    node_id: str | None
    pid: int | None
    lanes: int
    restarts: int
    generation: int
    error: str | None = None


class _Supervisor:
    """The fleet's shared state and its supervising thread (holds no reference to the fleet)."""

    def __init__(self, handles: list[Any], lanes: list[int]) -> None:
        self.handles = handles
        self.lock = threading.Condition()
        self.infos = [HostInfo(i, "starting", None, None, None, n, 0, 0) for i, n in enumerate(lanes)]
        self.listeners: list[Callable[[int, str], None]] = []
        self.stop = threading.Event()
        self._pending: dict[Any, tuple[str, int]] = {}
        self.thread: threading.Thread | None = None

    # -- driver side -----------------------------------------------------------------

    def ask_info(self, index: int) -> None:
        ref = self.handles[index].info.options(max_task_retries=-1).remote()
        self._pending[ref] = ("info", index)

    def begin(self) -> None:
        for index in range(len(self.handles)):
            self.ask_info(index)
        self.thread = threading.Thread(target=self._loop, name="rlmesh-fleet-supervisor", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            refs = list(self._pending)
            if not refs:
                self.stop.wait(_TICK)
                continue
            ready, _ = ray.wait(refs, num_returns=1, timeout=_TICK)
            for ref in ready:
                kind, index = self._pending.pop(ref)
                try:
                    value = ray.get(ref)
                except ActorDiedError as exc:
                    # The actor is dead for good: its constructor raised (the
                    # breaker, or an env that cannot be built) or it was killed.
                    self._retire(index, _reason(exc))
                    continue
                except RayActorError:
                    if kind == "watch":
                        self._died(index)
                    self.ask_info(index)
                    continue
                if kind == "info":
                    self._came_up(index, value)
                elif value and not self.stop.is_set():
                    self._set(index, state="stopped")
                else:
                    self._watch(index)

    def _watch(self, index: int) -> None:
        self._pending[self.handles[index].watch.remote(_WATCH_SECONDS)] = ("watch", index)

    def _set(self, index: int, **changes: Any) -> HostInfo:
        with self.lock:
            info = self.infos[index] = dataclasses.replace(self.infos[index], **changes)
            self.lock.notify_all()
        return info

    def _died(self, index: int) -> None:
        self._set(index, state="restarting")

    def _retire(self, index: int, reason: str) -> None:
        self._set(index, state="retired", error=reason)

    def _came_up(self, index: int, value: dict[str, Any]) -> None:
        old = self.infos[index]
        new = self._set(
            index,
            state="live",
            address=value["address"],
            node_id=value["node_id"],
            pid=value["pid"],
            lanes=value["lanes"],
            restarts=value["restarts"],
            generation=old.generation + 1,
        )
        self._watch(index)
        if old.address is not None and new.address != old.address:
            for listener in list(self.listeners):
                listener(index, value["address"])

    def wait(self, predicate: Callable[[list[HostInfo]], bool], timeout: float | None) -> bool:
        with self.lock:
            return self.lock.wait_for(lambda: predicate(self.infos), timeout)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    # Ray's message quotes the constructor's traceback among lines of its own:
    # keep the error's own line ("rlmesh.errors.FleetError: host 0 ... retired").
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception)(\(\w+\))?: ", line) and "RayActorError" not in line:
            return line
    return lines[0] if lines else type(exc).__name__


def _release(supervisor: _Supervisor, pg: PlacementGroup | None, fleet_id: str) -> None:
    """Stop the supervisor, the hosts' servers and actors, the placement group and the records."""
    supervisor.stop.set()
    if supervisor.thread is not None and supervisor.thread is not threading.current_thread():
        supervisor.thread.join(5.0)
    if not ray.is_initialized():
        return
    stops = [h.shutdown.remote() for h in supervisor.handles]
    try:
        ray.wait(stops, num_returns=len(stops), timeout=10.0)
    except Exception:  # noqa: BLE001 - best effort: the actors are killed next anyway
        pass
    for handle in supervisor.handles:
        try:
            ray.kill(handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
    if pg is not None:
        remove_placement_group(pg)
    clear_records(fleet_id, len(supervisor.handles))


class EnvFleet:
    """A fleet of rlmesh env hosts on a Ray cluster, one host actor per placement bundle.

    Args:
        source: what every host serves: a Gymnasium id (``"CartPole-v1"``) or
            a zero-argument env factory (cloudpickled once, by Ray).
        num_envs: lanes in all; host ``i`` serves ``num_envs // hosts`` lanes,
            one more for the first ``num_envs % hosts`` hosts. A host with two
            lanes or more is a vector endpoint (the vector fast path).
        hosts: how many host actors (default: one per alive Ray node).
        workers_per_host: the vector workers of each host's EnvServer.
        placement: "spread" (default: best effort across nodes, and a lost
            node's host may come back elsewhere), "strict_spread" (distinct
            nodes), "pack" or "strict_pack".
        resources_per_host: each bundle's Ray resources (default ``{"CPU": 1}``;
            Ray's CPUs are logical: declare what a host spawns, ``workers + 1``).
        runtime_env: Ray's ``runtime_env`` for the host actors.
        restart: a host may be restarted ``max_restarts`` times within
            ``window_seconds``; the next death retires it (its lanes stay lost).
        auth_token: the token the hosts' servers require: "auto" (a fresh
            random one), a string, or None (then the servers bind loopback,
            so every host must share the learner's machine).
        idle_timeout_seconds: a host's server stops after this long without a
            request (None: never).
        autoreset_mode: the vector hosts' autoreset mode (as ``EnvServer``).
        make_kwargs: keyword arguments for ``gymnasium.make`` with an id.

    Lifetime: :meth:`start` places the hosts and waits for their addresses;
    :meth:`shutdown` (idempotent; also :meth:`close` and the context manager)
    stops their servers, kills the actors and removes the placement group.
    A fleet dropped unstarted does nothing; one dropped started and never
    shut down is shut down when collected, with a ``ResourceWarning``.
    Ray must be initialized (``ray.init``) before :meth:`start`; the fleet
    never shuts Ray down.

    Raises:
        ValueError: bad counts, an unknown placement, fewer lanes than hosts.
        TypeError: a restart policy that is not a RestartPolicy.
    """

    def __init__(
        self,
        source: Any,
        *,
        num_envs: int,
        hosts: int | None = None,
        workers_per_host: int = 1,
        placement: str = "spread",
        resources_per_host: dict[str, float] | None = None,
        runtime_env: dict[str, Any] | None = None,
        restart: RestartPolicy | None = None,
        auth_token: str | None = "auto",
        idle_timeout_seconds: float | None = None,
        autoreset_mode: str | None = None,
        make_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        if hosts is not None and (isinstance(hosts, bool) or not isinstance(hosts, int) or hosts < 1):
            raise ValueError(f"hosts must be an int >= 1 or None, got {hosts!r}")
        if hosts is not None and hosts > num_envs:
            raise ValueError(f"{hosts} hosts need at least as many lanes, got num_envs={num_envs}")
        if (
            isinstance(workers_per_host, bool)
            or not isinstance(workers_per_host, int)
            or workers_per_host < 1
        ):
            raise ValueError(f"workers_per_host must be an int >= 1, got {workers_per_host!r}")
        if placement not in _STRATEGIES:
            raise ValueError(f"placement must be one of {sorted(_STRATEGIES)}, got {placement!r}")
        restart = restart if restart is not None else RestartPolicy()
        if not isinstance(restart, RestartPolicy):
            raise TypeError(f"restart must be a RestartPolicy, got {type(restart).__name__}")
        self.source = source
        self.num_envs = num_envs
        self.workers_per_host = workers_per_host
        self.placement = placement
        self.restart = restart
        self.auth_token = secrets.token_urlsafe(24) if auth_token == "auto" else auth_token
        self._hosts = hosts
        self._resources = dict(resources_per_host) if resources_per_host is not None else {"CPU": 1.0}
        self._runtime_env = runtime_env
        self._idle = idle_timeout_seconds
        self._server_kwargs: dict[str, Any] = {}
        if autoreset_mode is not None:
            self._server_kwargs["autoreset_mode"] = autoreset_mode
        if make_kwargs:
            self._server_kwargs["make_kwargs"] = dict(make_kwargs)
        self.fleet_id = secrets.token_hex(8)
        self._life = Lifecycle("the EnvFleet", State.NEW)
        self._supervisor: _Supervisor | None = None
        self._pg: PlacementGroup | None = None
        self._envs: list[weakref.ref[Any]] = []

    @property
    def state(self) -> State:
        """NEW until started, OPEN while running, CLOSING/CLOSED at and after shutdown."""
        return self._life.state

    def _lanes(self, hosts: int) -> list[int]:
        base, extra = divmod(self.num_envs, hosts)
        return [base + (i < extra) for i in range(hosts)]

    def start(self, timeout: float | None = 300.0) -> EnvFleet:
        """Place the hosts, start them, and wait until every one reports its address.

        Returns:
            The fleet itself (``fleet = EnvFleet(...).start()``).

        Raises:
            OperationTimeout: the placement group or a host was not ready in time
                (the fleet is shut down).
            FleetError: a host failed to start (its env, or a crash loop; the
                fleet is shut down).
            ClosedError: the fleet was started before, or shut down.
            RuntimeError: Ray is not initialized.
        """
        if not ray.is_initialized():
            raise RuntimeError("rlmesh.ray.EnvFleet.start() needs Ray: call ray.init() first")
        self._life.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        hosts = self._hosts if self._hosts is not None else len([n for n in ray.nodes() if n["Alive"]])  # type: ignore[no-untyped-call]
        hosts = max(1, min(hosts, self.num_envs))
        lanes = self._lanes(hosts)
        self._pg = placement_group(
            [dict(self._resources) for _ in range(hosts)], strategy=_STRATEGIES[self.placement]
        )
        actor = ray.remote(Host)
        cpus = self._resources.get("CPU", 0.0)
        others = {k: v for k, v in self._resources.items() if k not in ("CPU", "GPU", "memory")}
        handles = [
            actor.options(
                max_restarts=-1,
                max_concurrency=4,
                num_cpus=cpus,
                num_gpus=self._resources.get("GPU", 0.0),
                resources=others,
                runtime_env=self._runtime_env,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self._pg, placement_group_bundle_index=i
                ),
            ).remote(
                self.fleet_id,
                i,
                self.source,
                n,
                min(self.workers_per_host, n),
                self.auth_token,
                self.restart,
                self._server_kwargs,
                self._idle,
            )
            for i, n in enumerate(lanes)
        ]
        supervisor = self._supervisor = _Supervisor(handles, lanes)
        self._life.watch(self, _release, supervisor, self._pg, self.fleet_id)
        supervisor.begin()
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done = supervisor.wait(lambda infos: all(i.state != "starting" for i in infos), left)
        failed = [i for i in supervisor.infos if i.state != "live"]
        if not done or failed:
            self.shutdown()
            if not done:
                waiting = [i.index for i in supervisor.infos if i.state == "starting"]
                raise OperationTimeout(
                    f"the fleet's hosts {waiting} did not start within {timeout} s", timeout=timeout
                )
            raise FleetError("; ".join(f"host {i.index} did not start: {i.error or i.state}" for i in failed))
        return self

    def _sup(self) -> _Supervisor:
        self._life.check_open()
        assert self._supervisor is not None
        return self._supervisor

    def hosts(self) -> list[HostInfo]:
        """Every host as the supervisor last saw it (a snapshot).

        Raises:
            ClosedError: the fleet is not running.
        """
        sup = self._sup()
        with sup.lock:
            return list(sup.infos)

    def handles(self) -> list[Any]:
        """The host actors' Ray handles (for ``stats``, or to build on); index = host index.

        Raises:
            ClosedError: the fleet is not running.
        """
        return list(self._sup().handles)

    def wait_live(self, timeout: float | None = None) -> list[HostInfo]:
        """Wait until every host that is not retired is live; return the hosts.

        Raises:
            OperationTimeout: some host was still restarting after ``timeout`` s.
            FleetError: every host is retired.
            ClosedError: the fleet is not running.
        """
        sup = self._sup()
        if not sup.wait(lambda infos: all(i.state in ("live", "retired", "stopped") for i in infos), timeout):
            raise OperationTimeout(f"the fleet's hosts were not all live within {timeout} s", timeout=timeout)
        infos = self.hosts()
        if all(i.state == "retired" for i in infos):
            raise FleetError("every host of the fleet is retired: " + "; ".join(str(i.error) for i in infos))
        return infos

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """Counts over the hosts, and each live host's server stats.

        Keys: ``hosts``, ``live``, ``restarting``, ``retired``, ``lanes``,
        ``live_lanes``, ``restarts`` (in all), ``servers``
        (per host: its EnvServer's ``stats()``, or None if it did not answer
        within ``timeout``).

        Raises:
            ClosedError: the fleet is not running.
        """
        sup = self._sup()
        infos = self.hosts()
        refs = {i.index: sup.handles[i.index].stats.remote() for i in infos if i.state == "live"}
        servers: list[Any] = [None] * len(infos)
        if refs:
            ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
            done = set(ready)
            for index, ref in refs.items():
                if ref in done:
                    try:
                        servers[index] = ray.get(ref)
                    except RayActorError:
                        pass
        live = [i for i in infos if i.state == "live"]
        return {
            "hosts": len(infos),
            "live": len(live),
            "restarting": sum(i.state == "restarting" for i in infos),
            "retired": sum(i.state == "retired" for i in infos),
            "lanes": sum(i.lanes for i in infos),
            "live_lanes": sum(i.lanes for i in live),
            "restarts": sum(i.restarts for i in infos),
            "servers": servers,
        }

    def addresses(self, shard: int = 0, num_shards: int = 1) -> list[str]:
        """The addresses of this shard's hosts (host ``i`` belongs to shard ``i % num_shards``).

        Raises:
            ValueError: a shard outside ``range(num_shards)``.
            FleetError: a host of the shard has no address (it never started).
            ClosedError: the fleet is not running.
        """
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard must be in range({num_shards}), got {shard}")
        out = []
        for info in self.hosts()[shard::num_shards]:
            if info.address is None:
                raise FleetError(f"host {info.index} has no address ({info.state})")
            out.append(info.address)
        return out

    def vector_env(self, backend: str = "numpy", shard: int = 0, num_shards: int = 1, **kwargs: Any) -> Any:
        """A ShardedVectorEnv over this shard's hosts, with the fleet's auth token.

        ``backend``: "numpy" (:class:`rlmesh.numpy.ShardedVectorEnv`), "jax"
        or "gymnasium". Further keyword arguments go to its constructor
        (``on_lost``, ``request_timeout_seconds``...). Lanes follow the hosts'
        order; a host that restarts rejoins through the env's reconnect (on the
        same address when Ray restarts it on the same node; elsewhere the fleet
        hands the env the new address). The caller closes the env.

        Raises:
            ValueError: an unknown backend or shard.
            ClosedError: the fleet is not running.
        """
        addresses = self.addresses(shard, num_shards)
        indices = list(range(len(self.hosts())))[shard::num_shards]
        if backend not in ("numpy", "jax", "gymnasium"):
            raise ValueError(f"backend must be 'numpy', 'jax' or 'gymnasium', got {backend!r}")
        # rlmesh.numpy, rlmesh.jax, rlmesh.gymnasium: imported only when asked for.
        cls: Any = importlib.import_module(f"rlmesh.{backend}").ShardedVectorEnv
        kwargs.setdefault("auth_token", self.auth_token)
        env = cls(addresses, **kwargs)
        ref = weakref.ref(env)
        position = {host: pos for pos, host in enumerate(indices)}

        def moved(index: int, address: str) -> None:
            target = ref()
            if target is not None and index in position and hasattr(target, "replace_endpoint"):
                target.replace_endpoint(position[index], address)

        self._sup().listeners.append(moved)
        return env

    def shutdown(self) -> None:
        """Stop every host's server, kill the host actors, remove the placement group. Idempotent."""
        if not self._life.begin_close():
            return
        try:
            if not self._life.release() and self._supervisor is not None:
                _release(self._supervisor, self._pg, self.fleet_id)
        finally:
            self._life.finish_close()

    close = shutdown

    def __enter__(self) -> EnvFleet:
        if self._life.state is State.NEW:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"EnvFleet({self.source!r}, num_envs={self.num_envs}, state={self._life.state.value})"
