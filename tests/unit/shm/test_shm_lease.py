"""PeerMemory and leases: zero-copy views of an owner's blocks, and forged handles."""

from __future__ import annotations

import gc
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from rlmesh.errors import ClosedError, InvalidHandle, ShmError
from rlmesh.shm import Handle, PeerMemory, Segment, Slab


class Pair:
    """An owner's slab and a peer's table with the slab's segments attached."""

    def __init__(self) -> None:
        self.slab = Slab(segment_size=1 << 16)
        self.peer = PeerMemory()
        self.segments: dict[int, Segment] = {}

    def announce(self) -> None:
        for sid, name, size in self.slab.take_new_segments():
            self.segments[sid] = self.peer.add_segment(sid, name, size)

    def close(self) -> None:
        self.peer.close()
        self.slab.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    try:
        yield p
    finally:
        p.close()


def test_view_is_zero_copy_and_read_only(pair: Pair) -> None:
    block = pair.slab.alloc(1000)
    pair.slab.view(block)[:] = bytes(range(250)) * 4
    pair.announce()
    view = pair.peer.view(block.handle)
    assert view.readonly and view.nbytes == 1000 and view.format == "B"
    arr = np.frombuffer(view, np.uint8)
    assert arr.ctypes.data == pair.segments[block.segment].address + block.offset
    assert arr.ctypes.data % 64 == 0
    assert bytes(view) == bytes(range(250)) * 4
    pair.slab.view(block)[0] = 255  # the owner's write shows through: same memory
    assert view[0] == 255 and arr[0] == 255
    with pytest.raises(TypeError):
        view[0] = 1
    del arr, view


def test_lease_lives_as_long_as_any_derived_view(pair: Pair) -> None:
    block = pair.slab.alloc(256)
    pair.announce()
    view = pair.peer.view(block.handle)
    piece = view[10:20]
    arr = np.frombuffer(view, np.uint8).reshape(16, 16)
    cast = view.cast("Q")
    del view
    gc.collect()
    assert pair.peer.outstanding == 1
    assert pair.peer.take_releases() == []
    del piece, cast
    gc.collect()
    assert pair.peer.take_releases() == []
    del arr
    gc.collect()
    assert pair.peer.outstanding == 0
    assert pair.peer.take_releases() == [block.handle]
    assert pair.peer.take_releases() == []  # reported once
    assert pair.segments[block.segment].pins == 0


def test_each_view_is_its_own_lease(pair: Pair) -> None:
    blocks = [pair.slab.alloc(64) for _ in range(5)]
    pair.announce()
    views = [pair.peer.view(b.handle) for b in blocks]
    assert pair.peer.outstanding == 5
    assert pair.segments[blocks[0].segment].pins == 5
    del views[3], views[1]
    gc.collect()
    assert sorted(pair.peer.take_releases()) == sorted([blocks[1].handle, blocks[3].handle])
    views.clear()
    gc.collect()
    assert len(pair.peer.take_releases()) == 3


def test_views_dying_on_other_threads_queue_their_release(pair: Pair) -> None:
    blocks = [pair.slab.alloc(64) for _ in range(64)]
    pair.announce()
    views = [pair.peer.view(b.handle) for b in blocks]
    chunks = [views[i::4] for i in range(4)]
    views.clear()

    def drop(chunk: list[memoryview]) -> None:
        chunk.clear()

    threads = [threading.Thread(target=drop, args=(c,)) for c in chunks]
    del chunks
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
        assert not t.is_alive()
    gc.collect()
    assert sorted(pair.peer.take_releases()) == sorted(b.handle for b in blocks)
    assert pair.peer.outstanding == 0


def test_zero_length_view(pair: Pair) -> None:
    block = pair.slab.alloc(0)
    pair.announce()
    view = pair.peer.view(block.handle)
    assert view.nbytes == 0
    del view
    gc.collect()
    assert pair.peer.take_releases() == [block.handle]


def test_views_stay_valid_after_the_peer_memory_closes(pair: Pair) -> None:
    block = pair.slab.alloc(64)
    pair.slab.view(block)[:4] = b"live"
    pair.announce()
    seg = pair.segments[block.segment]
    view = pair.peer.view(block.handle)
    pair.peer.close()
    assert pair.peer.closed
    assert not seg.closed
    assert bytes(view[:4]) == b"live"
    with pytest.raises(ClosedError):
        pair.peer.view(block.handle)
    with pytest.raises(ClosedError):
        pair.peer.add_segment(9, seg.name, seg.size)
    del view
    gc.collect()
    assert seg.closed
    pair.peer.close()  # idempotent


# -- the table of segments ----------------------------------------------------------------


def test_add_segment_refuses_a_taken_id(pair: Pair) -> None:
    pair.slab.alloc(64)
    ((sid, name, size),) = pair.slab.take_new_segments()
    pair.peer.add_segment(sid, name, size)
    with pytest.raises(ShmError, match="already attached"):
        pair.peer.add_segment(sid, name, size)


@pytest.mark.parametrize("bad_id", [-1, True, 1.0, "1", None])
def test_add_segment_refuses_invalid_ids(pair: Pair, bad_id: Any) -> None:
    pair.slab.alloc(64)
    ((_, name, size),) = pair.slab.take_new_segments()
    with pytest.raises(ShmError):
        pair.peer.add_segment(bad_id, name, size)
    assert pair.peer.segment_ids == []


def test_read_write_peer_memory(pair: Pair) -> None:
    block = pair.slab.alloc(64)
    ((sid, name, size),) = pair.slab.take_new_segments()
    with PeerMemory(readonly=False) as rw:
        seg = rw.add_segment(sid, name, size)
        assert not seg.readonly
        seg.buf[block.offset] = 77
        assert pair.slab.view(block)[0] == 77


# -- forged handles ----------------------------------------------------------------------


def forged_handles(block: Any, seg_size: int) -> list[Handle]:
    s, g, o = block.segment, block.generation, block.offset
    return [
        Handle(s + 1, g, o, 8),  # never announced
        Handle(999, g, o, 8),
        Handle(2**63 - 1, g, o, 8),
        Handle(s, g, o + 1, 8),  # misaligned
        Handle(s, g, o + 32, 8),
        Handle(s, g, 2**64 - 32, 8),  # -32 as a u64: misaligned as well as out of range
        Handle(s, g, 0, 8),  # the header is not a block
        Handle(s, g, seg_size + 64, 0),  # past the end
        Handle(s, g, 2**63 - 64, 1),
        Handle(s, g, 2**64 - 64, 1),
        Handle(s, g, o, seg_size - o + 1),  # runs off the end
        Handle(s, g, o, seg_size),
        Handle(s, g, o, 2**63 - 1),
        Handle(s, g, o, 2**64 - 32),
        Handle(s, g, seg_size - 64, 65),
        Handle(s, g, o, -1),  # only a handle built by hand gets these past decode
        Handle(s, g, -64, 8),
        Handle(s, g, float(o), 8),  # type: ignore[arg-type]
        Handle(s, g, o, 8.0),  # type: ignore[arg-type]
    ]


def test_forged_handles_are_rejected_without_mapping_anything(pair: Pair) -> None:
    block = pair.slab.alloc(128)
    pair.announce()
    seg = pair.segments[block.segment]
    for handle in forged_handles(block, seg.size):
        with pytest.raises(InvalidHandle):
            pair.peer.view(handle)
        gc.collect()
        assert seg.pins == 0, handle
        assert pair.peer.outstanding == 0, handle
        assert pair.peer.take_releases() == [], handle
    # A genuine handle right at the edge still works.
    last = Handle(block.segment, 0, seg.size - 64, 64)
    view = pair.peer.view(last)
    assert view.nbytes == 64
    del view


def test_errors_for_forged_handles_do_not_name_the_segment(pair: Pair) -> None:
    block = pair.slab.alloc(64)
    pair.announce()
    name = pair.segments[block.segment].name
    for handle in forged_handles(block, pair.segments[block.segment].size):
        with pytest.raises(InvalidHandle) as info:
            pair.peer.view(handle)
        assert name not in str(info.value)


def test_a_closed_table_collected_with_its_views_closes_its_segments_quietly() -> None:
    # A failing run leaves tensors in its traceback: the views, their leases and the
    # closed table (whose weakrefs would run the releases) die in one garbage cycle, and
    # the collector drops the weakrefs without calling them, so the last unpin never
    # comes. The segment's close was asked for (its close deferred), so its finalizer
    # must unmap it without "was never closed".
    slab = Slab(segment_size=1 << 16)
    try:
        peer = PeerMemory()
        block = slab.alloc(64)
        for sid, name, size in slab.take_new_segments():
            peer.add_segment(sid, name, size)
        view, lease, _ = peer.lease(block.handle)
        del view  # the lease alone stands for the views (as a Tensor's owner does)
        peer.close()  # deferred: a lease is alive
        cycle: list[Any] = [lease, peer]
        cycle.append(cycle)
        del lease, peer, cycle
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    finally:
        slab.close()
