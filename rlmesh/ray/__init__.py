"""rlmesh on Ray: env fleets (host actors Ray places and restarts) and evaluation sweeps.

Ray is the control plane only: it places the hosts, restarts them, finds
them and carries sweep chunks and results (kilobytes). Every step's data
travels on rlmesh's own channel (TCP between nodes, shared memory on one),
never through Ray. Needs the ``ray`` extra (``pip install "rlmesh[ray]"``);
``import rlmesh`` never imports this module nor Ray.

* :class:`EnvFleet`: one host actor per placement bundle, each an rlmesh
  ``EnvServer`` on its node; :meth:`EnvFleet.vector_env` steps them as one
  ShardedVectorEnv; a host that dies is restarted by Ray and rejoins, one that
  keeps dying is retired (:class:`RestartPolicy`).
* :func:`run`: an evaluation sweep, each seed exactly once, in seed order.
"""

from __future__ import annotations

try:
    import ray as _ray  # noqa: F401 - fail here, with the extra's name, when Ray is missing
except ImportError as exc:  # pragma: no cover - the tests run with Ray or skip this module
    from ..errors import BackendUnavailable

    raise BackendUnavailable('rlmesh.ray needs Ray: pip install "rlmesh[ray]"') from exc

from .._restart import RestartPolicy
from ..errors import FleetError
from ._fleet import EnvFleet, HostInfo
from ._host import Host
from ._sweep import run

__all__ = ["EnvFleet", "FleetError", "Host", "HostInfo", "RestartPolicy", "run"]
