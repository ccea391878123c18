"""The lifecycle contract (rlmesh._lifecycle), checked on every resource owner.

Each row of ``OWNERS`` builds one real owner (over real shared memory, real
sockets, a real in-process EnvServer with a tiny env from ``tests/envs.py``)
and names a call that must fail after close and, where the owner has one, a
call that blocks. Every owner must pass the same five checks:

* it starts OPEN (a server: NEW, then OPEN once started);
* ``close()`` twice is fine and ends CLOSED;
* a call after close raises ClosedError;
* a close from another thread wins over the blocking call: the blocked
  thread raises ClosedError (or, for a loop that handles it, returns) within
  2 s, and ``close()`` returns within 2 s;
* dropped unclosed, it warns ``ResourceWarning("... was never closed")`` on
  ``gc.collect()`` and its resources are gone (its descriptor closed, its
  /dev/shm entry removed). Owners that hold no OS resource of their own
  (channels and slot rings: their session or slab owns the memory and the
  socket) have no finalizer, and dropping them must stay silent.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rlmesh
from rlmesh._adapter import EnvAdapter
from rlmesh._lifecycle import State
from rlmesh.errors import BusyError, ClosedError
from rlmesh.net.address import Address
from rlmesh.net.listener import Listener
from rlmesh.net.stream import SocketStream
from rlmesh.shm import PeerMemory, Segment, Slab, SlotRing
from rlmesh.wire.channel import RingChannel, SocketChannel, channel_layout
from rlmesh.wire.client_session import ClientSession
from rlmesh.wire.codec import TailBuilder
from rlmesh.wire.server_session import DataPlane, ServerSession, SessionConfig
from tests.envs import CountEnv, GateEnv, TinyEnv

#: How long a close may take, and how long a woken call may take to leave.
PROMPT = 2.0


@dataclasses.dataclass
class Made:
    """An owner and what the checks need around it.

    ``gone`` says whether the owner's resources are released; it must not
    reference the owner (the drop check collects it). ``cleanup`` closes
    what the factory built besides the owner.
    """

    owner: Any
    gone: Callable[[], bool]
    cleanup: Callable[[], None] = lambda: None


@dataclasses.dataclass(frozen=True)
class Kind:
    """One row of the contract table."""

    name: str
    make: Callable[[Path], Made]
    #: A call that must raise ClosedError once the owner is closed.
    use: Callable[[Any], object]
    #: A call that blocks until the owner is closed (None: nothing blocks).
    block: Callable[[Any], object] | None = None
    #: The blocked call returns when closed (a serving loop), rather than raising.
    block_returns: bool = False
    #: Owns OS resources: a finalizer releases them and warns.
    finalizer: bool = True
    #: Starts NEW: this call makes it OPEN.
    start: Callable[[Any], object] | None = None


# -- probes ------------------------------------------------------------------------------


def fd_closed(fd: int) -> Callable[[], bool]:
    """True once ``fd`` no longer refers to the file it refers to now."""
    ino = os.fstat(fd).st_ino

    def gone() -> bool:
        try:
            return os.fstat(fd).st_ino != ino
        except OSError:
            return True

    return gone


def shm_gone(name: str) -> Callable[[], bool]:
    return lambda: not os.path.exists(f"/dev/shm/{name}")


def mappings_of(name: str) -> int:
    with open("/proc/self/maps") as maps:
        return sum(name in line for line in maps)


def both(*probes: Callable[[], bool]) -> Callable[[], bool]:
    return lambda: all(probe() for probe in probes)


# -- factories -------------------------------------------------------------------------------


def make_segment(tmp: Path) -> Made:
    seg = Segment.create(4096)
    return Made(seg, shm_gone(seg.name))


def memfd_gone(segment: Segment) -> Callable[[], bool]:
    """No mapping of the memfd is left, and the creator's descriptor is closed."""
    label, fd = segment.name.removeprefix("memfd:"), segment.fileno()

    def gone() -> bool:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        return mappings_of(f"/memfd:{label}") == 0 and label not in target

    return gone


def make_memfd_segment(tmp: Path) -> Made:
    seg = Segment.create_memfd(4096)
    return Made(seg, memfd_gone(seg))


def make_memfd_peer_memory(tmp: Path) -> Made:
    owner = Segment.create_memfd(1 << 16)
    peer = PeerMemory()
    peer.add_memfd(1, os.dup(owner.fileno()), owner.size)
    label = owner.name.removeprefix("memfd:")
    assert mappings_of(f"/memfd:{label}") == 2
    owner.close()
    return Made(peer, lambda: mappings_of(f"/memfd:{label}") == 0)


def make_slab(tmp: Path) -> Made:
    slab = Slab(segment_size=1 << 16)
    slab.alloc(64)
    (segment,) = slab.segments.values()
    return Made(slab, shm_gone(segment.name))


def make_peer_memory(tmp: Path) -> Made:
    owner_segment = Segment.create(1 << 16)
    peer = PeerMemory()
    peer.add_segment(1, owner_segment.name, owner_segment.size)
    name = owner_segment.name
    assert mappings_of(name) == 2
    return Made(peer, lambda: mappings_of(name) == 1, owner_segment.close)


def make_slot_ring(tmp: Path) -> Made:
    slab = Slab(segment_size=1 << 16)
    ring = SlotRing(slab, 64, 1, policy="wait")
    ring.acquire(timeout=0)  # every slot leased: the next acquire waits
    return Made(ring, lambda: True, slab.close)


def make_socket_stream(tmp: Path) -> Made:
    mine, theirs = socket.socketpair()
    stream = SocketStream(mine)
    return Made(stream, fd_closed(mine.fileno()), theirs.close)


def make_listener(tmp: Path) -> Made:
    path = str(tmp / "listen.sock")
    listener = Listener(Address("unix", path=path))
    return Made(listener, both(fd_closed(listener.fileno()), lambda: not os.path.exists(path)))


def make_socket_channel(tmp: Path) -> Made:
    mine, theirs = socket.socketpair()
    stream, peer = SocketStream(mine), SocketStream(theirs)

    def cleanup() -> None:
        stream.close()
        peer.close()

    return Made(SocketChannel(stream), lambda: True, cleanup)


def make_ring_channel(tmp: Path) -> Made:
    size, req, resp = channel_layout(1 << 12, 1 << 12)
    segment = Segment.create(size)
    mine, theirs = socket.socketpair()
    stream, peer = SocketStream(mine), SocketStream(theirs)
    channel = RingChannel(stream, segment, tx=(req, 1 << 12), rx=(resp, 1 << 12), spin=None)

    def cleanup() -> None:
        stream.close()
        peer.close()
        segment.close()

    return Made(channel, lambda: True, cleanup)


def make_data_plane(tmp: Path) -> Made:
    data = DataPlane(EnvAdapter(CountEnv()).contract)
    data.acquire(16)
    names = [segment.name for segment in data.slab.segments.values()]
    return Made(data, both(*(shm_gone(name) for name in names)))


class FakeHost:
    """A SessionHost with no env: enough for a session waiting for its handshake."""

    def __init__(self) -> None:
        self.stopping = threading.Event()

    def open_session(self, session: ServerSession) -> Any:
        raise BusyError("no env here")

    def active_sessions(self) -> int:
        return 1

    def shutdown_allowed(self) -> bool:
        return False

    def request_stop(self) -> None:
        self.stopping.set()

    def session_ended(self, session: ServerSession) -> None:
        pass


def make_server_session(tmp: Path) -> Made:
    mine, theirs = socket.socketpair()
    log = logging.getLogger(__name__)
    config = SessionConfig(handshake_timeout=30.0, shared_memory=True, spin=0.0, log=log)
    session = ServerSession(FakeHost(), SocketStream(mine), config)
    return Made(session, fd_closed(mine.fileno()), theirs.close)


def _served(tmp: Path) -> tuple[rlmesh.EnvServer, GateEnv]:
    env = GateEnv(hold=10.0)
    server = rlmesh.EnvServer(env, f"unix://{tmp}/env.sock").start()
    return server, env


def _stop(server: rlmesh.EnvServer, env: GateEnv) -> Callable[[], None]:
    def cleanup() -> None:
        env.gate.set()  # a step held in flight finishes; the server drains at once
        server.shutdown()

    return cleanup


def make_client_session(shm: bool) -> Callable[[Path], Made]:
    def make(tmp: Path) -> Made:
        server, env = _served(tmp)
        conn = ClientSession(
            Address("unix", path=f"{tmp}/env.sock"),
            connect_timeout=10.0,
            request_timeout=30.0,
            shared_memory=shm,
            max_message_bytes=1 << 20,
        )
        assert conn.data_plane == ("shm" if shm else "inline")
        return Made(conn, fd_closed(conn.stream.fileno()), _stop(server, env))

    return make


def make_remote_env(tmp: Path) -> Made:
    server, env = _served(tmp)
    client = rlmesh.RemoteEnv(server.address, request_timeout_seconds=30)
    return Made(client, fd_closed(client._conn.stream.fileno()), _stop(server, env))


def make_gymnasium_env(tmp: Path) -> Made:
    import rlmesh.gymnasium as rg

    server, env = _served(tmp)
    face = rg.RemoteEnv(server.address, request_timeout_seconds=30)
    return Made(face, fd_closed(face.client._conn.stream.fileno()), _stop(server, env))


def make_gymnasium_vector_env(tmp: Path) -> Made:
    import rlmesh.gymnasium as rg
    from tests.envs import TinyVectorEnv

    server = rlmesh.EnvServer(TinyVectorEnv(num_envs=2), f"unix://{tmp}/vec.sock").start()
    face = rg.RemoteVectorEnv(server.address, request_timeout_seconds=30)
    return Made(face, fd_closed(face.client._conn.stream.fileno()), server.shutdown)


def make_sharded_vector_env(tmp: Path) -> Made:
    from rlmesh.vector.sharded import ShardedVectorEnv
    from tests.envs import TinyVectorEnv

    servers = [
        rlmesh.EnvServer(TinyVectorEnv(num_envs=2), f"unix://{tmp}/shard{i}.sock").start() for i in range(2)
    ]
    env = ShardedVectorEnv([server.address for server in servers], request_timeout_seconds=30)
    fds = [fd_closed(ep.client._conn.stream.fileno()) for ep in env._endpoints]

    def cleanup() -> None:
        for server in servers:
            server.shutdown()

    return Made(env, both(*fds), cleanup)


def make_env_server(tmp: Path) -> Made:
    env = TinyEnv()
    path = f"{tmp}/env.sock"
    server = rlmesh.EnvServer(env, f"unix://{path}")
    return Made(server, both(lambda: not os.path.exists(path), lambda: env.close_calls == 1))


def make_model_session(tmp: Path) -> Made:
    server, env = _served(tmp)
    session = rlmesh.session(rlmesh.Model(lambda obs: 0), server.address)
    session.reset(seed=1)
    fd = session.client._conn.stream.fileno()
    return Made(session, fd_closed(fd), _stop(server, env))


class GateModel(rlmesh.Model):
    """A served model whose predict waits for its gate (so a predict can be held in flight)."""

    observation_space = rlmesh.spaces.Box(-1.0, 1.0, (2,), "float32")
    action_space = rlmesh.spaces.Discrete(2)

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.closes = 0
        super().__init__()

    def predict(self, observation: Any) -> Any:
        self.gate.wait(10.0)
        return 0

    def close(self) -> None:
        self.closes += 1


def make_remote_model(tmp: Path) -> Made:
    import rlmesh.numpy as rnp

    model = GateModel()
    server = model.server(f"unix://{tmp}/model.sock").start()
    client = rnp.RemoteModel(server.address, request_timeout_seconds=30)

    def cleanup() -> None:
        model.gate.set()
        server.shutdown()

    return Made(client, fd_closed(client._conn.stream.fileno()), cleanup)


def make_model_server(tmp: Path) -> Made:
    model = GateModel()
    path = f"{tmp}/model.sock"
    server = model.server(f"unix://{path}")
    return Made(server, both(lambda: not os.path.exists(path), lambda: model.closes == 1))


def _zeros2() -> Any:
    import numpy as np

    return np.zeros(2, dtype=np.float32)


def make_worker_pool(tmp: Path) -> Made:
    from rlmesh.vector.pool import VectorSource, WorkerPool

    source = VectorSource(TinyEnv, 2, {}, "NextStep")
    contract = EnvAdapter(source.facade).contract
    pool = WorkerPool(source, contract, 2)
    pids = list(pool.pids)
    name = pool.segment.name if pool.segment is not None else ""

    def gone() -> bool:
        return shm_gone(name)() and not any(os.path.exists(f"/proc/{pid}/cmdline") for pid in pids)

    return Made(pool, gone)


OWNERS = [
    Kind("Segment", make_segment, use=lambda s: s.buf),
    Kind("Segment (memfd)", make_memfd_segment, use=lambda s: s.buf),
    Kind("PeerMemory (memfd)", make_memfd_peer_memory, use=lambda p: p.add_segment(2, "rlm-none", 4096)),
    Kind("Slab", make_slab, use=lambda s: s.alloc(64)),
    Kind("PeerMemory", make_peer_memory, use=lambda p: p.add_segment(2, "rlm-none", 4096)),
    Kind(
        "SlotRing",
        make_slot_ring,
        use=lambda r: r.acquire(timeout=0),
        block=lambda r: r.acquire(timeout=30),
        finalizer=False,
    ),
    Kind(
        "SocketStream",
        make_socket_stream,
        use=lambda s: s.send(b"late", timeout=1),
        block=lambda s: s.recv_frame(30),
    ),
    Kind("Listener", make_listener, use=lambda x: x.accept(0), block=lambda x: x.accept(30)),
    Kind(
        "SocketChannel",
        make_socket_channel,
        use=lambda c: c.send(b"late", timeout=1),
        block=lambda c: c.recv(30),
        finalizer=False,
    ),
    Kind(
        "RingChannel",
        make_ring_channel,
        use=lambda c: c.send(b"late", timeout=1),
        block=lambda c: c.recv(30),
        finalizer=False,
    ),
    Kind("DataPlane", make_data_plane, use=lambda d: d.acquire(16)),
    Kind(
        "ServerSession",
        make_server_session,
        use=lambda s: s.run(),
        block=lambda s: s.run(),
        block_returns=True,
    ),
    Kind(
        "ClientSession-shm",
        make_client_session(True),
        use=lambda c: c.reset(None, None, 5.0),
        block=lambda c: c.step(1, TailBuilder(), 30.0),
    ),
    Kind(
        "ClientSession-inline",
        make_client_session(False),
        use=lambda c: c.reset(None, None, 5.0),
        block=lambda c: c.step(1, TailBuilder(), 30.0),
    ),
    Kind("RemoteEnv", make_remote_env, use=lambda c: c.reset(seed=1), block=lambda c: c.step(1)),
    Kind("gymnasium.RemoteEnv", make_gymnasium_env, use=lambda e: e.reset(seed=1), block=lambda e: e.step(1)),
    Kind("gymnasium.RemoteVectorEnv", make_gymnasium_vector_env, use=lambda e: e.reset(seed=1)),
    Kind("ShardedVectorEnv", make_sharded_vector_env, use=lambda e: e.reset(seed=1)),
    Kind(
        "EnvServer",
        make_env_server,
        use=lambda s: s.start(),
        block=lambda s: s.wait(30),
        block_returns=True,
        start=lambda s: s.start(),
    ),
    Kind("Session", make_model_session, use=lambda s: s.reset(seed=2), block=lambda s: s.step(1)),
    Kind("WorkerPool", make_worker_pool, use=lambda p: p.offer()),
    Kind(
        "RemoteModel",
        make_remote_model,
        use=lambda m: m.predict(_zeros2()),
        block=lambda m: m.predict(_zeros2()),
    ),
    Kind(
        "ModelServer",
        make_model_server,
        use=lambda s: s.start(),
        block=lambda s: s.wait(30),
        block_returns=True,
        start=lambda s: s.start(),
    ),
]


@pytest.fixture(params=OWNERS, ids=[kind.name for kind in OWNERS])
def kind(request: pytest.FixtureRequest) -> Kind:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def made(kind: Kind, tmp_path: Path) -> Iterator[Made]:
    built = kind.make(tmp_path)
    try:
        yield built
    finally:
        if built.owner is not None:
            built.owner.close()
        built.cleanup()


def opened(kind: Kind, made: Made) -> Any:
    owner = made.owner
    if kind.start is not None:
        assert owner.state is State.NEW
        kind.start(owner)
    return owner


# -- the contract --------------------------------------------------------------------------


def test_starts_open(kind: Kind, made: Made) -> None:
    owner = opened(kind, made)
    assert owner.state is State.OPEN


def test_close_twice_ends_closed(kind: Kind, made: Made) -> None:
    owner = opened(kind, made)
    owner.close()
    assert owner.state is State.CLOSED
    owner.close()
    assert owner.state is State.CLOSED


def test_use_after_close_raises_closed_error(kind: Kind, made: Made) -> None:
    owner = opened(kind, made)
    owner.close()
    with pytest.raises(ClosedError):
        kind.use(owner)


def test_close_from_another_thread_wins_over_a_blocked_call(kind: Kind, made: Made) -> None:
    if kind.block is None:
        pytest.skip(f"{kind.name} has no blocking call")
    block = kind.block
    owner = opened(kind, made)
    outcome: dict[str, Any] = {}

    def blocked() -> None:
        try:
            outcome["value"] = block(owner)
        except BaseException as exc:  # noqa: BLE001 - the outcome is the check
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    thread = threading.Thread(target=blocked, daemon=True)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive(), f"the blocking call did not block: {outcome}"
    start = time.monotonic()
    owner.close()
    closed_in = time.monotonic() - start
    thread.join(PROMPT)
    assert not thread.is_alive(), "the blocked call was not woken by close()"
    assert closed_in < PROMPT, f"close() took {closed_in:.2f}s"
    assert outcome["at"] - start < PROMPT
    if kind.block_returns:
        assert "error" not in outcome, outcome
    else:
        assert isinstance(outcome.get("error"), ClosedError), outcome
    assert owner.state is State.CLOSED


def test_dropped_owner_warns_and_releases(kind: Kind, made: Made) -> None:
    owner, made.owner = made.owner, None
    gone = made.gone
    if not kind.finalizer:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            del owner
            gc.collect()
        return
    assert not gone()
    with pytest.warns(ResourceWarning, match="was never closed"):
        del owner
        gc.collect()
    assert gone()
