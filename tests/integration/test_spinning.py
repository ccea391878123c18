"""Who spins while waiting: only a side whose peer is another process.

A waiter that spins keeps taking the GIL back between polls; a peer thread in
the same process would wait out Python's switch interval (5 ms) for it on
every message. So both sides spin, on every transport, only when the peer is
another process, and only then.
"""

from __future__ import annotations

from typing import Any

import pytest

import rlmesh
from rlmesh._demo import stop_server
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
