"""Child-process bodies for test_shm_processes.py.

Kept apart from the test module so that spawn and forkserver children import
only this (stdlib, numpy, msgpack, rlmesh), not pytest and hypothesis.

A *channel* is one segment holding two MessageRings: ``requests`` (producer
to consumer) and ``responses`` (consumer to producer).
"""

from __future__ import annotations

import random
import struct
import time
import zlib
from multiprocessing.connection import Connection
from typing import Any

import msgpack
import numpy as np

from rlmesh.shm import (
    Doorbell,
    Handle,
    MessageRing,
    PeerMemory,
    Segment,
    SegmentKind,
    Slab,
    SlotRing,
    SpinPolicy,
)
from rlmesh.shm._layout import align_up

#: Every blocking call in a child gives up after this long.
STEP_TIMEOUT = 20.0

MIB = 1 << 20
KIB = 1 << 10


def channel_size(capacity: int) -> int:
    return 64 + 2 * align_up(MessageRing.footprint(capacity))


def channel_rings(
    seg: Segment, capacity: int, spin: SpinPolicy | None = None
) -> tuple[MessageRing, MessageRing]:
    """(requests, responses) over a channel segment."""
    second = 64 + align_up(MessageRing.footprint(capacity))
    requests = MessageRing(seg.buf, seg.address, 64, capacity, spin=spin)
    responses = MessageRing(seg.buf, seg.address, second, capacity, spin=spin)
    return requests, responses


def create_channel(capacity: int) -> Segment:
    return Segment.create(channel_size(capacity), SegmentKind.CHANNEL)


def attach_channel(name: str, capacity: int) -> Segment:
    return Segment.attach(name, channel_size(capacity))


def spin_policy(maximum: float | None) -> SpinPolicy | None:
    return None if maximum is None else SpinPolicy(maximum)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data)


# -- the zero-copy data exchange ------------------------------------------------------------


def payload_sizes(seed: int, count: int) -> list[int]:
    rng = random.Random(seed)
    fixed = [16, 28 * KIB, 4 * MIB]
    randoms = [rng.choice([0, 1, 63, 64, 65, rng.randrange(1, 4 * MIB)]) for _ in range(count - 6)]
    sizes = fixed * 2 + randoms
    rng.shuffle(sizes)
    return sizes


def run_producer(
    requests: MessageRing, responses: MessageRing, sizes: list[int], seed: int, window: int = 4
) -> dict[str, int]:
    """Send checksummed payloads through slab slots; take releases back. Returns stats."""
    rng = random.Random(seed)
    slot_size = max(sizes)
    stats = {"sent": 0, "released": 0, "segments": 0, "done": -1, "max_total": 0}
    with Slab(segment_size=16 * MIB) as slab:
        slots = SlotRing(slab, slot_size, 2, policy="grow")
        in_flight: dict[Handle, int] = {}

        def handle_response(raw: bytes) -> None:
            msg = unpack(raw)
            if msg[0] == "rel":
                for encoded in msg[1]:
                    handle = Handle.decode(encoded)
                    slots.release(handle)
                    del in_flight[handle]
                    stats["released"] += 1
            elif msg[0] == "done":
                stats["done"] = msg[1]
            else:
                raise AssertionError(f"consumer reported: {msg!r}")

        for n in sizes:
            while len(in_flight) >= window:
                handle_response(responses.get(timeout=STEP_TIMEOUT))
            while responses.pending():
                handle_response(responses.get_nowait())
            block = slots.acquire(timeout=STEP_TIMEOUT)
            payload = rng.randbytes(n)
            view = slab.view(block, n)
            view[:] = payload
            view.release()
            block.nbytes = n
            for sid, name, size in slab.take_new_segments():
                requests.put(pack(["seg", sid, name, size]), timeout=STEP_TIMEOUT)
                stats["segments"] += 1
            handle = block.handle
            in_flight[handle] = n
            requests.put(pack(["data", handle.encode(), zlib.crc32(payload)]), timeout=STEP_TIMEOUT)
            stats["sent"] += 1
            stats["max_total"] = max(stats["max_total"], slots.total)
        requests.put(pack(["end"]), timeout=STEP_TIMEOUT)
        while stats["done"] < 0:
            handle_response(responses.get(timeout=STEP_TIMEOUT))
        if in_flight or slots.leased:
            raise AssertionError(f"{len(in_flight)} payloads never released ({slots!r})")
        if slab.live_blocks != slots.total:
            raise AssertionError("the slot ring lost track of a block")
    return stats


def run_consumer(requests: MessageRing, responses: MessageRing) -> dict[str, int]:
    """Map announced segments, verify each payload through a zero-copy view, release it."""
    stats = {"received": 0, "zero_copy": 0, "bytes": 0, "segments": 0}
    with PeerMemory() as peer:
        segments: dict[int, Segment] = {}
        while True:
            msg = unpack(requests.get(timeout=STEP_TIMEOUT))
            if msg[0] == "seg":
                segments[msg[1]] = peer.add_segment(msg[1], msg[2], msg[3])
                stats["segments"] += 1
            elif msg[0] == "data":
                handle = Handle.decode(msg[1])
                view = peer.view(handle)
                arr = np.frombuffer(view, np.uint8)
                if handle.nbytes and arr.ctypes.data != segments[handle.segment].address + handle.offset:
                    responses.put(pack(["err", f"copied: {handle}"]), timeout=STEP_TIMEOUT)
                    raise AssertionError(f"view of {handle} is not zero-copy")
                if len(view) != handle.nbytes or zlib.crc32(view) != msg[2]:
                    responses.put(pack(["err", f"checksum: {handle}"]), timeout=STEP_TIMEOUT)
                    raise AssertionError(f"payload of {handle} is corrupt")
                stats["zero_copy"] += 1
                stats["received"] += 1
                stats["bytes"] += handle.nbytes
                del arr, view  # the lease dies here: its release is queued
                releases = peer.take_releases()
                if releases != [handle]:
                    raise AssertionError(f"expected the release of {handle}, got {releases}")
                responses.put(pack(["rel", [h.encode() for h in releases]]), timeout=STEP_TIMEOUT)
            elif msg[0] == "end":
                responses.put(pack(["done", stats["received"]]), timeout=STEP_TIMEOUT)
                return stats
            else:
                raise AssertionError(f"unexpected message {msg!r}")


def consumer_child(channel: str, capacity: int) -> None:
    seg = attach_channel(channel, capacity)
    try:
        requests, responses = channel_rings(seg, capacity, SpinPolicy())
        run_consumer(requests, responses)
        del requests, responses
    finally:
        seg.close()


def producer_child(conn: Connection, capacity: int, sizes: list[int], seed: int) -> None:
    with create_channel(capacity) as seg:
        conn.send(seg.name)
        requests, responses = channel_rings(seg, capacity, SpinPolicy())
        stats = run_producer(requests, responses, sizes, seed)
        conn.send(stats)
        del requests, responses
    conn.close()


# -- doorbells and rings across processes ------------------------------------------------------


def echo_child(channel: str, capacity: int, spin_max: float | None) -> None:
    """Echo every request as a response; b"stop" ends, b"close" closes the responses first."""
    seg = attach_channel(channel, capacity)
    try:
        requests, responses = channel_rings(seg, capacity, spin_policy(spin_max))
        while True:
            msg = requests.get(timeout=STEP_TIMEOUT)
            if msg == b"stop":
                break
            if msg == b"close":
                responses.close_producer()
                break
            responses.put(msg, timeout=STEP_TIMEOUT)
        del requests, responses
    finally:
        seg.close()


# Two doorbells and their counters in a plain 4096-byte segment.
BELL_SEGMENT = 4096
PING_BELL, PONG_BELL, PING_COUNT, PONG_COUNT = 128, 192, 256, 320
_U32 = struct.Struct("<I")


def bell_pair(seg: Segment) -> tuple[Doorbell, Doorbell]:
    """(ping, pong) doorbells over a bell segment."""
    return Doorbell(seg.buf, PING_BELL, seg.address), Doorbell(seg.buf, PONG_BELL, seg.address)


def bell_count(seg: Segment, offset: int) -> int:
    return int(_U32.unpack_from(seg.buf, offset)[0])


def bell_pong_child(name: str, rounds: int, spin_max: float | None) -> None:
    """Answer each ping: wait until the ping count reaches i, publish i as the pong count, ring.

    Sleeps never end by themselves (``max_sleep`` of a minute), so a lost
    wake-up fails the wait with its timeout instead of costing 50 ms.
    """
    seg = Segment.attach(name, BELL_SEGMENT)
    try:
        ping, pong = bell_pair(seg)
        spin = spin_policy(spin_max)
        for i in range(1, rounds + 1):
            ping.wait(lambda i=i: bell_count(seg, PING_COUNT) == i, STEP_TIMEOUT, spin=spin, max_sleep=60)
            _U32.pack_into(seg.buf, PONG_COUNT, i)
            pong.ring()
        del ping, pong
    finally:
        seg.close()


def burst_message(i: int) -> bytes:
    return i.to_bytes(4, "little") * (1 + i % 50)


def burst_child(channel: str, capacity: int, count: int, linger: float) -> None:
    """Put ``count`` messages on the responses ring (blocking for room), linger, then close it."""
    seg = attach_channel(channel, capacity)
    try:
        _, responses = channel_rings(seg, capacity, SpinPolicy())
        for i in range(count):
            responses.put(burst_message(i), timeout=STEP_TIMEOUT)
        if linger:
            time.sleep(linger)  # the parent is blocked in get() meanwhile, not sleeping
        responses.close_producer()
        del responses
    finally:
        seg.close()


def idle_child(channel: str, capacity: int) -> None:
    """Attach, then wait for b"stop" (the parent may kill it instead)."""
    seg = attach_channel(channel, capacity)
    try:
        requests, _ = channel_rings(seg, capacity)
        requests.get(timeout=60)
        del requests
    finally:
        seg.close()


# -- the janitor -------------------------------------------------------------------------


def holder_child(conn: Connection, plain: int, slab_blocks: int) -> None:
    """Create segments (plain and through a slab), report their names, wait to be killed."""
    segments = [Segment.create(4096) for _ in range(plain)]
    slab = Slab(segment_size=64 * KIB)
    for _ in range(slab_blocks):
        slab.alloc(30 * KIB)
    names = [s.name for s in segments] + [name for _, name, _ in slab.take_new_segments()]
    conn.send(names)
    time.sleep(60)  # idle until SIGKILL; never reached in a passing test
    raise SystemExit(3)


def janitor_child(go: Connection, result: Connection) -> None:
    """On the go signal, run the janitor once and report what it removed."""
    from rlmesh.shm import janitor

    if not go.poll(STEP_TIMEOUT):
        raise SystemExit(4)
    go.recv()
    removed = janitor.clean(grace=0)
    result.send([info.name for info in removed])
    result.close()


def counter_message(i: int) -> bytes:
    return i.to_bytes(8, "little")


def flood_child(channel: str, capacity: int, count: int) -> None:
    """Put ``count`` numbered messages as fast as the ring takes them; check the tail never jumps.

    A tail published non-atomically (transiently 0) shows up here as more
    pending bytes than the ring holds.
    """
    seg = attach_channel(channel, capacity)
    try:
        requests, _ = channel_rings(seg, capacity, SpinPolicy())
        for i in range(count):
            pending = requests.pending()
            if not 0 <= pending <= capacity:
                raise SystemExit(5)
            requests.put(counter_message(i), timeout=STEP_TIMEOUT)
        del requests
    finally:
        seg.close()
