"""The server's side of the vector fast path: the env source, the worker pool, the relay env.

:class:`VectorSource` turns what ``EnvServer(source, num_envs=N,
vectorization_mode="async")`` was given into data a fresh interpreter can
act on: a Gymnasium id with its make kwargs, or a ``"module:qualname"``
reference to a factory (checked at construction: it must name the very
object given). It builds one env in-process once, to learn the spaces,
metadata and spec (as Gymnasium's AsyncVectorEnv does), then closes it.

:class:`WorkerPool` is one session's W worker processes and its segment
(:mod:`rlmesh.vector._layout`). Workers are started with ``subprocess``
(``python -m rlmesh.vector._worker``, never a bare fork, never pickle) from
the session's thread, which lives as long as the pool: their parent-death
signal is tied to that thread. A monitor thread watches their pidfds: a
worker that dies is noticed in :meth:`WorkerPool._on_worker_lost`, the one
place that handles it: under a :class:`~rlmesh.RestartPolicy` the monitor
respawns it (the new worker serves the command the client wrote for the dead
one, reporting its lanes' new episodes flagged ``rlmesh_restarted``);
otherwise, or in a crash loop, it marks the worker LOST in the segment and
rings the client, which raises WorkerError naming its lanes. Render and
close travel on per-worker control socketpairs.

:class:`PoolVectorEnv` is the pool as a Gymnasium-like vector env, driven
through :class:`~rlmesh.vector.lanes.Lanes` inside the server: the session
serves it like any vector env to clients that do not take the fast path
(TCP, inline, older clients), and renders lanes for every client.

Lifetime: a pool starts its workers in the constructor (and reaps whatever
it started if that fails); :meth:`WorkerPool.close` asks each worker to
close its envs, then terminates and kills stragglers after a grace period,
closes the sockets and the segment. Idempotent; a pool never closed kills
its workers and releases its segment when garbage collected, with a
``ResourceWarning``.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import msgpack

from .._lifecycle import Lifecycle, State
from .._restart import RestartPolicy
from ..errors import BusyError, ClosedError, RemoteError, RLMeshError
from ..shm import Segment, SegmentKind
from ..shm.doorbell import Doorbell
from ..specs import EnvContract
from . import _layout as L
from ._control import recv_msg, send_msg
from ._worker import resolve_reference

__all__ = ["PoolVectorEnv", "VectorEnvSource", "VectorSource", "WorkerPool", "default_workers"]

log = logging.getLogger(__name__)

#: How long a pool waits for its workers to build their envs and report ready.
START_TIMEOUT = 120.0
#: How long closing workers get before they are terminated, then killed.
CLOSE_GRACE = 2.0
#: The deadline of a step or reset the server relays for a client off the fast path.
RELAY_TIMEOUT = 300.0
#: How long a respawned worker may take to build its envs and report ready.
RESTART_TIMEOUT = 60.0

AUTORESET_MODES = ("NextStep", "SameStep", "Disabled")


def default_workers(num_envs: int) -> int:
    """``min(num_envs, cores - 1)``, at least 1: one core stays free for the client's policy."""
    return max(1, min(num_envs, (os.cpu_count() or 1) - 1))


def _callable_ref(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    hint = (
        "the vector fast path starts its workers in fresh interpreters, which import the factory by "
        'name: use a module-level factory (or a Gymnasium id), or vectorization_mode="sync"'
    )
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise TypeError(f"{obj!r} cannot be imported by reference; {hint}")
    ref = f"{module}:{qualname}"
    try:
        found = resolve_reference(ref)
    except Exception:
        raise TypeError(f"{ref} cannot be imported; {hint}") from None
    if found is not obj:
        raise TypeError(f"{ref} names another object than the factory given; {hint}")
    return ref


class VectorSource:
    """Where a vector endpoint's lanes come from, as data for its workers.

    Args:
        source: a Gymnasium id, a ``"module:factory"`` string, or a zero-argument callable
            (a module-level function or class).
        num_envs: N >= 2.
        make_kwargs: keyword arguments for ``gymnasium.make`` (or the factory).
        autoreset_mode: "NextStep", "SameStep" or "Disabled".

    Raises:
        TypeError: a callable that cannot be imported by reference, a vector env as source,
            or spaces the fast path cannot carry (Text).
        ValueError: bad num_envs or autoreset_mode.
    """

    def __init__(self, source: Any, num_envs: int, make_kwargs: dict[str, Any], autoreset_mode: str) -> None:
        if autoreset_mode not in AUTORESET_MODES:
            raise ValueError(
                f"autoreset_mode must be one of {', '.join(AUTORESET_MODES)}, got {autoreset_mode!r}"
            )
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 2:
            raise ValueError(f"num_envs must be an int >= 2 for a vector endpoint, got {num_envs!r}")
        self.num_envs = num_envs
        self.autoreset_mode = autoreset_mode
        self.kwargs = dict(make_kwargs)
        data: dict[str, Any]
        if isinstance(source, str):
            target = None
            if ":" in source:
                try:
                    target = resolve_reference(source)
                except Exception:
                    target = None  # a Gymnasium "module:Env-v0" id
            if target is not None and callable(target):
                data = {"kind": "ref", "ref": source, "kwargs": self.kwargs}
                self._make = lambda: target(**self.kwargs)
            else:
                data = {"kind": "gym", "id": source, "kwargs": self.kwargs}
                self._make = lambda: _gym_make(source, self.kwargs)
        elif callable(source):
            data = {"kind": "ref", "ref": _callable_ref(source), "kwargs": self.kwargs}
            self._make = lambda: source(**self.kwargs)
        else:
            raise TypeError(
                f"a vector source must be a Gymnasium id or a factory, got {type(source).__name__}"
            )
        try:
            msgpack.packb(data)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(
                "the vector fast path sends make_kwargs to its workers as msgpack, and these are not "
                f'({exc}); pass plain data, or use vectorization_mode="sync"'
            ) from None
        self.data = data
        probe = self._make()  # type: ignore[no-untyped-call]
        try:
            if any(hasattr(probe, name) for name in ("num_envs", "single_observation_space")):
                raise TypeError(
                    "the vector fast path needs a factory of single envs, and this one builds a vector "
                    'env: serve it with vectorization_mode="sync"'
                )
            self.facade = PoolVectorEnv.describe(probe, num_envs, autoreset_mode)
        finally:
            try:
                probe.close()
            except Exception:
                log.exception("closing the probe env failed")


def _gym_make(env_id: str, kwargs: dict[str, Any]) -> Any:
    try:
        import gymnasium
    except ImportError as exc:
        from ..errors import BackendUnavailable

        raise BackendUnavailable(
            f'serving the Gymnasium id {env_id!r} needs gymnasium: pip install "rlmesh[gymnasium]"'
        ) from exc
    return gymnasium.make(env_id, **kwargs)


# -- the pool -----------------------------------------------------------------------------


def _watch(pool_ref: weakref.ref[WorkerPool], pidfds: list[int], stopping: threading.Event) -> None:
    """The monitor thread: a worker whose pidfd turns readable has exited.

    It is also the parent of respawned workers (their parent-death signal is
    tied to it), so it runs until the pool has reaped them.
    """
    poller = select.poll()
    index = {}
    for w, fd in enumerate(pidfds):
        poller.register(fd, select.POLLIN)
        index[fd] = w
    while not stopping.is_set() and index:
        for fd, _ in poller.poll(200):
            poller.unregister(fd)
            w = index.pop(fd)
            pool = pool_ref()
            if pool is None or stopping.is_set():
                return
            new = pool._on_worker_lost(w)
            if new is not None:  # respawned: watch the new process
                poller.register(new, select.POLLIN)
                index[new] = w
            del pool


def _reap(
    procs: list[subprocess.Popen[bytes]],
    socks: list[socket.socket],
    segment: Segment | None,
    stopping: threading.Event | None = None,
    pidfds: list[int] | None = None,
    fds: list[int] | None = None,
) -> None:
    # The finalizer of a pool never closed (and the failure path of its
    # constructor): raw resources only, never the pool.
    if stopping is not None:
        stopping.set()
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - a SIGKILLed process always goes
            pass
    for sock in socks:
        sock.close()
    if segment is not None:
        if segment.is_creator:
            segment.unlink()  # the name goes now, whatever views still hold the mapping
        try:
            segment.close_when_unpinned()
        except BusyError:
            pass  # a view is alive somewhere (a relay's array): the segment's finalizer unmaps it
    for box in (pidfds, fds):
        if box:
            for fd in box:
                try:
                    os.close(fd)
                except OSError:
                    pass
            box.clear()


def _ready(w: int, sock: socket.socket, timeout: float) -> int:
    """Wait for worker ``w``'s ``["ready", pid]``; its pid.

    Raises:
        RemoteError: it could not build its envs. OperationTimeout, BrokenError: no answer.
    """
    reply = recv_msg(sock, timeout)
    if not (isinstance(reply, list) and len(reply) >= 2 and reply[0] == "ready"):
        kind, message, tb = (
            (list(reply[1:4]) + ["", "", ""])[:3] if isinstance(reply, list) else ("?", "?", "")
        )
        raise RemoteError(
            f"vector worker {w} could not build its envs: {kind}: {message}",
            remote_type=str(kind),
            remote_message=str(message),
            remote_traceback=str(tb),
        )
    return int(reply[1])


class WorkerPool:
    """One session's worker processes and segment (see the module docstring).

    Args:
        source: the lanes' source.
        contract: the vector contract (its spaces size the segment).
        workers: W, 1 <= W <= N.
        buffers: K, the leased output buffers.
        restart: respawn workers that die, within this policy's budget (None: never).
        on_restart: called (on the monitor thread) after each successful respawn.
        memfd: make the segment a sealed memfd (a session over a Unix socket
            passes it to the client as a descriptor; workers get it inherited).

    Raises:
        RemoteError: a worker could not build its envs (the remote traceback attached).
        OperationTimeout: the workers were not ready within START_TIMEOUT.
        ShmError: no room for the segment.
    """

    def __init__(
        self,
        source: VectorSource,
        contract: EnvContract,
        workers: int,
        buffers: int = L.DEFAULT_BUFFERS,
        *,
        restart: RestartPolicy | None = None,
        on_restart: Callable[[], None] | None = None,
        memfd: bool = False,
    ) -> None:
        self.layout = layout = L.Layout.build(contract, workers, buffers)
        self.contract = contract
        self._source = source
        self._procs: list[subprocess.Popen[bytes]] = []
        self._socks: list[socket.socket] = []
        self.segment: Segment | None = None
        self._life = Lifecycle("the vector worker pool")
        self._ctl_lock = threading.Lock()
        self._stopping = threading.Event()
        # Set (under _respawn_lock) when close() begins: deaths are expected, nothing is respawned.
        self._closing = threading.Event()
        self._respawn_lock = threading.Lock()
        self._budgets = [restart.budget() for _ in range(workers)] if restart is not None else None
        self._on_restart = on_restart
        #: Workers found dead and not respawned (by index).
        self.lost: set[int] = set()
        self.pids: list[int] = []
        #: Workers respawned under the restart policy.
        self.restarts = 0
        # Under a restart policy: a descriptor of the segment, passed to every worker
        # (a respawned one maps the segment through it once the name is unlinked).
        self._fds: list[int] = []
        try:
            if memfd:
                self.segment = Segment.create_memfd(layout.size, SegmentKind.OTHER)
            else:
                self.segment = Segment.create(layout.size, SegmentKind.OTHER)
            buf = self.segment.buf
            for i, value in enumerate((L.MAGIC, L.VERSION, layout.num_envs, layout.workers, layout.buffers)):
                buf[L.HEADER + 4 * i : L.HEADER + 4 * i + 4] = value.to_bytes(4, "little")
            self._bells = [
                Doorbell(buf, layout.worker_block(w) + L.W_BELL, self.segment.address) for w in range(workers)
            ]
            self._client_bell = Doorbell(buf, L.CLIENT_BELL, self.segment.address)
            if restart is not None or memfd:
                # A memfd has no name: every worker maps it through this descriptor.
                self._fds.append(self.segment.dup_fd())
            self._start(source, workers)
        except BaseException:
            _reap(self._procs, self._socks, self.segment, fds=self._fds)
            raise
        self._pidfds = [os.pidfd_open(p.pid) for p in self._procs]
        self._life.watch(
            self, _reap, self._procs, self._socks, self.segment, self._stopping, self._pidfds, self._fds
        )
        # The monitor holds the pool weakly: a pool dropped unclosed is still collected (and reaped).
        self._monitor = threading.Thread(
            target=_watch,
            args=(weakref.ref(self), list(self._pidfds), self._stopping),
            name="rlmesh-vector-monitor",
            daemon=True,
        )
        self._monitor.start()

    def _start(self, source: VectorSource, workers: int) -> None:
        for w in range(workers):
            mine, proc = self._spawn(w, restarted=False)
            self._socks.append(mine)
            self._procs.append(proc)
        deadline = time.monotonic() + START_TIMEOUT
        for w, sock in enumerate(self._socks):
            self.pids.append(_ready(w, sock, max(deadline - time.monotonic(), 0.01)))

    def _spawn(self, w: int, *, restarted: bool) -> tuple[socket.socket, subprocess.Popen[bytes]]:
        """Start worker ``w``'s process and send it its configuration; (control socket, process)."""
        assert self.segment is not None
        source = self._source
        workers = self.layout.workers
        spins, allowance = L.spin_plan(workers, os.cpu_count() or 1)
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
        mine, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "rlmesh.vector._worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(), *self._fds),
                stdin=subprocess.DEVNULL,
                env=env,
                close_fds=True,
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        config = {
            "parent": os.getpid(),
            "index": w,
            "segment": self.segment.name,
            "size": self.segment.size,
            "layout": self.layout.to_dict(),
            "source": source.data,
            "autoreset_mode": source.autoreset_mode,
            "kinds": L.composite_kinds(self.contract.action_space),
            "spin": 200e-6 if spins else 0.0,
            "spin_allowance": allowance,
            "sys_path": [p for p in sys.path if p],
            "restarted": restarted,
            "segment_fd": self._fds[0] if self._fds else None,
            "memfd": self.segment.is_memfd,
        }
        try:
            send_msg(mine, config, 10.0)
        except BaseException:
            proc.kill()
            proc.wait()
            mine.close()
            raise
        return mine, proc

    # -- state ----------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """OPEN or CLOSED (see :mod:`rlmesh._lifecycle`)."""
        return self._life.state

    def offer(self) -> dict[str, Any]:
        """What the client needs to take the fast path: the segment's name and size, and the layout."""
        self._life.check_open()
        assert self.segment is not None
        return {"segment": self.segment.name, "size": self.segment.size, "layout": self.layout.to_dict()}

    def fileno(self) -> int | None:
        """The segment's descriptor if it is a memfd (to pass to the client), else None."""
        self._life.check_open()
        assert self.segment is not None
        return self.segment.fileno() if self.segment.is_memfd else None

    def unlink(self) -> None:
        """Remove the segment's name (everyone who needs it has mapped it). Idempotent."""
        if self.segment is not None and self._life.state is State.OPEN:
            self.segment.unlink()

    # -- faults ---------------------------------------------------------------------------------

    def _on_worker_lost(self, index: int) -> int | None:
        """Worker ``index`` died: the one place that handles it (on the monitor thread).

        Under the restart policy, with budget left, respawns it and returns
        the new process's pidfd (for the monitor to watch): the client's
        waiting call simply ends later, with the lanes' new episodes.
        Otherwise (no policy, a crash loop, a respawn that failed) marks the
        worker LOST in its block, with the reason in its error area, and
        rings the client, whose waiting call raises
        :class:`~rlmesh.errors.WorkerError` naming the worker's lanes; returns None.
        """
        segment = self.segment
        if segment is None or segment.closed or self._closing.is_set():
            return None
        lo, hi = self.layout.groups[index]
        code = self._procs[index].poll()
        reason = f"exit status {code}"
        log.warning("vector worker %d (lanes %d..%d) died (%s)", index, lo, hi - 1, reason)
        if self._budgets is not None:
            budget = self._budgets[index]
            if budget.allow():
                try:
                    return self._respawn(index)
                except Exception as exc:
                    log.warning("vector worker %d could not be restarted: %s", index, exc)
                    reason += f"; the restart failed: {exc}"
            else:
                policy = budget.policy
                reason += (
                    f"; restarted {budget.recent()} times within {policy.window_seconds:g}s already, "
                    f"the restart policy's max_restarts={policy.max_restarts}: a crash loop"
                )
        if self._closing.is_set():
            return None
        self.lost.add(index)
        block = self.layout.worker_block(index)
        record = bytes(msgpack.packb(["WorkerLost", reason, "", -1]))[: L.ERROR_BYTES]
        start = self.layout.errors + index * L.ERROR_BYTES
        segment.buf[start : start + len(record)] = record
        segment.buf[block + L.W_ERR_LEN : block + L.W_ERR_LEN + 4] = len(record).to_bytes(4, "little")
        segment.buf[block + L.W_STATUS : block + L.W_STATUS + 4] = L.STATUS_LOST.to_bytes(4, "little")
        self._client_bell.ring()
        return None

    def _respawn(self, index: int) -> int | None:
        """Replace dead worker ``index``; the new process's pidfd, or None if the pool is closing.

        Raises:
            RemoteError: the new worker could not build its envs. OperationTimeout,
            BrokenError: it did not report ready in time, or died first.
        """
        with self._respawn_lock:
            if self._closing.is_set():
                return None
            # close() and the finalizer reap what the lists hold: the new process is there at once.
            sock, proc = self._spawn(index, restarted=True)
            with self._ctl_lock:
                old, self._socks[index] = self._socks[index], sock
                self._procs[index] = proc
            old.close()
        pid = _ready(index, sock, RESTART_TIMEOUT)
        with self._respawn_lock:
            if self._closing.is_set():
                return None
            pidfd = os.pidfd_open(proc.pid)
            old_fd, self._pidfds[index] = self._pidfds[index], pidfd
            os.close(old_fd)
            self.pids[index] = pid
            self.restarts += 1
        lo, hi = self.layout.groups[index]
        log.warning("vector worker %d (lanes %d..%d) restarted (pid %d)", index, lo, hi - 1, pid)
        if self._on_restart is not None:
            self._on_restart()
        return pidfd

    # -- control --------------------------------------------------------------------------------

    def control(self, w: int, message: list[Any], timeout: float | None) -> Any:
        """Send a control message to worker ``w`` and return its answer.

        Raises:
            RemoteError: the worker's env raised. WorkerError: the worker is dead.
            OperationTimeout: no answer in time. ClosedError: the pool is closed.
        """
        from ..errors import WorkerError

        self._life.check_open()
        if w in self.lost:
            lanes = list(range(*self.layout.groups[w]))
            raise WorkerError(f"vector worker {w} (lanes {lanes}) died", lanes=lanes, worker=w)
        assert self.segment is not None
        block = self.layout.worker_block(w)
        with self._ctl_lock:
            send_msg(self._socks[w], message, timeout)
            self.segment.buf[block + L.W_CTL : block + L.W_CTL + 4] = (1).to_bytes(4, "little")
            self._bells[w].ring()
            reply = recv_msg(self._socks[w], timeout)
        if isinstance(reply, list) and reply and reply[0] == "ok":
            return reply[1] if len(reply) > 1 else None
        kind, message_, tb = (
            (list(reply[1:4]) + ["", "", ""])[:3] if isinstance(reply, list) else ("?", "?", "")
        )
        raise RemoteError(
            f"the env raised {kind}: {message_}",
            remote_type=str(kind),
            remote_message=str(message_),
            remote_traceback=str(tb),
        )

    def render(self, lane: int, timeout: float | None = 30.0) -> Any:
        """Lane ``lane``'s frame: a numpy array, a string, a list of frames or None.

        Raises:
            ValueError: ``lane`` out of range. As :meth:`control`.
        """
        import numpy as np

        frame = self.control(self.layout.worker_of(lane), ["render", lane], timeout)

        def decode(value: Any) -> Any:
            if isinstance(value, dict):
                dtype = np.dtype(str(value["dtype"]))
                shape = tuple(int(d) for d in value["shape"])
                data = value["data"]
                count = 1
                for d in shape:
                    count *= d
                if dtype.kind not in "biuf" or len(data) != count * dtype.itemsize:
                    raise RLMeshError("a worker sent a malformed frame")
                return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
            if isinstance(value, list):
                return [decode(v) for v in value]
            return value

        return decode(frame)

    # -- closing --------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every worker's envs and reap the workers; release the sockets and segment. Idempotent."""
        if not self._life.begin_close():
            return
        try:
            self._life.forget()
            with self._respawn_lock:
                self._closing.set()
            deadline = time.monotonic() + CLOSE_GRACE
            segment = self.segment
            for w, sock in enumerate(self._socks):
                if self._procs[w].poll() is not None:
                    continue
                try:
                    send_msg(sock, ["close"], 0.5)
                    if segment is not None:
                        block = self.layout.worker_block(w)
                        segment.buf[block + L.W_CTL : block + L.W_CTL + 4] = (1).to_bytes(4, "little")
                        self._bells[w].ring()
                except RLMeshError:
                    pass
            for proc in self._procs:
                try:
                    proc.wait(max(deadline - time.monotonic(), 0.0))
                except subprocess.TimeoutExpired:
                    proc.terminate()
            for proc in self._procs:
                try:
                    proc.wait(1.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
            self._stopping.set()
            self._monitor.join(1.0)
            self._bells = []
            self._client_bell = None  # type: ignore[assignment]
            _reap(self._procs, self._socks, segment, self._stopping, self._pidfds, self._fds)
        finally:
            self._life.finish_close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- the pool as a vector env (the server's relay) -----------------------------------------


class _LaneRender:
    """``envs[i]`` of a :class:`PoolVectorEnv`: renders lane i through its worker."""

    def __init__(self, env: PoolVectorEnv, lane: int) -> None:
        self._env = env
        self._lane = lane

    def render(self) -> Any:
        pool = self._env.pool
        if pool is None:
            raise ClosedError("the vector env has no workers")
        return pool.render(self._lane)


class PoolVectorEnv:
    """The worker pool as a Gymnasium-like vector env (``reset``, ``step``, ``render``, ``close``).

    Built with :meth:`describe` (no pool: just what a contract needs) or
    :meth:`with_pool`; the server session serves it like any vector env to
    clients that do not take the fast path, and exposes the pool's offer to
    those that do.
    """

    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)
        self.num_envs: int = attrs["num_envs"]
        self.pool: WorkerPool | None = None
        self._lanes: Any = None
        self.envs = [_LaneRender(self, i) for i in range(self.num_envs)]

    @classmethod
    def describe(cls, probe: Any, num_envs: int, autoreset_mode: str) -> PoolVectorEnv:
        """A pool-less description of ``num_envs`` copies of ``probe`` (spaces, metadata, spec)."""
        metadata = dict(getattr(probe, "metadata", None) or {})
        metadata["autoreset_mode"] = autoreset_mode
        return cls(
            num_envs=num_envs,
            single_observation_space=probe.observation_space,
            single_action_space=probe.action_space,
            observation_space=probe.observation_space,
            action_space=probe.action_space,
            metadata=metadata,
            render_mode=getattr(probe, "render_mode", None),
            spec=getattr(probe, "spec", None),
        )

    def with_pool(self, pool: WorkerPool) -> PoolVectorEnv:
        """A copy of this description driving ``pool``."""
        attrs = {k: v for k, v in self.__dict__.items() if k not in ("pool", "_lanes", "envs")}
        env = PoolVectorEnv(**attrs)
        env.pool = pool
        return env

    def _lanes_(self) -> Any:
        if self._lanes is None:
            from .lanes import Lanes

            pool = self.pool
            if pool is None or pool.segment is None:
                raise ClosedError("the vector env has no workers")
            self._lanes = Lanes(
                pool.segment, pool.layout, pool.contract, copy=True, spin=0.0, owns_segment=False
            )
        return self._lanes

    def reset(self, *, seed: Any = None, options: Any = None) -> tuple[Any, dict[str, Any]]:
        """Reset through the workers (seed + i per lane; ``options["reset_mask"]`` resets some)."""
        return self._lanes_().reset(seed, options, RELAY_TIMEOUT)  # type: ignore[no-any-return]

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step every lane through the workers."""
        result, _ = self._lanes_().step(actions, RELAY_TIMEOUT)
        return result  # type: ignore[no-any-return]

    def render(self) -> Any:
        """Every lane's frame (a tuple), as Gymnasium's vector envs."""
        return tuple(env.render() for env in self.envs)

    def close(self) -> None:
        """Reap the workers and release the segment. Idempotent."""
        if self._lanes is not None:
            self._lanes.close()
            self._lanes = None
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()


class VectorEnvSource:
    """The server's env source for the fast path: a fresh worker pool per session.

    The same interface as the server's single-env source (``contract``,
    ``acquire``, ``release``, ``close``).
    """

    def __init__(
        self,
        source: Any,
        num_envs: int,
        make_kwargs: dict[str, Any],
        *,
        autoreset_mode: str,
        workers: int | None,
        validation: str,
        to_framework: Any,
        restart: RestartPolicy | None = None,
    ) -> None:
        from .._adapter import EnvAdapter

        self.restart = restart
        #: Workers respawned under the restart policy, over every session.
        self.restarts = 0
        self._count_lock = threading.Lock()
        self.source = VectorSource(source, num_envs, make_kwargs, autoreset_mode)
        if workers is None:
            workers = default_workers(num_envs)
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= num_envs:
            raise ValueError(f"workers must be an int between 1 and num_envs={num_envs}, got {workers!r}")
        self.workers = workers
        self._options = {"validation": validation, "to_framework": to_framework}
        self.contract = EnvAdapter(self.source.facade, **self._options).contract
        # Checked now, not at the first session: a space the fast path cannot carry is a TypeError here.
        L.Layout.build(self.contract, workers)
        self._closed = False

    #: acquire() takes ``memfd`` (the server passes its session's choice).
    memfd_sessions = True

    def acquire(self, *, memfd: bool = False) -> Any:
        """An adapter over a fresh pool of workers, for a new session.

        ``memfd``: the session passes segments as descriptors (a Unix socket):
        the pool's segment is then a sealed memfd, never a name in /dev/shm.

        Raises:
            ClosedError: the server is shutting down. RemoteError, OperationTimeout:
            the workers could not start.
        """
        from .._adapter import EnvAdapter

        if self._closed:
            raise ClosedError("the server is shutting down")
        pool = WorkerPool(
            self.source,
            self.contract,
            self.workers,
            restart=self.restart,
            on_restart=self._count_restart,
            memfd=memfd,
        )
        try:
            return EnvAdapter(self.source.facade.with_pool(pool), **self._options)
        except BaseException:
            pool.close()
            raise

    def _count_restart(self) -> None:
        with self._count_lock:
            self.restarts += 1

    def release(self, adapter: Any, close_timeout: float) -> None:
        """A session is over: reap its workers."""
        adapter.close()

    def close(self, close_timeout: float) -> None:
        """Nothing is shared between sessions: just refuse new ones."""
        self._closed = True
