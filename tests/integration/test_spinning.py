"""Who spins while waiting: only a side whose peer is another process.

A waiter that spins keeps taking the GIL back between polls; a peer thread in
the same process would wait out Python's switch interval (5 ms) for it on
every message. So both sides spin, on every transport, only when the peer is
another process, and only then.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import rlmesh
from rlmesh._demo import stop_server
from rlmesh._spin import ENV_VAR
from tests.conftest import TRANSPORTS, bind_address, serve_subprocess
from tests.envs import CountEnv

pytestmark = pytest.mark.timeout(60)


def client_spin(env: Any) -> Any:
    conn = env._conn
    return conn.channel.rx.spin if conn.data_plane == "shm" else conn.stream.spin


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_nobody_spins_when_client_and_server_share_a_process(serve, transport: str) -> None:
    served = serve(CountEnv(), transport)
    env = served.client()
    env.reset(seed=1)
    env.step(1)
    assert env.data_plane == ("shm" if served.shm else "inline")
    assert client_spin(env).maximum == 0
    (session,) = served.server._sessions
    assert session.spin.maximum == 0
    if not served.shm:
        assert session.stream.spin is session.spin


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_spins_for_a_server_in_another_process(tmp_path, transport: str) -> None:
    proc, address = serve_subprocess("tests.envs:make_count_env", bind_address(transport, tmp_path))
    try:
        with rlmesh.RemoteEnv(address, shared_memory=transport.endswith("shm")) as env:
            assert env.data_plane == ("shm" if transport.endswith("shm") else "inline")
            policy = client_spin(env)
            assert policy.maximum > 0
            env.reset(seed=3)
            for _ in range(200):
                _, _, terminated, truncated, _ = env.step(1)
                if terminated or truncated:
                    env.reset()
            assert policy.maximum > 0 and env.data_plane == ("shm" if transport.endswith("shm") else "inline")
    finally:
        stop_server(proc)


def test_spinning_off_sends_every_wait_to_the_futex(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # RLMESH_SPIN=0 reaches the server subprocess (its sessions' config: see
    # test_serve_options_spin); the client is told spin=False. Every wait of
    # the client that found no answer goes to the futex path at once: the
    # ring's counters say how each wait ended, whatever the machine's load.
    monkeypatch.setenv(ENV_VAR, "0")
    proc, address = serve_subprocess("tests.envs:make_count_env", bind_address("unix-shm", tmp_path))
    try:
        with rlmesh.RemoteEnv(address, spin=False) as env:
            assert env.data_plane == "shm"
            rx = env._conn.channel.rx
            assert rx.spin.maximum == 0
            env.reset(seed=3)
            for _ in range(300):
                _, _, terminated, truncated, _ = env.step(1)
                if terminated or truncated:
                    env.reset()
            spun, slept = rx.waits
        assert spun == 0 and rx.spin.spins == 0  # the client never spun...
        assert slept > 0  # ...and slept on the futex instead
    finally:
        stop_server(proc)


def test_the_client_keyword_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc, address = serve_subprocess("tests.envs:make_count_env", bind_address("unix-shm", tmp_path))
    try:
        monkeypatch.setenv(ENV_VAR, "0")
        with rlmesh.RemoteEnv(address) as env:
            assert client_spin(env).maximum == 0  # the environment turned it off
        with rlmesh.RemoteEnv(address, spin=True) as env:
            assert client_spin(env).maximum > 0  # the keyword turns it back on
        monkeypatch.delenv(ENV_VAR)
        with rlmesh.RemoteEnv(address, spin=False) as env:
            assert client_spin(env).maximum == 0
            env.reset(seed=1)
            env.step(1)
            assert env._conn.channel.rx.waits[0] == 0
    finally:
        stop_server(proc)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="a server never spins on one core")
def test_serve_options_spin(monkeypatch: pytest.MonkeyPatch) -> None:
    def session_spin(**options: Any) -> float:
        server = rlmesh.EnvServer(CountEnv(), "tcp://127.0.0.1:0", options=rlmesh.ServeOptions(**options))
        try:
            return float(server._session_config.spin)
        finally:
            server.shutdown()

    assert session_spin() > 0
    assert session_spin(spin=False) == 0
    monkeypatch.setenv(ENV_VAR, "0")
    assert session_spin() == 0
    assert session_spin(spin=True) > 0  # an explicit choice wins over the environment
