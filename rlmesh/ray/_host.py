"""The host actor: one rlmesh EnvServer on a Ray node, restarted by Ray when it dies.

Ray creates one :class:`Host` per placement bundle (``ray.remote(Host)`` with
``max_restarts=-1``: Ray reruns the constructor whenever the process dies).
The constructor starts an :class:`~rlmesh.EnvServer` bound to the node's IP
(the vector fast path when the host serves two lanes or more), so every step
travels on rlmesh's own channel: Ray only carries the constructor's arguments,
:meth:`Host.info`, :meth:`Host.watch`, :meth:`Host.stats` and the sweep's chunks.

Restarts and the crash-loop breaker live here, in the constructor, because
only the constructor sees every incarnation (a host that dies while it builds
its env is never seen alive by anyone else). Each start is recorded in Ray's
key-value store under the fleet's id and the host's index; a restart that
finds more than ``max_restarts`` earlier restarts within ``window_seconds``
raises :class:`~rlmesh.errors.FleetError` from the constructor, and Ray does not
restart a host whose constructor raised: the host is retired. The same record
remembers the port, so a host restarted on the same node binds the same
address again when it is free (its clients' reconnects then find it there).
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import ray
from ray.experimental import internal_kv

from .._restart import RestartPolicy
from ..errors import ConnectError, FleetError
from ..server import EnvServer, ServeOptions

__all__ = ["Host", "clear_records", "record_key"]

#: The key prefix of a fleet's records in Ray's key-value store.
_PREFIX = "rlmesh/fleet/"


def record_key(fleet_id: str, index: int) -> str:
    """The key of host ``index``'s record (its starts, node and port) in Ray's key-value store."""
    return f"{_PREFIX}{fleet_id}/{index}"


def clear_records(fleet_id: str, hosts: int) -> None:
    """Delete a fleet's records (at shutdown); needs a connected Ray driver."""
    for index in range(hosts):
        internal_kv._internal_kv_del(record_key(fleet_id, index))


def _read_record(key: str) -> dict[str, Any]:
    raw = internal_kv._internal_kv_get(key)
    if not raw:
        return {"starts": [], "restarts": 0}
    record: dict[str, Any] = json.loads(raw)
    return record


class Host:
    """A Ray actor serving ``lanes`` envs of ``source`` on its node with an rlmesh EnvServer.

    Not used directly: :class:`~rlmesh.ray.EnvFleet` creates these with
    ``ray.remote``. The methods are Ray actor methods (the actor is threaded,
    so :meth:`watch` may wait while other calls run).

    Lifetime: the server starts in the constructor and stops in
    :meth:`shutdown`, or when the process dies; the vector workers die with
    the process (``PR_SET_PDEATHSIG``). ``idle_timeout_seconds`` stops the
    server of a host whose learners all left (a detached fleet whose driver
    died), after which :meth:`watch` returns.

    Raises (from the constructor, which retires the host):
        FleetError: the host restarted more than the policy allows within its window.
        Exception: whatever building the env or the server raises.
    """

    def __init__(
        self,
        fleet_id: str,
        index: int,
        source: Any,
        lanes: int,
        workers: int,
        auth_token: str | None,
        restart: RestartPolicy,
        server_kwargs: dict[str, Any],
        idle_timeout_seconds: float | None,
    ) -> None:
        context = ray.get_runtime_context()
        self._index = index
        self._key = record_key(fleet_id, index)
        self._node_id: str = context.get_node_id()
        with warnings.catch_warnings():
            # Ray 2.60's property reads its own deprecated actor_id on the way.
            warnings.simplefilter("ignore", DeprecationWarning)
            self._reconstructed = bool(context.was_current_actor_reconstructed)
        record = _read_record(self._key)
        now = time.time()
        if self._reconstructed:
            recent = [t for t in record["starts"][1:] if now - t < restart.window_seconds]
            if len(recent) >= restart.max_restarts:
                raise FleetError(
                    f"host {index} of fleet {fleet_id} is crash-looping: it died "
                    f"{len(recent) + 1} times within {restart.window_seconds:g} s "
                    f"(max_restarts={restart.max_restarts}); retired"
                )
            record["restarts"] = int(record["restarts"]) + 1
        # Kept short: the first start, then the restarts of the last window.
        record["starts"] = record["starts"][:1] + [
            t for t in record["starts"][1:] if now - t < restart.window_seconds
        ]
        record["starts"].append(now)
        internal_kv._internal_kv_put(self._key, json.dumps(record), overwrite=True)
        self._restarts = int(record["restarts"])
        if auth_token is not None:
            # Model.run (the sweep) dials this server from this process: the
            # clients' default token.
            os.environ["RLMESH_AUTH_TOKEN"] = auth_token
        # The node's IP, never 0.0.0.0. Without a token rlmesh refuses any
        # address but loopback: all hosts then share the learner's machine
        # (as on ray.cluster_utils.Cluster).
        bind_ip = "127.0.0.1"
        if auth_token is not None:
            bind_ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        options = ServeOptions(auth_token=auth_token, idle_timeout_seconds=idle_timeout_seconds)
        kwargs = dict(server_kwargs)
        if lanes >= 2:
            kwargs.update(num_envs=lanes, workers=workers)
        port = int(record.get("port", 0)) if record.get("node_id") == self._node_id else 0
        self._server = self._bind(source, bind_ip, port, options, kwargs)
        self._server.start()
        record.update(node_id=self._node_id, port=int(self._server.address.rsplit(":", 1)[1]))
        internal_kv._internal_kv_put(self._key, json.dumps(record), overwrite=True)
        self._stopped = threading.Event()
        self._models: dict[str, Any] = {}
        self._models_lock = threading.Lock()
        threading.Thread(target=self._watch_server, name="rlmesh-host-watch", daemon=True).start()

    @staticmethod
    def _bind(source: Any, ip: str, port: int, options: ServeOptions, kwargs: dict[str, Any]) -> EnvServer:
        if port:
            try:
                return EnvServer(source, f"tcp://{ip}:{port}", options=options, **kwargs)
            except ConnectError:
                pass  # taken by now: any free port (the clients learn it from info())
        return EnvServer(source, f"tcp://{ip}:0", options=options, **kwargs)

    def _watch_server(self) -> None:
        self._server.wait()
        self._stopped.set()

    def info(self) -> dict[str, Any]:
        """Where and what this host is: address, node id, pid, lanes, restarts, whether Ray rebuilt it."""
        return {
            "index": self._index,
            "address": self._server.address,
            "node_id": self._node_id,
            "pid": os.getpid(),
            "lanes": self._server.env_contract.num_envs or 1,
            "restarts": self._restarts,
            "reconstructed": self._reconstructed,
        }

    def watch(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the server to stop; True once it has.

        The supervisor keeps one call pending: the host's death surfaces as
        Ray's actor error on it.
        """
        return self._stopped.wait(timeout)

    def stats(self) -> dict[str, Any]:
        """The server's :meth:`~rlmesh.EnvServer.stats`."""
        return self._server.stats()

    def run_chunk(
        self, sweep: str, model_factory: Callable[[], Any], seeds: list[int], max_episode_steps: int | None
    ) -> list[list[Any]]:
        """Run one episode per seed with the sweep's model against this host's own server.

        The model is built once per host and sweep (:meth:`forget` drops it).
        Returns one row per seed, in order: ``[steps, reward, terminated,
        truncated, success, duration_s, predict_ms, step_ms]``.

        Raises:
            Exception: whatever the model or the env raises.
        """
        from ..models import run as run_model

        with self._models_lock:
            model = self._models.get(sweep)
            if model is None:
                model = self._models[sweep] = model_factory()
        result = run_model(
            model, self._server.address, seeds=seeds, max_episode_steps=max_episode_steps, progress=False
        )
        return [
            [e.steps, e.reward, e.terminated, e.truncated, e.success, e.duration_s, e.predict_ms, e.step_ms]
            for e in result.episodes
        ]

    def forget(self, sweep: str) -> None:
        """Drop the model a sweep built here."""
        with self._models_lock:
            self._models.pop(sweep, None)

    def shutdown(self) -> None:
        """Stop the server (idempotent); :meth:`watch` returns True afterwards."""
        self._server.shutdown()
        self._stopped.set()
