"""EnvServer lifecycle: start/serve/wait/shutdown, signals, idle timeout, leaks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import rlmesh
from rlmesh.server import ServeOptions
from tests.conftest import ROOT
from tests.envs import TinyEnv, TinyVectorEnv

pytestmark = pytest.mark.timeout(90)
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def test_shutdown_is_idempotent_and_closes_a_single_env_once(tmp_path) -> None:
    env = TinyEnv()
    server = rlmesh.EnvServer(env, f"unix://{tmp_path}/s.sock").start()
    client = rlmesh.RemoteEnv(server.address)
    client.reset()
    server.shutdown()
    server.shutdown()
    assert env.close_calls == 1
    assert server.wait(0) is True
    assert not (tmp_path / "s.sock").exists()
    with pytest.raises(ConnectionError):
        client.step(0)
    client.close()


def test_shutdown_before_start_closes_the_env_once(tmp_path) -> None:
    env = TinyEnv()
    with rlmesh.EnvServer(env, f"unix://{tmp_path}/s.sock") as server:
        assert server.env_contract.id == "UnknownEnv-v1"
    assert env.close_calls == 1
    server.shutdown()
    assert env.close_calls == 1
    assert server.wait(0) is True


def test_factory_envs_are_closed_when_their_session_ends(tmp_path) -> None:
    made: list[TinyEnv] = []

    def factory() -> TinyEnv:
        made.append(TinyEnv())
        return made[-1]

    with rlmesh.EnvServer(factory, f"unix://{tmp_path}/s.sock").start() as server:
        assert len(made) == 1  # built once for the contract, kept for the first client
        for _ in range(3):
            with rlmesh.RemoteEnv(server.address) as client:
                client.reset()
        deadline = time.monotonic() + 5
        while sum(e.close_calls for e in made) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(made) == 3 and [e.close_calls for e in made] == [1, 1, 1]
    assert [e.close_calls for e in made] == [1, 1, 1]


def test_wait_contract() -> None:
    server = rlmesh.EnvServer(TinyEnv())
    try:
        with pytest.raises(RuntimeError, match="before start"):
            server.wait(0.01)
        server.start()
        with pytest.raises(RuntimeError):
            server.start()
        for bad in (-1, float("nan"), float("inf")):
            with pytest.raises(ValueError):
                server.wait(bad)
        assert server.wait(0.01) is False
        assert server.running
    finally:
        server.shutdown()
    assert server.wait(0) is True and not server.running


def test_contract_and_address_are_available_before_and_after(tmp_path) -> None:
    server = rlmesh.EnvServer("CartPole-v1", "127.0.0.1:0")
    assert server.address.startswith("tcp://127.0.0.1:") and not server.address.endswith(":0")
    contract = server.env_contract
    assert contract.id == "CartPole-v1" and contract.num_envs == 1 and contract.spec is contract
    assert contract.observation_space.shape == (4,) and contract.action_space.kind == "discrete"
    server.start()
    server.shutdown()
    assert server.env_contract == contract
    vector = rlmesh.EnvServer(TinyVectorEnv(4), f"unix://{tmp_path}/v.sock")
    assert vector.env_contract.num_envs == 4 and vector.env_contract.autoreset_mode == "NextStep"
    vector.shutdown()


def test_constructor_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="num_envs >= 2"):
        rlmesh.EnvServer(TinyVectorEnv(1))
    with pytest.raises(TypeError, match="reset"):
        rlmesh.EnvServer(object())
    (tmp_path / "file").write_text("not a socket")
    with pytest.raises(ConnectionError, match="not a socket"):
        rlmesh.EnvServer(TinyEnv(), f"unix://{tmp_path}/file")
    with rlmesh.EnvServer(TinyEnv(), "127.0.0.1:0") as taken:
        with pytest.raises(ConnectionError, match="failed to bind"):
            rlmesh.EnvServer(TinyEnv(), taken.address)
    with pytest.raises(ValueError):
        ServeOptions(idle_timeout_seconds=-1)
    with pytest.raises(ValueError):
        ServeOptions(close_timeout_seconds=float("nan"))


def test_a_stale_unix_socket_file_is_replaced(tmp_path) -> None:
    path = tmp_path / "stale.sock"
    import socket

    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens
    with rlmesh.EnvServer(TinyEnv(), f"unix://{path}").start() as server:
        with rlmesh.RemoteEnv(server.address) as client:
            assert client.reset()[0] == 0


def test_idle_timeout_stops_the_server() -> None:
    server = rlmesh.EnvServer(TinyEnv(), options=ServeOptions(idle_timeout_seconds=0.3)).start()
    try:
        client = rlmesh.RemoteEnv(server.address)
        for _ in range(3):
            client.reset()
            time.sleep(0.15)  # each request re-arms the idle timer
        assert not server.wait(0)
        assert server.wait(5) is True
        client.close()
    finally:
        server.shutdown()


SERVE_AND_SIGNAL = """
import os, signal, sys, threading, time
import rlmesh
from tests.envs import TinyEnv
env = TinyEnv()
server = rlmesh.EnvServer(env, sys.argv[1])
def later():
    client = rlmesh.RemoteEnv(server.address, connect_timeout_seconds=10)
    client.reset()
    os.kill(os.getpid(), getattr(signal, sys.argv[2]))
    time.sleep(5)
threading.Thread(target=later, daemon=True).start()
server.serve()
print("stopped", env.close_calls, flush=True)
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_serve_stops_gracefully_on_signals(tmp_path, sig: str) -> None:
    sock = tmp_path / "s.sock"
    proc = subprocess.run(
        [sys.executable, "-c", SERVE_AND_SIGNAL, f"unix://{sock}", sig],
        capture_output=True,
        text=True,
        timeout=30,
        env=ENV,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "stopped 1"
    assert not sock.exists()


BACKGROUND_SURVIVES_SIGINT = """
import os, signal, sys
import rlmesh
from tests.envs import TinyEnv
server = rlmesh.EnvServer(TinyEnv(), sys.argv[1]).start()
try:
    os.kill(os.getpid(), signal.SIGINT)
    import time; time.sleep(2)
except KeyboardInterrupt:
    pass
client = rlmesh.RemoteEnv(server.address)
print("alive", client.reset()[0], flush=True)
client.close()
server.shutdown()
"""


def test_a_background_server_survives_an_unrelated_sigint(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", BACKGROUND_SURVIVES_SIGINT, f"unix://{tmp_path}/s.sock"],
        capture_output=True,
        text=True,
        timeout=30,
        env=ENV,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "alive 0"


EXIT_PROMPTLY = """
import sys, time
import rlmesh
from tests.envs import TinyEnv
server = rlmesh.EnvServer(TinyEnv(), sys.argv[1]).start()
client = rlmesh.RemoteEnv(server.address)
client.reset()
start = time.monotonic()
server.shutdown()
print(f"{time.monotonic() - start:.3f}", flush=True)
"""


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_a_process_with_an_open_client_exits_promptly(tmp_path, transport: str) -> None:
    address = f"unix://{tmp_path}/s.sock" if transport == "unix" else "tcp://127.0.0.1:0"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_PROMPTLY, address],
        capture_output=True,
        text=True,
        timeout=30,
        env=ENV,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.strip()) < 2.0
    assert time.monotonic() - start < 20


def test_repeated_serve_and_eval_cycles_do_not_leak_fds(tmp_path) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def cycle(i: int) -> None:
        with rlmesh.EnvServer("CartPole-v1", f"unix://{tmp_path}/c{i}.sock").start() as server:
            for shm in (True, False):
                with rlmesh.RemoteEnv(server.address, shared_memory=shm) as env:
                    env.reset(seed=i)
                    for step in range(20):
                        if any(env.step(step % 2)[2:4]):
                            env.reset()

    cycle(0)
    before = open_fds()
    for i in range(1, 6):
        cycle(i)
    assert open_fds() - before <= 5


def test_a_malformed_request_ends_only_that_session(serve) -> None:
    from rlmesh.wire import protocol as P

    served = serve(TinyEnv(), "unix-inline")
    client = served.client()
    client.reset()
    # Reach below the public API: send an unknown operation on the session's channel.
    conn = client._conn
    conn.channel.send(msgpack_pack([99, 1]), None)
    reply = conn.channel.recv(5)
    head = __import__("rlmesh.wire.codec", fromlist=["decode"]).decode(reply.head)
    assert head[0] == P.ERROR and head[2] == P.E_PROTOCOL and "unknown operation" in head[4]
    with pytest.raises(ConnectionError):
        client.step(0)
    assert served.client().reset()[0] == 0


def msgpack_pack(obj: object) -> bytes:
    import msgpack

    return msgpack.packb(obj)


def test_sigterm_to_rlmesh_serve_removes_the_socket(tmp_path) -> None:
    sock = tmp_path / "cli.sock"
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlmesh",
            "serve",
            "CartPole-v1",
            "--address",
            f"unix://{sock}",
            "--ready-fd",
            str(write_fd),
        ],
        pass_fds=(write_fd,),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        cwd=ROOT,
    )
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as ready:
            assert ready.readline().strip() == f"unix://{sock}"
        with rlmesh.RemoteEnv(f"unix://{sock}") as client:
            client.reset()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert f"✓ Server address: unix://{sock}" in out.decode()
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
