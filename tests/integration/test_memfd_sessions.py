"""Unix-socket sessions share sealed memfds; a hostile server process cannot hurt the client.

The client is the side that maps memory it did not create (in a sandbox, the
host maps the container's segments), so the hostile peer here is a fake
server in another process that speaks the handshake with forged descriptors:
truncating what it sent, unsealed memfds, pipes, regular files, wrong sizes,
garbage headers, extra or too many descriptors. Every case ends in a typed
error or the inline fallback, and the client's descriptors are counted
before and after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rlmesh
from rlmesh.errors import BrokenError, RLMeshError
from rlmesh.net.address import parse_address
from rlmesh.shm import Handle
from rlmesh.wire.client_session import ClientSession
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(60)


def open_fds() -> dict[int, str]:
    """This process's descriptors and what each one is."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the listing's own descriptor, gone already
    return out


#: Descriptors the test itself opened (the fake server's stdout), left out of the counts.
OURS: set[int] = set()


def new_fds(before: dict[int, str]) -> list[str]:
    """What the descriptors opened since ``before`` are (sorted), the test's own left out."""
    return sorted(t for fd, t in open_fds().items() if before.get(fd) != t and fd not in OURS)


def only_the_session(before: dict[int, str]) -> None:
    """The client holds its socket and, before Python 3.13, mmap's own duplicate per mapped memfd.

    Nothing else: no descriptor a peer sent survives unmapped (pipes, files, extras).
    """
    new = new_fds(before)
    sockets = [t for t in new if t.startswith("socket:")]
    memfds = [t for t in new if t.startswith("/memfd:rlm-")]
    assert len(sockets) == 1 and len(sockets) + len(memfds) == len(new), new
    if sys.version_info >= (3, 13):
        assert not memfds, new


def segment_maps() -> list[str]:
    """This process's shared mappings of rlmesh segments, memfds and named ones."""
    with open("/proc/self/maps") as maps:
        return [
            line.split()[-2] if line.rstrip().endswith("(deleted)") else line.split()[-1]
            for line in maps
            if "rlm-" in line
        ]


class BigObsEnv:
    """Observations of 256 KiB: a client holding many of them makes the slab grow mid-session."""

    metadata: dict[str, Any] = {}
    render_mode = None

    def __init__(self) -> None:
        import gymnasium as gym

        self.observation_space = gym.spaces.Box(0, 255, (256, 1024), np.uint8)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.full((256, 1024), self.t % 251, np.uint8)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.t += 1
        return self._obs(), 1.0, False, False, {}

    def close(self) -> None:
        pass


def test_a_unix_session_maps_only_memfds_and_new_segments_arrive_as_descriptors(serve: Any) -> None:
    served = serve(BigObsEnv(), "unix-shm")
    env = served.client(rlmesh.RemoteEnv)
    assert env.data_plane == "shm"
    session = env._session if hasattr(env, "_session") else None
    held = [env.reset(seed=0)[0]]
    # Holding observations (zero-copy, leased) makes the server's slab grow: new
    # segments come with SEGMENTS frames carrying their memfds.
    for _ in range(24):
        held.append(env.step(0)[0])
    for i, obs in enumerate(held):
        assert np.asarray(obs)[0, 0] == i % 251
    maps = segment_maps()
    assert maps and all(m.startswith("/memfd:rlm-") for m in maps), maps
    assert not any(m.startswith("/dev/shm/") for m in maps)
    del held, session


def test_a_tcp_session_keeps_named_segments(serve: Any) -> None:
    served = serve(BigObsEnv(), "tcp-shm")
    env = served.client(rlmesh.RemoteEnv)
    assert env.data_plane == "shm"
    obs = env.reset(seed=0)[0]
    named = [m for m in segment_maps() if m.startswith("/dev/shm/rlm-")]
    assert named, segment_maps()
    del obs


# -- a hostile server process ------------------------------------------------------------------

FAKE_SERVER = r"""
import errno, json, os, socket, sys, tempfile
import gymnasium as gym
from rlmesh.net.stream import SocketStream
from rlmesh.shm import Segment, SegmentKind
from rlmesh.shm._layout import HEADER, LAYOUT_VERSION, MAGIC
from rlmesh.specs import EnvContract
from rlmesh.wire import protocol as P
from rlmesh.wire.channel import RingChannel, channel_layout, write_token
from rlmesh.wire.codec import decode, pack

path, mode = sys.argv[1], sys.argv[2]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
listener.listen(1)
print("listening", flush=True)
conn, _ = listener.accept()
stream = SocketStream(conn)
report = {}

def forged(size, seals, header=None):
    fd = os.memfd_create("rlm-forged", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    os.pwrite(fd, header or HEADER.pack(MAGIC, LAYOUT_VERSION, 9, size, 1, 1, 1), 0)
    if seals:
        import fcntl
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd

hello = P.Hello.from_wire(decode(stream.recv_frame(10)[0]))
report["hello_fds"] = hello.fds
box, two = gym.spaces.Box(0, 1, (4,)), gym.spaces.Discrete(2)
contract = EnvContract(id="Fake-v0", observation_space=box, action_space=two)
req_cap = resp_cap = 1 << 16
size, req_off, resp_off = channel_layout(req_cap, resp_cap)
channel = Segment.create_memfd(size, SegmentKind.CHANNEL)
token = write_token(channel)
slab = Segment.create_memfd(1 << 20, SegmentKind.SLAB)
fds = [channel.fileno(), slab.fileno()]
announced = size
if mode == "unsealed":
    fds[0] = forged(size, 0)
elif mode == "pipe":
    fds[0] = os.pipe()[0]
elif mode == "regular":
    f = tempfile.TemporaryFile()
    f.write(HEADER.pack(MAGIC, LAYOUT_VERSION, 9, size, 1, 1, 1).ljust(size, b"\0"))
    f.flush()
    fds[0] = f.fileno()
elif mode == "wrongsize":
    announced = size * 2
elif mode == "garbage":
    channel.buf[:64] = b"\xee" * 64
elif mode == "extra":
    fds += [os.pipe()[0] for _ in range(6)]
elif mode == "toomany":
    fds += [os.pipe()[0] for _ in range(30)]
offer = P.Offer(P.ChannelOffer(0, announced, req_off, req_cap, resp_off, resp_cap), [(1, 1, 1 << 20)])
welcome = P.Welcome(protocol=P.PROTOCOL_VERSION, version=P.RELEASE, pid=os.getpid(), session="fake",
                    contract=contract.to_dict(), offer=offer.to_wire())
if mode == "toomany":
    # A raw sendmsg: SocketStream.send refuses so many.
    import array, struct
    from rlmesh.net.framing import PREFIX
    head = pack(welcome.to_wire())
    body = struct.pack("<I", len(head)) + head
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
    conn.sendmsg([PREFIX.pack(len(body)) + body], rights)
else:
    stream.send(pack(welcome.to_wire()), timeout=10, fds=fds)
try:
    attached = P.Attached.from_wire(decode(stream.recv_frame(10)[0]))
except Exception as exc:
    report["handshake"] = repr(exc)
    print(json.dumps(report), flush=True)
    raise SystemExit(0)
report["token_ok"] = attached.token == token
report["reason"] = attached.reason
if mode == "truncate":
    for name, fd in (("channel", channel.fileno()), ("slab", slab.fileno())):
        for new_size in (0, 4096, (1 << 22)):
            try:
                os.ftruncate(fd, new_size)
                report[f"{name}-{new_size}"] = "ok"
            except OSError as exc:
                report[f"{name}-{new_size}"] = errno.errorcode[exc.errno]
    slab.buf[4096:4101] = b"ALIVE"
    slab.buf[(1 << 20) - 5:] = b"LAST!"
shm = attached.token == token
stream.send(pack(P.Ready("shm" if shm else "inline").to_wire()), timeout=10)
if mode == "badsegments":
    rings = RingChannel(stream, channel, tx=(resp_off, resp_cap), rx=(req_off, req_cap), spin=None)
    bad = forged(1 << 20, 0)
    rings.send_fds(pack(P.Segments([(7, 0, 1 << 20)]).to_wire()), [bad, os.pipe()[0]])
print(json.dumps(report), flush=True)
if mode == "flood":
    # Answers nobody asked for, as fast as the rings and the socket take them.
    import time
    rings = RingChannel(stream, channel, tx=(resp_off, resp_cap), rx=(req_off, req_cap), spin=None)
    junk = pack([P.OK, 987654, "x" * 200])
    end = time.monotonic() + 6
    while time.monotonic() < end:
        try:
            rings.send(junk, timeout=0.2)
            stream.send(pack([P.OK, 987653]), timeout=0.2)
        except Exception:
            time.sleep(0.01)
elif mode == "scribble":
    # Garbage over both rings, their counters included, while the client uses them.
    import random, time
    rng = random.Random(7)
    end = time.monotonic() + 6
    while time.monotonic() < end:
        for off, cap in ((req_off, req_cap), (resp_off, resp_cap)):
            channel.buf[off : off + 4096] = rng.randbytes(4096)
        time.sleep(0.001)
try:
    while True:
        stream.recv_frame(30)
except Exception:
    pass
"""


class FakeServer:
    def __init__(self, tmp_path: Path, mode: str) -> None:
        self.address = f"unix://{tmp_path}/fake.sock"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FAKE_SERVER, str(tmp_path / "fake.sock"), mode],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.proc.stdout is not None
        OURS.add(self.proc.stdout.fileno())
        assert self.proc.stdout.readline().strip() == "listening"

    def report(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the fake server died"
        return json.loads(line)

    def close(self) -> None:
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            OURS.discard(self.proc.stdout.fileno())
            self.proc.stdout.close()


def connect(address: str) -> ClientSession:
    return ClientSession(
        parse_address(address),
        connect_timeout=10.0,
        request_timeout=5.0,
        shared_memory=True,
        max_message_bytes=1 << 20,
    )


def test_a_peer_cannot_truncate_the_memfds_it_sent_and_the_client_keeps_reading(tmp_path: Path) -> None:
    before = open_fds()
    fake = FakeServer(tmp_path, "truncate")
    try:
        client = connect(fake.address)
        try:
            report = fake.report()
            assert report["hello_fds"] is True and report["token_ok"] is True
            assert client.data_plane == "shm"
            # Shrinking and growing the sealed segments failed in the peer: EPERM every time.
            tries = {k: v for k, v in report.items() if k.startswith(("channel-", "slab-"))}
            assert len(tries) == 6 and set(tries.values()) == {"EPERM"}, tries
            assert client.peer is not None
            view = client.peer.view(Handle(1, 1, 4096, 5))
            assert bytes(view) == b"ALIVE"
            # The last bytes are still mapped: no SIGBUS.
            last = client.peer.view(Handle(1, 1, (1 << 20) - 64, 64))
            assert bytes(last[-5:]) == b"LAST!"
            del view, last
            # Every descriptor that came with the WELCOME was closed once mapped.
            only_the_session(before)
        finally:
            client.close(timeout=0.2)
    finally:
        fake.close()
    assert new_fds(before) == []


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("unsealed", "lacks seals"),
        ("pipe", "not a regular file"),
        ("regular", "not a memfd"),
        ("wrongsize", "announced"),
        ("garbage", "layout"),
    ],
)
def test_a_forged_segment_is_refused_and_the_session_goes_inline(
    tmp_path: Path, mode: str, reason: str
) -> None:
    before = open_fds()
    fake = FakeServer(tmp_path, mode)
    try:
        client = connect(fake.address)
        try:
            report = fake.report()
            assert report["token_ok"] is False and reason in report["reason"], report
            assert client.data_plane == "inline"
            assert new_fds(before) == [t for t in new_fds(before) if t.startswith("socket:")]
            assert len(new_fds(before)) == 1  # the socket only: every descriptor received is closed
        finally:
            client.close(timeout=0.2)
    finally:
        fake.close()
    assert new_fds(before) == []


def test_extra_descriptors_with_the_welcome_are_closed(tmp_path: Path) -> None:
    before = open_fds()
    fake = FakeServer(tmp_path, "extra")
    try:
        client = connect(fake.address)
        try:
            assert fake.report()["token_ok"] is True
            assert client.data_plane == "shm"
            only_the_session(before)
        finally:
            client.close(timeout=0.2)
    finally:
        fake.close()
    assert new_fds(before) == []


def test_too_many_descriptors_are_all_closed_and_the_session_goes_inline(tmp_path: Path) -> None:
    before = open_fds()
    fake = FakeServer(tmp_path, "toomany")
    try:
        client = connect(fake.address)
        try:
            report = fake.report()
            assert report["token_ok"] is False and "did not carry" in report["reason"], report
            assert client.data_plane == "inline"
            assert len(new_fds(before)) == 1  # the socket: none of the 32 descriptors stayed
        finally:
            client.close(timeout=0.2)
    finally:
        fake.close()
    assert new_fds(before) == []


def test_a_forged_segment_announced_mid_session_breaks_the_session(tmp_path: Path) -> None:
    before = open_fds()
    fake = FakeServer(tmp_path, "badsegments")
    try:
        client = connect(fake.address)
        try:
            assert fake.report()["token_ok"] is True and client.data_plane == "shm"
            start = time.monotonic()
            with pytest.raises(BrokenError, match="refuses to map"):
                client.reset(None, None, timeout=5.0)
            assert time.monotonic() - start < 2.0
            only_the_session(before)
        finally:
            client.close(timeout=0.2)
    finally:
        fake.close()
    assert new_fds(before) == []


def test_a_vector_fast_path_over_unix_shares_its_session_segment_as_a_memfd(serve: Any) -> None:
    from rlmesh.numpy import RemoteVectorEnv

    served = serve("CartPole-v1", "unix-shm", num_envs=4, workers=2)
    env = served.client(RemoteVectorEnv)
    assert env._lanes is not None  # the fast path, straight to the workers
    obs, _ = env.reset(seed=3)
    for _ in range(3):
        obs, *_ = env.step(np.zeros(4, np.int64))
    maps = segment_maps()
    # The channel and the workers' session segment (CartPole's small batches travel inline
    # in the ring records, so the slab has no segment yet): all memfds, no /dev/shm name at all.
    assert len(set(maps)) >= 2 and all(m.startswith("/memfd:rlm-") for m in maps), maps


@pytest.mark.parametrize("mode", ["flood", "scribble"])
def test_a_peer_flooding_or_scribbling_over_the_rings_gets_a_typed_error_not_a_hang(
    tmp_path: Path, mode: str
) -> None:
    """A hostile peer that floods the session with answers nobody asked for, or writes
    garbage over the shared rings (counters included) while the client uses them: every
    request ends by its deadline in a typed error (or an answer never comes and the
    deadline says so); the host process neither crashes nor hangs, and keeps no descriptor."""
    before = open_fds()
    fake = FakeServer(tmp_path, mode)
    try:
        client = connect(fake.address)
        try:
            assert fake.report()["token_ok"] is True and client.data_plane == "shm"
            for _ in range(3):
                start = time.monotonic()
                with pytest.raises(RLMeshError):
                    client.reset(None, None, timeout=1.0)
                assert time.monotonic() - start < 3.0
        finally:
            client.close(timeout=0.2)
    finally:
        fake.proc.kill()
        fake.close()
    assert new_fds(before) == []
