"""The per-step encode and decode paths of the wire codec: reused packers, handle records."""

from __future__ import annotations

import struct
import threading
from typing import Any

import msgpack
import pytest

from rlmesh import Tensor
from rlmesh.errors import DecodeError
from rlmesh.shm import Handle
from rlmesh.wire import codec
from rlmesh.wire.codec import CODE_BY_NAME, TailBuilder, decode, handle_record, pack


class FakePeer:
    """Records the handles a decode leases; hands out a plain buffer."""

    def __init__(self) -> None:
        self.handles: list[Handle] = []
        self.memory = bytearray(1 << 16)

    def lease(self, handle: Handle) -> tuple[memoryview, object, int]:
        self.handles.append(handle)
        return memoryview(self.memory)[: handle.nbytes], self, 0


def test_handle_records_round_trip_with_their_own_fields() -> None:
    peer = FakePeer()
    f32 = CODE_BY_NAME["float32"]
    heads = [pack([20, rid, handle_record(f32, (4,), 3, rid, 64 * rid)]) for rid in range(1, 4)]
    heads.append(pack([20, 9, handle_record(CODE_BY_NAME["uint8"], (2, 5), 7, 11, 4096)]))
    for head in heads:
        decode(head, peer=peer)  # type: ignore[arg-type]
    assert peer.handles == [
        Handle(3, 1, 64, 16),
        Handle(3, 2, 128, 16),
        Handle(3, 3, 192, 16),
        Handle(7, 11, 4096, 10),
    ]
    message = decode(heads[-1], peer=peer)  # type: ignore[arg-type]
    tensor = message[2]
    assert isinstance(tensor, Tensor) and tensor.shape == (2, 5) and str(tensor.dtype) == "uint8"


def test_a_record_built_by_hand_matches_handle_record() -> None:
    record = handle_record(CODE_BY_NAME["int64"], (2, 3), 5, 6, 128)
    assert record == msgpack.ExtType(
        codec.EXT_HANDLE,
        struct.pack("<BBxxIQQ", CODE_BY_NAME["int64"], 2, 5, 6, 128) + struct.pack("<2Q", 2, 3),
    )
    assert msgpack.packb(record) == msgpack.packb(msgpack.ExtType(record.code, record.data))


@pytest.mark.parametrize(
    "data",
    [
        struct.pack("<BBxxIQQ", 11, 1, 0, 0, 0) + struct.pack("<Q", 1 << 41),  # too many elements
        struct.pack("<BBxxIQQ", 11, 2, 0, 0, 0) + struct.pack("<Q", 4),  # fewer dims than the rank
        struct.pack("<BBxxIQQ", 99, 1, 0, 0, 0) + struct.pack("<Q", 4),  # unknown dtype
    ],
)
def test_a_bad_handle_record_is_refused_every_time_and_never_remembered(data: bytes) -> None:
    head = msgpack.packb([20, 1, msgpack.ExtType(codec.EXT_HANDLE, data)])
    known = dict(codec._SHAPES)
    for _ in range(2):
        with pytest.raises(DecodeError):
            decode(head, peer=FakePeer())  # type: ignore[arg-type]
    assert codec._SHAPES == known


def test_pack_in_many_threads_at_once() -> None:
    # One Packer per thread: concurrent sessions never share (or corrupt) one.
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for i in range(2000):
                value: list[Any] = [11, i, n, list(range(n))]
                assert msgpack.unpackb(pack(value)) == value
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []


def test_pack_puts_tensors_in_the_tail_and_refuses_them_without_one() -> None:
    tensor = Tensor(memoryview(b"\x01\x02\x03\x04"), (4,), "uint8")
    tail = TailBuilder()
    head = pack([11, 1, tensor, []], tail)
    assert tail.size == 4
    assert msgpack.unpackb(head)[2].code == codec.EXT_INLINE
    with pytest.raises(TypeError):
        pack([11, 1, tensor, []])
    with pytest.raises(TypeError):
        pack([11, 1, object(), []], TailBuilder())
    assert msgpack.unpackb(pack([1, 2])) == [1, 2]  # a failed pack leaves the packer clean
