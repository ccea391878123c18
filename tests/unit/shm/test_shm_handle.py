"""Handle encoding and the checks Handle.decode makes on what a peer sent."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from rlmesh.errors import InvalidHandle
from rlmesh.shm import Handle
from rlmesh.shm.handle import MAX_FIELD

FIELD = st.integers(min_value=0, max_value=MAX_FIELD - 1)


@settings(max_examples=200, deadline=None)
@given(st.tuples(FIELD, FIELD, FIELD, FIELD))
def test_encode_decode_round_trip_through_msgpack(fields: tuple[int, int, int, int]) -> None:
    handle = Handle(*fields)
    wire = msgpack.packb(handle.encode())
    decoded = Handle.decode(msgpack.unpackb(wire))
    assert decoded == handle
    assert type(decoded) is Handle


def test_decode_accepts_a_tuple() -> None:
    assert Handle.decode((1, 2, 64, 3)) == Handle(1, 2, 64, 3)


def test_largest_field_is_accepted() -> None:
    assert Handle.decode([0, 0, 0, MAX_FIELD - 1]).nbytes == 2**63 - 1


@pytest.mark.parametrize(
    "obj",
    [
        None,
        7,
        "1,2,3,4",
        b"\x01\x02\x03\x04",
        {"segment": 1, "generation": 1, "offset": 64, "nbytes": 8},
        {1, 2, 3, 4},
        [],
        [1, 2, 3],
        [1, 2, 3, 4, 5],
        [[1], 2, 3, 4],
    ],
    ids=repr,
)
def test_decode_rejects_wrong_shapes(obj: Any) -> None:
    with pytest.raises(InvalidHandle):
        Handle.decode(obj)


@pytest.mark.parametrize("position", range(4))
@pytest.mark.parametrize(
    "bad",
    [-1, -(2**63), 2**63, 2**64 - 32, 2**64, 2**100, True, False, 1.0, 64.0, "64", None, b"x"],
    ids=repr,
)
def test_decode_rejects_bad_fields(position: int, bad: Any) -> None:
    fields: list[Any] = [1, 1, 64, 8]
    fields[position] = bad
    with pytest.raises(InvalidHandle):
        Handle.decode(fields)


def test_decode_error_message_is_bounded() -> None:
    with pytest.raises(InvalidHandle) as info:
        Handle.decode(["x" * 10_000, 1, 2, 3])
    assert len(str(info.value)) <= 200


def test_invalid_handle_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Handle.decode([1, 2, 3])
