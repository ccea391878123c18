"""Slab: aligned blocks, growth by segments, caps, coalescing, and resolving handles."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest
from hypothesis import given, settings, strategies as st

from rlmesh.errors import BusyError, ClosedError, InvalidHandle, ShmCapacityError
from rlmesh.shm import ALIGNMENT, Handle, SegmentKind, Slab
from rlmesh.shm._layout import HEADER, SEGMENT_HEADER


@pytest.fixture
def slab() -> Iterator[Slab]:
    s = Slab(segment_size=1 << 16)
    try:
        yield s
    finally:
        s.close()


def free_extents(slab: Slab) -> dict[int, list[tuple[int, int]]]:
    return {
        sid: list(zip(fl.offsets, fl.sizes, strict=True))
        for sid, fl in slab._free.items()  # the free list is what is under test
    }


def test_every_block_is_64_byte_aligned(slab: Slab) -> None:
    rng = random.Random(1234)
    blocks = [slab.alloc(rng.choice([0, 1, 7, 63, 64, 65, 100, 1000, 4097])) for _ in range(300)]
    segments = slab.segments
    for block in blocks:
        assert block.offset % ALIGNMENT == 0
        assert block.capacity % ALIGNMENT == 0
        assert block.capacity >= max(block.nbytes, 1)
        assert block.address % ALIGNMENT == 0
        assert block.address == segments[block.segment].address + block.offset
        assert block.offset >= SEGMENT_HEADER
        assert block.offset + block.capacity <= segments[block.segment].size


def test_blocks_never_overlap(slab: Slab) -> None:
    rng = random.Random(99)
    blocks = [slab.alloc(rng.randrange(0, 3000)) for _ in range(200)]
    by_segment: dict[int, list[tuple[int, int]]] = {}
    for b in blocks:
        by_segment.setdefault(b.segment, []).append((b.offset, b.offset + b.capacity))
    for extents in by_segment.values():
        extents.sort()
        for (_, end), (start, _) in zip(extents, extents[1:], strict=False):
            assert end <= start


def test_a_thousand_small_blocks_use_one_segment() -> None:
    with Slab() as slab:
        blocks = [slab.alloc(100) for _ in range(1000)]
        assert len(slab.segments) == 1
        assert slab.live_blocks == 1000
        assert len({(b.segment, b.offset) for b in blocks}) == 1000


def test_growth_adds_segments_only_when_full(slab: Slab) -> None:
    per_segment = ((1 << 16) - SEGMENT_HEADER) // 1024
    for _ in range(per_segment):
        slab.alloc(1024)
    assert len(slab.segments) == 1
    slab.alloc(1024)
    assert len(slab.segments) == 2
    assert slab.total_bytes == 2 << 16


def test_a_block_larger_than_a_segment_gets_a_segment_sized_to_fit(slab: Slab) -> None:
    block = slab.alloc(200_000)
    seg = slab.segments[block.segment]
    assert seg.size >= SEGMENT_HEADER + 200_000
    assert seg.size % 4096 == 0
    assert seg.size < SEGMENT_HEADER + 200_000 + 4096 + ALIGNMENT


def test_segments_record_their_kind() -> None:
    with Slab(segment_size=4096, kind=SegmentKind.CHANNEL) as slab:
        block = slab.alloc(64)
        header = HEADER.unpack_from(slab.segments[block.segment].buf, 0)
        assert header[2] == SegmentKind.CHANNEL


def test_take_new_segments_reports_each_segment_once(slab: Slab) -> None:
    assert slab.take_new_segments() == []
    slab.alloc(64)
    first = slab.take_new_segments()
    assert len(first) == 1
    sid, name, size = first[0]
    assert slab.segments[sid].name == name and size == 1 << 16
    assert os.path.exists(f"/dev/shm/{name}")
    slab.alloc(64)
    assert slab.take_new_segments() == []
    slab.alloc(1 << 16)
    slab.alloc(1 << 17)
    later = slab.take_new_segments()
    assert len(later) == 2
    assert {s for s, _, _ in later}.isdisjoint({sid})
    assert slab.take_new_segments() == []


def test_max_bytes_gives_capacity_error() -> None:
    with Slab(segment_size=1 << 16, max_bytes=2 << 16) as capped:
        capped.alloc(60_000)
        capped.alloc(60_000)
        with pytest.raises(ShmCapacityError) as info:
            capped.alloc(60_000)
        assert info.value.needed == 1 << 16
        assert info.value.available == 0
        assert "131,072" in str(info.value)
        assert len(capped.segments) == 2
        with Slab(segment_size=1 << 16, max_bytes=1000) as tiny, pytest.raises(ShmCapacityError) as info:
            tiny.alloc(1)
        assert info.value.available == 1000


def test_alloc_rejects_negative_sizes(slab: Slab) -> None:
    with pytest.raises(ValueError):
        slab.alloc(-1)


def test_segment_size_must_hold_a_block() -> None:
    with pytest.raises(ValueError):
        Slab(segment_size=32)


def test_double_free_and_foreign_blocks_raise(slab: Slab) -> None:
    block = slab.alloc(64)
    slab.free(block)
    with pytest.raises(InvalidHandle):
        slab.free(block)
    with Slab(segment_size=1 << 16) as other:
        foreign = other.alloc(64)
        with pytest.raises(InvalidHandle):
            slab.free(foreign)


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=20_000), min_size=1, max_size=60),
    data=st.data(),
)
def test_free_coalesces_back_to_one_extent_per_segment(sizes: list[int], data: st.DataObject) -> None:
    with Slab(segment_size=1 << 16) as slab:
        live = []
        for size in sizes:
            live.append(slab.alloc(size))
            # Free a random live block now and then, so frees interleave with allocs.
            if live and data.draw(st.booleans()):
                slab.free(live.pop(data.draw(st.integers(0, len(live) - 1))))
        order = data.draw(st.permutations(range(len(live))))
        for i in order:
            slab.free(live[i])
        assert slab.live_blocks == 0
        segments = slab.segments
        extents = free_extents(slab)
        assert set(extents) == set(segments)
        for sid, seg in segments.items():
            assert extents[sid] == [(SEGMENT_HEADER, seg.size - SEGMENT_HEADER)]


def test_freed_space_is_reused(slab: Slab) -> None:
    a = slab.alloc(1000)
    slab.alloc(64)
    slab.free(a)
    c = slab.alloc(900)
    assert (c.segment, c.offset) == (a.segment, a.offset)


# -- resolve: the owner's check of a handle a peer sent back ------------------------------


def test_resolve_returns_the_live_block(slab: Slab) -> None:
    block = slab.alloc(100)
    assert slab.resolve(block.handle) is block
    assert slab.resolve(Handle(block.segment, block.generation, block.offset, block.capacity)) is block
    assert slab.resolve(Handle(block.segment, block.generation, block.offset, 0)) is block


def test_resolve_rejects_a_stale_generation_after_renew(slab: Slab) -> None:
    block = slab.alloc(100)
    old = block.handle
    slab.renew(block)
    assert block.generation > old.generation
    with pytest.raises(InvalidHandle, match="stale"):
        slab.resolve(old)
    assert slab.resolve(block.handle) is block


def test_resolve_rejects_a_handle_to_a_freed_and_reallocated_block(slab: Slab) -> None:
    block = slab.alloc(100)
    old = block.handle
    slab.free(block)
    with pytest.raises(InvalidHandle):
        slab.resolve(old)
    again = slab.alloc(100)
    assert (again.segment, again.offset) == (old.segment, old.offset)
    with pytest.raises(InvalidHandle, match="stale"):
        slab.resolve(old)
    assert slab.resolve(again.handle) is again


def test_generations_are_unique(slab: Slab) -> None:
    blocks = [slab.alloc(64) for _ in range(50)]
    for b in blocks[::2]:
        slab.renew(b)
    assert len({b.generation for b in blocks}) == 50


@pytest.mark.parametrize(
    "field, value",
    [
        ("segment", 0),
        ("segment", 2),
        ("segment", 2**63 - 1),
        ("segment", 2**64 - 32),
        ("offset", 0),
        ("offset", 32),
        ("offset", 128),
        ("offset", 2**63 - 64),
        ("offset", 2**64 - 32),
        ("offset", -64),
        ("nbytes", 129),
        ("nbytes", 2**63 - 1),
        ("nbytes", 2**64 - 32),
        ("nbytes", -1),
        ("generation", 0),
        ("generation", 2**63 - 1),
    ],
)
def test_resolve_rejects_forged_handles(slab: Slab, field: str, value: int) -> None:
    block = slab.alloc(100)  # capacity 128, at offset 64
    assert (block.offset, block.capacity) == (64, 128)
    forged = block.handle._replace(**{field: value})
    with pytest.raises(InvalidHandle):
        slab.resolve(forged)
    assert slab.resolve(block.handle) is block


def test_decode_rejects_what_resolve_would_otherwise_see(slab: Slab) -> None:
    block = slab.alloc(100)
    for bad in (2**63, 2**64 - 32):
        with pytest.raises(InvalidHandle):
            Handle.decode([block.segment, block.generation, bad, 8])
        with pytest.raises(InvalidHandle):
            Handle.decode([block.segment, block.generation, block.offset, bad])


# -- views and closing ------------------------------------------------------------------


def test_view_covers_nbytes_and_rejects_more_than_capacity(slab: Slab) -> None:
    block = slab.alloc(100)
    view = slab.view(block)
    assert view.nbytes == 100 and not view.readonly
    view.release()
    assert slab.view(block, 128).nbytes == 128
    with pytest.raises(ValueError):
        slab.view(block, 129)


def test_close_with_a_live_view_raises_busy_then_closes_later() -> None:
    slab = Slab(segment_size=1 << 16)
    block = slab.alloc(64)
    name = slab.segments[block.segment].name
    view = slab.view(block)
    with pytest.raises(BusyError):
        slab.close()
    assert slab.closed
    assert os.path.exists(f"/dev/shm/{name}")
    with pytest.raises(ClosedError):
        slab.alloc(64)
    view.release()
    slab.close()
    assert not os.path.exists(f"/dev/shm/{name}")
    assert slab.segments == {}
    slab.close()


def test_free_after_close_is_a_no_op() -> None:
    slab = Slab(segment_size=1 << 16)
    block = slab.alloc(64)
    slab.close()
    slab.free(block)
    with pytest.raises(InvalidHandle):
        slab.resolve(block.handle)
