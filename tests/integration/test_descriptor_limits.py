"""A server that runs out of file descriptors degrades; it never hangs a client.

The server runs as a real subprocess under a low ``RLIMIT_NOFILE``. Clients
connect one after another and keep their sessions open: the first ones get
shared memory; when segments can no longer be mapped, sessions fall back to
inline copies (one descriptor each); when not even a socket can be accepted,
the listener's reserve descriptor lets the server tell the client why, at
once. Once clients leave, shared memory works again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import rlmesh
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(120)

SERVE = """
import resource, sys
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))
from rlmesh.cli import main
sys.exit(main(["serve", "tests.envs:make_count_env", "--address", sys.argv[2]]))
"""


def start(limit: int, address: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(limit), address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "unix://" in line, proc.stderr.read() if proc.stderr else line
    except BaseException:
        proc.kill()
        proc.communicate(timeout=30)
        raise
    return proc, line.split()[-1]


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGINT, and the exit status must say it stopped cleanly; it is killed if it does not stop."""
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=30)
        raise
    assert proc.returncode == 0, err
    return err


def test_out_of_descriptors_falls_back_to_inline_then_turns_clients_away_clearly(tmp_path) -> None:
    proc, address = start(48, f"unix://{tmp_path}/limited.sock")
    try:
        outcomes = connect_until_refused(address)
        # Shared memory first, inline copies once segments cannot be mapped, then refusals.
        assert outcomes[0] == "shm"
        assert "inline" in outcomes and "turned away" in outcomes, outcomes
        last = {kind: max(i for i, o in enumerate(outcomes) if o == kind) for kind in set(outcomes)}
        assert last["shm"] < outcomes.index("inline") and last["inline"] < outcomes.index("turned away")
        # The sessions' descriptors came back when they closed: shared memory works again.
        deadline = time.monotonic() + 10
        while data_plane_of_a_new_session(address) != "shm":
            assert time.monotonic() < deadline, "the server never recovered its descriptors"
            time.sleep(0.1)
    finally:
        err = stop(proc)
    assert "out of file descriptors" in err


def connect_until_refused(address: str, attempts: int = 40) -> list[str]:
    """Open sessions and keep them; each outcome is a data plane or "turned away"."""
    clients: list[rlmesh.RemoteEnv] = []
    outcomes: list[str] = []
    try:
        for _ in range(attempts):
            start_time = time.monotonic()
            try:
                env = rlmesh.RemoteEnv(address, connect_timeout_seconds=5, request_timeout_seconds=10)
            except rlmesh.BusyError as exc:
                assert "file descriptors" in str(exc) and "ulimit -n" in str(exc)
                outcomes.append("turned away")
            else:
                clients.append(env)
                env.reset(seed=len(clients))
                env.step(1)
                outcomes.append(env.data_plane)
            assert time.monotonic() - start_time < 5, outcomes  # an answer, never a hang
        for env in clients:  # every admitted session still works
            env.step(0)
    finally:
        for env in clients:
            env.close()
    return outcomes


def data_plane_of_a_new_session(address: str) -> str:
    try:
        with rlmesh.RemoteEnv(address, connect_timeout_seconds=5) as env:
            env.reset(seed=0)
            env.step(1)
            return env.data_plane
    except rlmesh.BusyError:
        return "turned away"
