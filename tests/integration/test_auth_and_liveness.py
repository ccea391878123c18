"""Past one machine: the auth token, binding beyond loopback, TCP liveness, split send and receive.

Real sockets and real servers: in-process where the test must see what the
server allocated (factory calls, worker processes, /dev/shm), ``rlmesh serve``
subprocesses where a server is stopped (SIGSTOP) or must look like a host of
its own.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rlmesh
import rlmesh.numpy as rnp
from rlmesh.errors import AuthenticationError, BrokenError, ConnectError, OperationTimeout
from rlmesh.shm import Segment, janitor
from tests.conftest import ROOT, TRANSPORTS, bind_address, child_pids, serve_subprocess, stop_process
from tests.envs import TinyEnv

TOKEN = "correct horse battery staple"


def kill(proc: subprocess.Popen[bytes]) -> None:
    """Continue (if stopped) and kill a server subprocess, and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    proc.wait(10)


def non_loopback_ip() -> str | None:
    """A non-loopback IPv4 address of this machine (`hostname -I`), or None."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for word in out.split():
        try:
            ip = ipaddress.ip_address(word)
        except ValueError:
            continue
        if ip.version == 4 and not ip.is_loopback:
            return word
    return None


def own_segments() -> set[str]:
    """The rlmesh segments in /dev/shm that this process created (an in-process server's).

    Other processes' segments (a concurrent test run's) are not counted.
    """
    return {seg.name for seg in janitor.list_segments() if seg.pid == os.getpid()}


class Recorder:
    """A factory of TinyEnv that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> TinyEnv:
        self.calls += 1
        return TinyEnv()


# -- the auth token -----------------------------------------------------------------------


@pytest.mark.parametrize("sent", [None, "wrong token"], ids=["missing", "wrong"])
def test_a_missing_or_wrong_token_is_refused_before_anything_is_allocated(
    sent: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RLMESH_AUTH_TOKEN", raising=False)
    factory = Recorder()
    with rlmesh.EnvServer(
        factory, "tcp://127.0.0.1:0", options=rlmesh.ServeOptions(auth_token=TOKEN)
    ) as server:
        server.start()
        made = factory.calls  # the constructor's env, to learn the contract
        shm_before = own_segments()
        created: list[str] = []
        for name in ("create", "create_memfd"):
            real = getattr(Segment, name)

            def record(*args: object, _real: Any = real, _name: str = name, **kwargs: object) -> Any:
                created.append(_name)
                return _real(*args, **kwargs)

            monkeypatch.setattr(Segment, name, record)
        for _ in range(3):
            with pytest.raises(AuthenticationError) as caught:
                rnp.RemoteEnv(server.address, shared_memory=True, auth_token=sent)
            assert isinstance(caught.value, ConnectError) and isinstance(caught.value, ConnectionError)
            message = str(caught.value)
            assert "authentication failed" in message
            assert ("sent none" in message) if sent is None else ("refused" in message)
            assert "RLMESH_AUTH_TOKEN" in message
        # Nothing was allocated for the refused clients: no env, no segment, no session left.
        assert factory.calls == made
        assert created == []  # no segment of any kind was made for them
        assert own_segments() == shm_before
        deadline = time.monotonic() + 5.0  # the refused sessions' threads end right after answering
        while server.stats()["sessions"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.stats()["sessions"] == []
        # The right token gets in, and a second client gets its own env from the factory.
        with (
            rnp.RemoteEnv(server.address, auth_token=TOKEN) as first,
            rnp.RemoteEnv(server.address, auth_token=TOKEN) as second,
        ):
            assert first.reset(seed=1)[0] == second.reset(seed=1)[0] == 0
            assert first.step(1)[0] == 1
            assert factory.calls == made + 1
            assert first.data_plane == "shm" and created  # the recorder sees what a session makes


def test_a_refused_client_starts_no_worker_process_on_a_vector_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RLMESH_AUTH_TOKEN", raising=False)
    options = rlmesh.ServeOptions(auth_token=TOKEN)
    with rlmesh.EnvServer(
        "CartPole-v1", "tcp://127.0.0.1:0", options=options, num_envs=2, workers=1
    ) as server:
        server.start()
        children, shm_before = child_pids(), own_segments()
        with pytest.raises(AuthenticationError):
            rnp.RemoteVectorEnv(server.address, auth_token="nope")
        assert child_pids() == children  # no worker was spawned
        assert own_segments() == shm_before  # no session segment
        with rnp.RemoteVectorEnv(server.address, auth_token=TOKEN) as env:
            assert env.fast_path
            obs, _ = env.reset(seed=0)
            assert obs.shape == (2, 4)
            assert len(child_pids() - children) == 1  # the authenticated session's worker


def test_the_client_takes_its_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLMESH_AUTH_TOKEN", TOKEN)
    # The server takes RLMESH_AUTH_TOKEN too when ServeOptions names none.
    with rlmesh.EnvServer(TinyEnv, "tcp://127.0.0.1:0") as server:
        server.start()
        with rnp.RemoteEnv(server.address) as env:
            env.reset(seed=3)
            assert env.step(1)[0] == 1
        with pytest.raises(AuthenticationError):
            rnp.RemoteEnv(server.address, auth_token="an explicit keyword wins over the variable")
        monkeypatch.delenv("RLMESH_AUTH_TOKEN")
        with pytest.raises(AuthenticationError, match="sent none"):
            rnp.RemoteEnv(server.address)


def test_token_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="empty"):
        rlmesh.ServeOptions(auth_token="")
    with pytest.raises(TypeError):
        rlmesh.ServeOptions(auth_token=b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1024"):
        rlmesh.ServeOptions(auth_token="x" * 1025)
    assert TOKEN not in repr(rlmesh.ServeOptions(auth_token=TOKEN))


# -- binding beyond loopback -------------------------------------------------------------------


def test_a_server_beyond_loopback_needs_a_token_and_binds_exactly_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RLMESH_AUTH_TOKEN", raising=False)
    ip = non_loopback_ip()
    hosts = ["0.0.0.0"] + ([ip] if ip else [])
    for host in hosts:
        factory = Recorder()
        with pytest.raises(ValueError, match=f"without an auth token.*|refusing to serve on tcp://{host}"):
            rlmesh.EnvServer(factory, f"tcp://{host}:0")
        assert factory.calls == 0  # refused before any env was built
    # Loopback and Unix sockets need none.
    rlmesh.EnvServer(TinyEnv, "tcp://127.0.0.1:0").close()
    rlmesh.EnvServer(TinyEnv, "tcp://localhost:0").close()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address (the wildcard case ran)")
    with rlmesh.EnvServer(TinyEnv, f"tcp://{ip}:0", options=rlmesh.ServeOptions(auth_token=TOKEN)) as server:
        server.start()
        assert server.address.startswith(f"tcp://{ip}:")
        port = int(server.address.rsplit(":", 1)[1])
        # Bound to that interface only: loopback on the same port finds nothing.
        with pytest.raises(ConnectError):
            rnp.RemoteEnv(f"tcp://127.0.0.1:{port}", auth_token=TOKEN)
        with rnp.RemoteEnv(server.address, auth_token=TOKEN, shared_memory=False) as env:
            env.reset(seed=5)
            assert env.step(1)[0] == 1


def test_a_wildcard_server_reports_an_address_a_client_dials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLMESH_AUTH_TOKEN", raising=False)
    with rlmesh.EnvServer(
        TinyEnv, "tcp://0.0.0.0:0", options=rlmesh.ServeOptions(auth_token=TOKEN)
    ) as server:
        server.start()
        host = server.address[len("tcp://") :].rsplit(":", 1)[0]
        assert host != "0.0.0.0"
        ipaddress.ip_address(host)
        with rnp.RemoteEnv(server.address, auth_token=TOKEN) as env:
            env.reset(seed=2)
            assert env.step(1)[0] == 1


def test_rlmesh_serve_reads_the_token_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLMESH_AUTH_TOKEN", raising=False)
    ip = non_loopback_ip() or "0.0.0.0"
    env = {k: v for k, v in os.environ.items() if k != "RLMESH_AUTH_TOKEN"}
    env["PYTHONPATH"] = str(ROOT)
    refused = subprocess.run(
        [sys.executable, "-m", "rlmesh", "serve", "tests.envs:make_count_env", "--address", f"tcp://{ip}:0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert refused.returncode != 0
    assert "auth token" in refused.stderr and "--auth-token-file" in refused.stderr
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    proc, address = serve_subprocess(
        "tests.envs:make_count_env", f"tcp://{ip}:0", "--auth-token-file", str(token_file)
    )
    try:
        assert TOKEN not in " ".join(proc.args)  # never on the command line (ps shows it)
        with pytest.raises(AuthenticationError):
            rnp.RemoteEnv(address)
        monkeypatch.setenv("RLMESH_AUTH_TOKEN", TOKEN)
        with rnp.RemoteEnv(address, shared_memory=False) as client:
            client.reset(seed=0)
            client.step(1)
    finally:
        kill(proc)


# -- TCP liveness -----------------------------------------------------------------------------


def test_a_stopped_tcp_server_is_detected_within_two_and_a_half_seconds() -> None:
    proc, address = serve_subprocess("tests.envs:make_count_env", "tcp://127.0.0.1:0")
    try:
        plain = rnp.RemoteEnv(address, shared_memory=False, request_timeout_seconds=30)
        plain.reset(seed=0)
        stop_process(proc.pid)
        start = time.monotonic()
        with pytest.raises(BrokenError, match="went silent"):
            plain.step(1)
        elapsed = time.monotonic() - start
        assert 1.5 <= elapsed <= 2.5, elapsed
        # The session is broken from then on, at once.
        with pytest.raises(BrokenError):
            plain.step(1)
        plain.close()
    finally:
        kill(proc)


def test_a_stopped_tcp_vector_server_is_detected_by_poll_and_step_wait() -> None:
    proc, address = serve_subprocess("tests.envs:make_vector_env", "tcp://127.0.0.1:0")
    try:
        with rnp.RemoteVectorEnv(address, shared_memory=False, request_timeout_seconds=30) as env:
            env.reset(seed=0)
            stop_process(proc.pid)
            env.step_async(np.ones(3, dtype=np.int64))
            start = time.monotonic()
            assert not env.poll(0)
            assert env.poll(timeout=10)  # in: collecting it raises at once
            assert time.monotonic() - start <= 2.5
            with pytest.raises(BrokenError, match="went silent"):
                env.step_wait()
    finally:
        kill(proc)


def test_a_slow_step_of_a_live_tcp_server_is_not_an_error() -> None:
    proc, address = serve_subprocess("tests.envs:make_slow_env", "tcp://127.0.0.1:0", kwargs={"delay": 3.0})
    try:
        with rnp.RemoteEnv(address, shared_memory=False, request_timeout_seconds=10) as env:
            env.reset(seed=0)
            start = time.monotonic()
            obs, *_ = env.step(1)  # 3 s of env time: heartbeats keep the session alive
            assert time.monotonic() - start >= 2.9
            assert obs == 1
            # And the deadline still holds: a step past it is a timeout, not a broken session.
            with pytest.raises(OperationTimeout):
                env.step(1, timeout=1.0)
    finally:
        kill(proc)


def test_a_stopped_unix_server_is_a_straggler_not_a_lost_host(tmp_path: Path) -> None:
    proc, address = serve_subprocess("tests.envs:make_count_env", f"unix://{tmp_path}/s.sock")
    try:
        with rnp.RemoteEnv(address, shared_memory=False, request_timeout_seconds=30) as env:
            env.reset(seed=0)
            stop_process(proc.pid)
            start = time.monotonic()
            with pytest.raises(OperationTimeout):
                env.step(1, timeout=2.6)
            assert time.monotonic() - start >= 2.5
    finally:
        kill(proc)


# -- split send and receive ---------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_step_async_poll_and_step_wait_on_every_endpoint_kind(tmp_path: Path, transport: str) -> None:
    import gymnasium as gym

    proc, address = serve_subprocess("CartPole-v1", bind_address(transport, tmp_path), "--num-envs", "3")
    try:
        with rnp.RemoteVectorEnv(
            address, shared_memory=transport.endswith("shm"), request_timeout_seconds=30
        ) as env:
            assert env.fast_path == transport.endswith("shm")
            local = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 3)
            try:
                obs, _ = env.reset(seed=7)
                expected, _ = local.reset(seed=7)
                np.testing.assert_array_equal(obs, expected)
                with pytest.raises(ValueError, match="nothing in flight|no step in flight"):
                    env.poll(0)
                rng = np.random.default_rng(0)
                for _ in range(20):
                    actions = rng.integers(0, 2, 3)
                    env.step_async(actions)
                    with pytest.raises(ValueError, match="in flight"):
                        env.step(actions)  # one request in flight per session
                    assert env.poll(timeout=10)
                    assert env.poll(0)  # a probe consumes nothing
                    got = env.step_wait()
                    want = local.step(actions)
                    for a, b in zip(got[:4], want[:4], strict=True):
                        np.testing.assert_array_equal(a, b)
            finally:
                local.close()
    finally:
        kill(proc)


@pytest.mark.parametrize("transport", ["unix-shm", "tcp-inline"])
def test_a_timed_out_step_wait_leaves_the_step_in_flight(tmp_path: Path, transport: str) -> None:
    proc, address = serve_subprocess(
        "tests.envs:SlowLaneEnv", bind_address(transport, tmp_path), "--num-envs", "2"
    )
    try:
        with rnp.RemoteVectorEnv(
            address, shared_memory=transport.endswith("shm"), request_timeout_seconds=30
        ) as env:
            env.reset(seed=[1000, 1], options={"delay": 1.0})  # lane 0 steps in 1 s
            env.step_async(np.zeros(2, dtype=np.int64))
            assert not env.poll(0)
            if not env.fast_path:
                with pytest.raises(OperationTimeout):
                    env.step_wait(timeout=0.2)
            assert env.poll(timeout=10)
            obs, rewards, *_ = env.step_wait()
            assert obs.tolist() == [0, 0] and rewards.tolist() == [1.0, 1.0]
    finally:
        kill(proc)
