from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from rlmesh import Tensor
from rlmesh.errors import DecodeError, InvalidHandle
from rlmesh.net.framing import aligned_buffer
from rlmesh.spaces import Dict, Discrete, Text, Tuple
from rlmesh.spaces._values import tuple_restorer
from rlmesh.wire.codec import EXT_HANDLE, EXT_INLINE, TailBuilder, decode, pack


def encode(value: object) -> tuple[bytes, memoryview, int]:
    tail = TailBuilder()
    head = pack(value, tail)
    data = b"".join(bytes(memoryview(p).cast("B")) for p in tail.parts)
    buf, address = aligned_buffer(len(data))
    buf[:] = data
    return head, buf, address


def test_inline_tensors_round_trip_zero_copy() -> None:
    t = Tensor(struct.pack("<6f", *range(6)), (2, 3), "float32")
    head, tail, address = encode({"obs": [t, 3, "x"], "b": Tensor.zeros((0,), "int8")})
    out = decode(head, tail=tail, tail_address=address)
    assert out["obs"][0].tolist() == t.tolist() and out["obs"][1:] == [3, "x"]
    assert out["obs"][0].address == address  # wraps the received buffer
    assert out["b"].shape == (0,)
    copied = decode(head, tail=tail, tail_address=address, copy_inline=True)
    assert copied["obs"][0].address != address


@pytest.mark.parametrize(
    "record",
    [
        struct.pack("<BBxxQ", 99, 1, 0) + struct.pack("<Q", 1),  # unknown dtype code
        struct.pack("<BBxxQ", 0, 40, 0),  # rank too high
        struct.pack("<BBxxQ", 0, 1, 0),  # missing dims
        struct.pack("<BBxxQ", 11, 1, 0) + struct.pack("<Q", 1 << 60),  # far too many elements
        struct.pack("<BBxxQ", 11, 1, 64) + struct.pack("<Q", 4),  # outside the tail
        struct.pack("<BBxxQ", 11, 1, 3) + struct.pack("<Q", 1),  # misaligned
        b"\0",
    ],
)
def test_forged_inline_records_are_rejected(record: bytes) -> None:
    head = msgpack.packb([msgpack.ExtType(EXT_INLINE, record)])
    buf, address = aligned_buffer(64)
    with pytest.raises(DecodeError):
        decode(head, tail=buf, tail_address=address)


def test_handles_need_a_peer_table() -> None:
    record = struct.pack("<BBxxIQQ", 11, 1, 1, 1, 64) + struct.pack("<Q", 4)
    with pytest.raises(InvalidHandle):
        decode(msgpack.packb([msgpack.ExtType(EXT_HANDLE, record)]))
    with pytest.raises(DecodeError, match="ext type"):
        decode(msgpack.packb(msgpack.ExtType(9, b"")))
    with pytest.raises(DecodeError):
        decode(b"\xc1")
    with pytest.raises(DecodeError):
        decode(msgpack.packb({1: 2}))  # only string keys


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_decoding_random_bytes_never_does_anything_but_raise_cleanly(data: bytes) -> None:
    buf, address = aligned_buffer(128)
    try:
        decode(data, tail=buf, tail_address=address)
    except (DecodeError, InvalidHandle):
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 2))
def test_random_ext_records_are_rejected_or_decode_in_bounds(record: bytes, code: int) -> None:
    buf, address = aligned_buffer(256)
    try:
        out = decode(msgpack.packb(msgpack.ExtType(code, record)), tail=buf, tail_address=address)
    except (DecodeError, InvalidHandle):
        return
    assert isinstance(out, Tensor) and out.nbytes <= 256


def test_tuple_restorer_restores_tuples() -> None:
    spec = Dict({"a": Tuple([Discrete(2), Text(3)]), "b": Discrete(2)}).spec
    fix = tuple_restorer(spec)
    assert fix is not None and fix({"a": [1, "x"], "b": 0}) == {"a": (1, "x"), "b": 0}
    assert tuple_restorer(Dict({"b": Discrete(2)}).spec) is None
    assert tuple_restorer(Tuple([Tuple([Discrete(2)])]).spec)([[1]]) == ((1,),)
