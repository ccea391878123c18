"""Tier 1 of the multi-node design: rlmesh.ray on a Ray mini-cluster (a head and two worker nodes).

One ``ray.cluster_utils.Cluster`` for the module (each node 1 logical CPU, a
small object store), shut down with every Ray process at module teardown.
Each test is a driver in a fresh interpreter (tests/integration/_ray_driver.py):
a Ray driver keeps connections to every actor it called. Skipped without Ray,
except under $RLMESH_REQUIRE_RAY=1 (CI), where a missing Ray fails. The hosts
bind the node's IP with the fleet's auth token; every step travels on
rlmesh's channel.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_RAY, import_or_skip, run_python

ray = import_or_skip("ray", required_by=REQUIRE_RAY)

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(170)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """The address of a head and two worker nodes on this machine."""
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "object_store_memory": 80 << 20}
    with _ray_spawns():
        c = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    session = Path(c.head_node.get_session_dir_path())
    try:
        with _ray_spawns():
            for _ in range(2):
                c.add_node(**node)
        c.wait_for_nodes()
        yield c.address
    finally:
        with _ray_spawns():
            c.shutdown()
        remove_ray_session(session)


def remove_ray_session(session: Path) -> None:
    """Remove the session directory (logs, sockets) a Ray cluster left under its temp dir.

    Ray keeps every session's directory after shutdown, and points
    ``session_latest`` at the newest; the suite leaves nothing behind, so
    the directory goes, the link with it when it names this session, and
    the temp dir itself when nothing else is in it.
    """
    root = session.parent
    shutil.rmtree(session, ignore_errors=True)
    latest = root / "session_latest"
    with contextlib.suppress(OSError):
        if latest.is_symlink() and Path(os.readlink(latest)).name == session.name:
            latest.unlink()
    with contextlib.suppress(OSError):
        root.rmdir()  # only when empty


@contextlib.contextmanager
def _ray_spawns() -> Iterator[None]:
    """Ray starts its node processes with ``Popen(preexec_fn=...)``, which runs the
    interpreter's at-fork hooks: JAX's (imported by earlier tests in this process)
    warns that forking a multithreaded process may deadlock. The child execs the
    Ray binary at once, so nothing runs in the forked copy; the warning is moot here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        yield


def drive(name: str, address: str, timeout: float = 160) -> str:
    return run_python(
        f"from tests.integration._ray_driver import main; main({name!r}, {address!r})",
        timeout=timeout,
        env={"RAY_DEDUP_LOGS": "0"},
    )


def test_fleet_serves_its_lanes_and_survives_a_host_sigkilled_mid_step(cluster: str) -> None:
    assert "recovered in" in drive("kill_mid_step", cluster)


def test_sweep_with_a_host_killed_midway_returns_every_seed_once_as_a_local_run(cluster: str) -> None:
    assert "300 episodes" in drive("sweep", cluster)


def test_a_crash_looping_host_is_retired_and_start_fails_typed(cluster: str) -> None:
    drive("crash_loop", cluster)


def test_fleet_checks_its_arguments_and_needs_start(cluster: str) -> None:
    drive("arguments", cluster)


def test_a_started_fleet_dropped_unclosed_warns_and_shuts_down(cluster: str) -> None:
    drive("dropped", cluster)
