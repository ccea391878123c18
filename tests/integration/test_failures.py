"""What goes wrong: dead and hung peers, killed clients, bad frames, version skew."""

from __future__ import annotations

import functools
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest

import rlmesh
import rlmesh.numpy as rnp
from tests.conftest import ROOT, TRANSPORTS, bind_address, serve_subprocess, stop_process
from tests.envs import CountEnv, TinyEnv

pytestmark = pytest.mark.timeout(90)

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


@pytest.mark.parametrize(
    ("address", "shm"),
    [("unix", True), ("unix", False), ("tcp", True), ("tcp", False)],
    ids=["unix-shm", "unix-inline", "tcp-shm", "tcp-inline"],
)
def test_a_killed_server_is_reported_within_a_second_never_a_hang(tmp_path, address: str, shm: bool) -> None:
    bind = f"unix://{tmp_path}/s.sock" if address == "unix" else "tcp://127.0.0.1:0"
    proc, addr = serve_subprocess("tests.envs:make_slow_env", bind)
    try:
        env = rlmesh.RemoteEnv(addr, shared_memory=shm, request_timeout_seconds=60)
        env.reset()
        killed_at: list[float] = []

        def kill_soon() -> None:
            time.sleep(0.3)
            killed_at.append(time.monotonic())
            proc.send_signal(signal.SIGKILL)

        killer = threading.Thread(target=kill_soon)
        killer.start()
        with pytest.raises(ConnectionError):
            env.step(0)  # the env sleeps 30 s in step
        noticed = time.monotonic() - killed_at[0]
        killer.join()
        assert noticed < 1.0, f"took {noticed:.2f}s to notice the dead server"
        with pytest.raises(ConnectionError):
            env.step(0)
        env.close()
    finally:
        kill(proc)
    # The killed server could not clean up: its segment names were unlinked
    # right after the handshake, and the leak check confirms nothing is left.


def test_a_server_killed_between_steps_fails_the_next_call_fast(tmp_path) -> None:
    proc, addr = serve_subprocess("CartPole-v1", f"unix://{tmp_path}/s.sock")
    try:
        env = rnp.RemoteEnv(addr)
        env.reset(seed=0)
        env.step(0)
        kill(proc)
        start = time.monotonic()
        with pytest.raises(ConnectionError):
            env.step(0)
        assert time.monotonic() - start < 1.0
        env.close()
    finally:
        kill(proc)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_stopped_server_times_out_and_the_session_survives_it(tmp_path, transport: str) -> None:
    """A hung peer (SIGSTOP: no FIN, no EOF) is a timeout, not a dead server, and not a hang.

    The timed-out step still runs once the server resumes; its late answer is
    skipped by request id, so the next call gets its own answer.
    """
    proc, addr = serve_subprocess("tests.envs:make_count_env", bind_address(transport, tmp_path))
    try:
        env = rnp.RemoteEnv(addr, shared_memory=transport.endswith("shm"), request_timeout_seconds=30)
        env.reset(seed=4)
        env.step(1)
        stop_process(proc.pid)
        try:
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                env.step(1, timeout=0.5)
            elapsed = time.monotonic() - start
            assert 0.45 <= elapsed < 1.5, elapsed
        finally:
            proc.send_signal(signal.SIGCONT)
        obs = env.step(2)[0]
        assert obs[:3].tolist() == [3, 2, 4]  # the third step of this session, its own action
        env.close()
    finally:
        kill(proc)


@pytest.mark.parametrize("transport", ["unix-shm", "tcp-inline"])
def test_a_server_restarts_on_the_address_of_one_that_was_killed(tmp_path, transport: str) -> None:
    """SIGKILL leaves a socket file (and a bound TCP port in TIME_WAIT): a restart must still bind."""
    proc, addr = serve_subprocess("tests.envs:make_count_env", bind_address(transport, tmp_path))
    try:
        env = rnp.RemoteEnv(addr, shared_memory=transport.endswith("shm"))
        first_pid = int(env.reset(seed=1)[0][3])
        env.step(1)
        kill(proc)
        with pytest.raises(ConnectionError):
            env.step(1)
        env.close()
        # The same address exactly: the Unix path, or the TCP port the first server had.
        proc, again = serve_subprocess("tests.envs:make_count_env", addr)
        assert again == addr
        with rnp.RemoteEnv(addr, shared_memory=transport.endswith("shm")) as fresh:
            obs, _ = fresh.reset(seed=2)
            assert int(obs[3]) == proc.pid != first_pid
            assert fresh.data_plane == ("shm" if transport.endswith("shm") else "inline")
    finally:
        kill(proc)


CLIENT = """
import sys, time, numpy as np, rlmesh.numpy as rnp
env = rnp.RemoteEnv(sys.argv[1])
env.reset(seed=1)
held = [env.step(0)[0] for _ in range(3)]
import rlmesh
plain = rlmesh.RemoteEnv(sys.argv[1])
plain.reset()
views = [np.from_dlpack(plain.step(1)[0]) for _ in range(10)]
print("ready", flush=True)
time.sleep(60)
"""


def test_a_killed_client_does_not_disturb_other_clients(serve) -> None:
    served = serve(functools.partial(CountEnv, width=4096))  # 16 KiB: leased slab blocks
    survivor = served.client(rnp.RemoteEnv)
    survivor.reset(seed=7)
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, served.server.address], stdout=subprocess.PIPE, env=ENV, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        assert len(served.server.stats()["sessions"]) == 3
        leased = [s["leases"] for s in served.server.stats()["sessions"] if s["leases"]]
        assert max(leased) >= 10  # the dying client holds zero-copy views
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for i in range(200):
            obs, *_ = survivor.step(1)
            assert obs[0] == i + 1 and obs[2] == 7
        deadline = time.monotonic() + 5
        while len(served.server.stats()["sessions"]) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(served.server.stats()["sessions"]) == 1
    finally:
        kill(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def test_one_client_used_from_two_threads_gets_a_clear_error(serve) -> None:
    from tests.envs import SlowEnv

    slow = SlowEnv(delay=0.5)
    env = serve(slow).client()
    env.reset()
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: env.step(0))
    thread.start()
    assert slow.entered.wait(5)
    try:
        env.step(0)
    except rlmesh.BusyError as exc:
        errors.append(exc)
    thread.join()
    assert errors and "another thread" in str(errors[0])


def _raw_connect(address: str) -> socket.socket:
    path = address.removeprefix("unix://")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    return sock


def _frame(obj: object) -> bytes:
    head = msgpack.packb(obj)
    return struct.pack("<II", 4 + len(head), len(head)) + head


def _read_frame(sock: socket.socket) -> object:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    (length,) = struct.unpack("<I", exactly(4))
    body = exactly(length)
    (head_len,) = struct.unpack_from("<I", body)
    return msgpack.unpackb(body[4 : 4 + head_len])


def test_version_mismatch_is_clear_on_the_server_side(serve, caplog) -> None:
    served = serve(TinyEnv())
    sock = _raw_connect(served.server.address)
    try:
        with caplog.at_level("ERROR", logger="rlmesh.server"):
            sock.sendall(_frame([1, {"magic": "rlmesh", "protocol": 999, "version": "9.9.9", "shm": False}]))
            reply = _read_frame(sock)
            assert reply[0] == 21 and reply[2] == "version"
            assert "protocol 999" in reply[4] and "protocol 1" in reply[4]
            deadline = time.monotonic() + 2
            while not any("protocol version mismatch" in r.message for r in caplog.records):
                assert time.monotonic() < deadline
                time.sleep(0.01)
    finally:
        sock.close()
    assert served.client().reset()[0] == 0


def test_version_mismatch_is_clear_on_the_client_side(tmp_path) -> None:
    path = tmp_path / "fake.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def fake_server() -> None:
        conn, _ = listener.accept()
        with conn:
            _read_frame(conn)
            conn.sendall(_frame([2, {"protocol": 7, "version": "7.0", "contract": {}, "offer": None}]))
            conn.settimeout(2)
            try:
                conn.recv(1)
            except OSError:
                pass

    thread = threading.Thread(target=fake_server)
    thread.start()
    try:
        with pytest.raises(rlmesh.errors.VersionMismatch, match="speaks 7") as caught:
            rlmesh.RemoteEnv(f"unix://{path}")
        assert caught.value.remote == 7 and caught.value.local == 1
    finally:
        thread.join()
        listener.close()


def test_a_server_that_stalls_mid_handshake_is_a_connect_error_by_one_deadline(tmp_path, monkeypatch) -> None:
    """A fake server answers HELLO slowly and never confirms the session."""
    monkeypatch.setattr(rlmesh.wire.client_session, "CONNECT_ATTEMPT_TIMEOUT", 0.6)
    contract = rlmesh.EnvServer(TinyEnv(), f"unix://{tmp_path}/real.sock")
    contract_dict = contract.env_contract.to_dict()
    contract.shutdown()
    path = tmp_path / "stalling.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    done = threading.Event()

    def stalling_server() -> None:
        conn, _ = listener.accept()
        with conn:
            _read_frame(conn)
            time.sleep(0.5)  # most of the deadline goes here...
            welcome = {"protocol": 1, "version": "0.1.0", "contract": contract_dict, "offer": None, "pid": 1}
            conn.sendall(_frame([2, welcome]))
            _read_frame(conn)  # ...and the session is never confirmed
            done.wait(10)

    thread = threading.Thread(target=stalling_server)
    thread.start()
    try:
        start = time.monotonic()
        with pytest.raises(rlmesh.ConnectError, match="handshake failed"):
            rlmesh.RemoteEnv(f"unix://{path}", shared_memory=False)
        # One deadline for the whole handshake: 0.6 s, not 0.5 s plus another 0.6 s.
        assert time.monotonic() - start < 1.0
    finally:
        done.set()
        thread.join()
        listener.close()


@pytest.mark.parametrize("transport", ["unix-inline", "unix-shm"])
def test_a_client_trickling_a_request_loses_its_session_not_a_thread(serve, transport, monkeypatch) -> None:
    """After the handshake, a frame that starts must finish within FRAME_DEADLINE."""
    monkeypatch.setattr(rlmesh.wire.channel, "FRAME_DEADLINE", 0.5)
    served = serve(CountEnv, transport)
    env = served.client(rnp.RemoteEnv)
    env.reset(seed=1)
    if served.shm:
        # Over shared memory a large message spills to the socket: announce one.
        from rlmesh.wire.channel import RingChannel

        env._conn.channel.tx.put(b"", 5, tag=RingChannel.SPILL_TAG)
    env._conn.stream._sock.sendall(struct.pack("<II", 100, 4))  # 96 bytes promised, never sent
    deadline = time.monotonic() + 5
    while served.server._sessions:
        assert time.monotonic() < deadline, "the server still waits for the rest of the frame"
        time.sleep(0.05)
    with pytest.raises(ConnectionError):
        env.step(1)
    env.close()
    assert served.client(rnp.RemoteEnv).reset(seed=2)[0][2] == 2  # the server serves on


def test_a_server_refusing_our_protocol_names_both_versions(tmp_path, monkeypatch) -> None:
    """The other direction: a real server turns away a client speaking protocol 2."""
    proc, addr = serve_subprocess("tests.envs:make_count_env", f"unix://{tmp_path}/s.sock")
    try:
        monkeypatch.setattr(rlmesh.wire.protocol, "PROTOCOL_VERSION", 2)
        with pytest.raises(rlmesh.errors.VersionMismatch, match="speaks protocol 2") as caught:
            rlmesh.RemoteEnv(addr)
        assert (caught.value.local, caught.value.remote) == (2, 1)
    finally:
        kill(proc)


def test_an_oversized_or_garbage_frame_drops_that_connection_only(serve) -> None:
    served = serve(CountEnv, options=rlmesh.ServeOptions(max_message_bytes=1 << 20))
    good = served.client(rnp.RemoteEnv)
    good.reset()
    # A length prefix of 4 GiB: rejected before anything is allocated.
    sock = _raw_connect(served.server.address)
    sock.sendall(struct.pack("<I", 0xFFFFFFF0))
    sock.settimeout(5)
    assert sock.recv(1) == b""  # the server hung up
    sock.close()
    garbage = _raw_connect(served.server.address)
    garbage.sendall(struct.pack("<II", 12, 8) + b"\xc1" * 8)
    garbage.settimeout(5)
    assert garbage.recv(64) == b""  # not a HELLO: the server hung up
    garbage.close()
    # The established session never noticed.
    assert good.step(1)[0][0] == 1


def test_a_silent_connection_is_dropped_at_the_handshake_deadline(serve) -> None:
    served = serve(TinyEnv(), options=rlmesh.ServeOptions(handshake_timeout_seconds=0.3))
    sock = _raw_connect(served.server.address)
    sock.settimeout(5)
    start = time.monotonic()
    assert sock.recv(1) == b""
    assert time.monotonic() - start < 3
    sock.close()
    assert served.client().reset()[0] == 0


def test_observations_held_past_the_ring_depth_stay_unchanged(serve) -> None:
    served = serve(CountEnv(limit=10_000, width=4096))  # 16 KiB: leased slab blocks
    env = served.client()
    assert env.data_plane == "shm"
    env.reset(seed=3)
    held = [env.step(0)[0] for _ in range(40)]  # far more than the slots per ring
    views = [np.from_dlpack(t) for t in held[::7]]
    for _ in range(40):
        env.step(1)
    assert [t.tolist()[0] for t in held] == [float(i + 1) for i in range(40)]
    assert [v[0] for v in views] == [float(i + 1) for i in range(0, 40, 7)]
    leases = served.server.stats()["sessions"][0]["leases"]
    assert leases >= 40
    del held, views
    env.step(0)  # the releases ride on this request
    assert served.server.stats()["sessions"][0]["leases"] <= 2


def test_shm_observations_really_live_in_shared_memory(serve) -> None:
    served = serve(functools.partial(CountEnv, width=4096))  # 16 KiB: at SHM_INLINE_LIMIT, a slab block
    env = served.client()
    obs, _ = env.reset()
    address = obs.address
    mapping = None
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, *_, path = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in span.split("-"))
            if lo <= address < hi:
                mapping = line
    # A Unix session's slab is a sealed memfd (over TCP it would be a named /dev/shm segment).
    assert mapping is not None and "/memfd:rlm-" in mapping, mapping
    assert address % 64 == 0
    assert np.from_dlpack(obs).ctypes.data == address
    inline = serve(CountEnv, "unix-inline").client()
    inline_obs, _ = inline.reset()
    with open("/proc/self/maps") as maps:
        assert not any(
            ("/dev/shm" in line or "/memfd:" in line)
            and int(line.split("-")[0], 16) <= inline_obs.address < int(line.split()[0].split("-")[1], 16)
            for line in maps
        )


@pytest.mark.parametrize("width", [4, 4095])
def test_small_shm_observations_travel_inline_without_a_lease(serve, width: int) -> None:
    # Below SHM_INLINE_LIMIT (16 KiB) a leaf is copied in the ring record: no block, no lease, no release.
    assert width * 4 < rlmesh.specs.SHM_INLINE_LIMIT
    served = serve(CountEnv(limit=10_000, width=width))
    env = served.client()
    assert env.data_plane == "shm"
    (session,) = served.server._sessions
    obs, _ = env.reset(seed=3)
    held = [obs] + [env.step(0)[0] for _ in range(20)]
    assert served.server.stats()["sessions"][0]["leases"] == 0
    assert not session.data._owner and not session.data.slab.segments  # nothing was ever leased
    assert env._conn.peer is not None and not env._conn.peer.take_releases()
    assert [t.tolist()[0] for t in held] == [float(i) for i in range(21)]
    with open("/proc/self/maps") as maps:
        for line in maps:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= held[-1].address < hi:
                assert "/memfd:" not in line and "/dev/shm" not in line, line  # a private copy
    # The same env with a 16 KiB leaf: a slab block and a lease.
    big_served = serve(CountEnv(limit=10_000, width=4096))
    big = big_served.client()
    kept = big.reset(seed=3)[0]
    assert kept.nbytes == rlmesh.specs.SHM_INLINE_LIMIT
    assert big_served.server.stats()["sessions"][0]["leases"] == 1
    del kept
    big.step(0)  # carries the release; its own observation is leased now
    assert big_served.server.stats()["sessions"][0]["leases"] == 1


def test_a_large_frame_before_the_handshake_is_refused_at_once(serve) -> None:
    # The session limit is 256 MiB; before HELLO the server accepts 64 KiB at most,
    # so it hangs up on this length prefix instead of allocating and waiting for it.
    served = serve(TinyEnv())
    sock = _raw_connect(served.server.address)
    sock.settimeout(5)
    start = time.monotonic()
    sock.sendall(struct.pack("<I", 100 << 20))
    assert sock.recv(1) == b""
    assert time.monotonic() - start < 2
    sock.close()
    assert served.client().reset()[0] == 0
