"""rlmesh.testing.check_channel over every channel, and the rings' counters near their limits.

Implementations: SocketChannel over a Unix socketpair and over TCP loopback;
RingChannel over real shared-memory rings (two mappings of one segment, both
ends in this process), and across a fork for an echo and a SIGKILL.

Counter wrap-around: a MessageRing keeps its head and tail as u64 byte counts
in the segment, and reads them from there when it is built, so a test can
start them anywhere. Crossing 2**63 must work (a signed 64-bit counter, as a
native ring could use by mistake, breaks there), and so must crossing 2**64:
the ring computes modulo 2**64, as the stored words wrap. At 10 GB/s a ring
needs 58 years to get there from 0, but a peer writes these words too. The doorbell's u32 sequence number
wraps every 2**32 messages, which is hours of steps, and must keep waking.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from rlmesh.errors import BrokenError, OperationTimeout
from rlmesh.net.stream import SocketStream
from rlmesh.shm import Segment, SegmentKind
from rlmesh.testing import CHANNEL_CHECKS, PairMaker, check_channel, check_order, check_sizes
from rlmesh.wire.channel import Channel, RingChannel, SocketChannel, channel_layout
from rlmesh.wire.codec import TailBuilder
from tests.conftest import run_python

pytestmark = pytest.mark.timeout(90)

RING_CAPACITY = 64 << 10
_HEAD, _TAIL, _DATA_SEQ = 0, 64, 128  # offsets in a ring's control block (rlmesh/shm/ring.py)


@contextlib.contextmanager
def unix_sockets() -> Iterator[tuple[Channel, Channel]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left, right = SocketChannel(SocketStream(a)), SocketChannel(SocketStream(b))
    try:
        yield left, right
    finally:
        left.stream.close()
        right.stream.close()


@contextlib.contextmanager
def tcp_sockets() -> Iterator[tuple[Channel, Channel]]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    left, right = SocketChannel(SocketStream(a)), SocketChannel(SocketStream(b))
    try:
        yield left, right
    finally:
        left.stream.close()
        right.stream.close()


@contextlib.contextmanager
def ring_segment(counter: int = 0, sequence: int = 0) -> Iterator[tuple[Segment, int, int]]:
    """A channel segment with both rings' counters and doorbell sequences preset."""
    size, req_off, resp_off = channel_layout(RING_CAPACITY, RING_CAPACITY)
    segment = Segment.create(size, SegmentKind.CHANNEL)
    try:
        for ring in (req_off, resp_off):
            struct.pack_into("<QQ", segment.buf, ring + _HEAD, counter, 0)
            struct.pack_into("<Q", segment.buf, ring + _TAIL, counter)
            struct.pack_into("<I", segment.buf, ring + _DATA_SEQ, sequence)
        yield segment, req_off, resp_off
    finally:
        segment.close()


def ring_maker(counter: int = 0, sequence: int = 0) -> PairMaker:
    @contextlib.contextmanager
    def rings() -> Iterator[tuple[Channel, Channel]]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        streams = SocketStream(a), SocketStream(b)
        with ring_segment(counter, sequence) as (segment, req_off, resp_off):
            # The server's side maps the segment it created; the client's its own mapping.
            peer = Segment.attach(segment.name, segment.size)
            req, resp = (req_off, RING_CAPACITY), (resp_off, RING_CAPACITY)
            left = RingChannel(streams[0], peer, tx=req, rx=resp, spin=None)
            right = RingChannel(streams[1], segment, tx=resp, rx=req, spin=None)
            try:
                yield left, right
            finally:
                for channel in (left, right):
                    channel.close()
                    channel.stream.close()
                del left, right
                peer.close()

    return rings


IMPLEMENTATIONS: dict[str, PairMaker] = {
    "socket-unix": unix_sockets,
    "socket-tcp": tcp_sockets,
    "ring": ring_maker(),
}


@pytest.mark.parametrize("check", sorted(CHANNEL_CHECKS))
@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
def test_channel_conformance(implementation: str, check: str) -> None:
    CHANNEL_CHECKS[check](IMPLEMENTATIONS[implementation])


def test_check_channel_runs_every_check() -> None:
    ran: list[str] = []

    @contextlib.contextmanager
    def counting() -> Iterator[tuple[Channel, Channel]]:
        with unix_sockets() as pair:
            ran.append("pair")
            yield pair

    check_channel(counting)
    # order 1, sizes 1, peer death 1, close 2 (one per side), deadlines 1.
    assert len(ran) == 6


class _Lossy(SocketChannel):
    """A broken channel: drops every third message. The suite must notice."""

    sent = 0

    def send(self, head: bytes, tail: TailBuilder | None = None, *, timeout: float | None = None) -> None:
        self.sent += 1
        if self.sent % 3:
            super().send(head, tail, timeout=timeout)


def test_the_suite_catches_a_channel_that_loses_messages() -> None:
    @contextlib.contextmanager
    def lossy() -> Iterator[tuple[Channel, Channel]]:
        a, b = socket.socketpair()
        left, right = _Lossy(SocketStream(a)), SocketChannel(SocketStream(b))
        try:
            yield left, right
        finally:
            left.stream.close()
            right.stream.close()

    with pytest.raises(AssertionError, match="wrong head"):
        check_order(lossy)


# -- counters near their limits ------------------------------------------------------------


def test_ring_counters_crossing_2_63() -> None:
    maker = ring_maker(counter=(1 << 63) - 20_000)
    check_order(maker)
    check_sizes(maker)


def test_ring_doorbell_sequence_wraps() -> None:
    # 5 messages before the u32 wraps; the order check sends 1,200, most of them
    # to a receiver asleep on the doorbell.
    check_order(ring_maker(sequence=(1 << 32) - 5))


def test_ring_counters_crossing_2_64() -> None:
    with ring_maker(counter=(1 << 64) - 1000)() as (left, right):
        for i in range(100):  # 100 small records cross the wrap
            left.send(b"%d" % i, timeout=1)
            message = right.recv(1)
            assert bytes(message.head) == b"%d" % i
            message.done()
        with pytest.raises(OperationTimeout):
            right.recv(0.1).done()  # empty: must time out, not hand out a stale record


# -- across processes ----------------------------------------------------------------------


def _serve_echo(channel: Channel) -> None:
    while True:
        message = channel.recv(30)
        head, tail = bytes(message.head), bytes(message.tail)
        message.done()
        if head == b"bye":
            return
        if head == b"flood":
            builder = TailBuilder()
            builder.add(bytes(64 << 20), 64 << 20)  # spills to the socket; killed half-way
            channel.send(b"flood", builder, timeout=30)
            continue
        builder = TailBuilder()
        builder.add(tail, len(tail))
        channel.send(head, builder if tail else None, timeout=30)


@contextlib.contextmanager
def forked_ring_peer() -> Iterator[tuple[RingChannel, int]]:
    """This side's RingChannel and the pid of a forked child echoing on the other side."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ring_segment() as (segment, req_off, resp_off):
        req, resp = (req_off, RING_CAPACITY), (resp_off, RING_CAPACITY)
        pid = os.fork()
        if pid == 0:  # the child: serve, then leave without running any finalizer
            code = 1
            try:
                a.close()
                _serve_echo(RingChannel(SocketStream(b), segment, tx=resp, rx=req, spin=None))
                code = 0
            finally:
                os._exit(code)
        b.close()  # or the child's death would never close the socket for us
        channel = RingChannel(SocketStream(a), segment, tx=req, rx=resp, spin=None)
        try:
            yield channel, pid
        finally:
            channel.close()
            channel.stream.close()
            with contextlib.suppress(ProcessLookupError, ChildProcessError):  # a test may have reaped it
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            del channel


def _in_a_clean_interpreter(scenario: str) -> None:
    # os.fork() in a process that imported JAX (other tests do) warns, and the
    # suite turns warnings into errors: fork from a fresh interpreter instead.
    here, name = str(pathlib.Path(__file__).parent), pathlib.Path(__file__).stem
    out = run_python(
        f"import sys; sys.path.insert(0, {here!r}); import {name} as t; t.{scenario}(); print('done')"
    )
    assert out.strip().endswith("done")


def test_ring_channel_echoes_across_a_fork() -> None:
    _in_a_clean_interpreter("echo_across_a_fork")


def test_a_ring_peer_killed_mid_message_is_broken_not_truncated() -> None:
    _in_a_clean_interpreter("peer_killed_mid_message")


def echo_across_a_fork() -> None:
    with forked_ring_peer() as (channel, pid):
        sizes = [0, 1, 64, 4096, 40_000, 200_000, 3 << 20]  # the last two spill
        for i, size in enumerate(sizes * 3):
            data = bytes([i & 0xFF]) * size
            builder = TailBuilder()
            builder.add(data, size)
            channel.send(b"m%d" % i, builder if size else None, timeout=10)
            message = channel.recv(10)
            assert (bytes(message.head), bytes(message.tail)) == (b"m%d" % i, data)
            message.done()
        channel.send(b"bye", timeout=10)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def peer_killed_mid_message() -> None:
    with forked_ring_peer() as (channel, pid):
        channel.send(b"flood", timeout=10)
        time.sleep(0.3)  # the child is now blocked half-way through a 64 MiB spilled frame
        os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(BrokenError):
            channel.recv(10).done()
        assert time.monotonic() - start < 2.0
