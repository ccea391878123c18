"""Tensor behaviours written for the published API: list-equal shapes, the sequence protocol."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

from rlmesh import Tensor
from rlmesh._shape import Shape


def test_shapes_and_strides_equal_lists_and_stay_tuples() -> None:
    assert Tensor(b"\x00\x01", [2], "uint8").shape == [2]
    assert Tensor(struct.pack("<d", 2.5), [], "float64").shape == []
    tensor = Tensor(bytes(24), [2, 3], "float32")
    assert tensor.strides == [12, 4]
    assert tensor.shape == [2, 3] and tensor.shape == (2, 3)
    assert tensor.shape != [3, 2] and not (tensor.shape != [2, 3])
    assert [2, 3] == tensor.shape  # the reflected comparison too
    assert hash(tensor.shape) == hash((2, 3))
    assert {tensor.shape: "ok"}[(2, 3)] == "ok"
    assert np.zeros(tensor.shape).shape == (2, 3)
    assert isinstance(tensor.shape, tuple)
    assert tensor.reshape(-1).shape == [6]
    assert tensor.shape + [1] == [2, 3, 1]
    assert [1] + tensor.shape == [1, 2, 3]
    assert (1,) + tensor.shape == (1, 2, 3)
    assert tensor.shape[1:] == [3]
    assert pickle.loads(pickle.dumps(tensor.shape)) == [2, 3]


def test_shape_compares_like_a_tuple_with_everything_else() -> None:
    shape = Shape((2, 3))
    assert shape != "23" and shape != 23 and shape != [2, 3, 4]
    assert shape == Shape([2, 3])
    assert shape < (3,)
    assert repr(shape) == "(2, 3)"
    assert shape * 2 == [2, 3, 2, 3]


def test_a_1d_batch_iterates_and_indexes_as_python_scalars() -> None:
    batch = Tensor(np.array([0, 7, 2], np.int64).tobytes(), [3], "int64")
    assert list(batch) == [0, 7, 2]
    assert all(type(x) is int for x in batch)
    assert batch[1] == 7 and batch[-1] == 2
    flags = Tensor(np.array([True, False]).tobytes(), [2], "bool")
    assert list(flags) == [True, False] and type(flags[0]) is bool
    rewards = Tensor(np.array([0.5, -1.0]).tobytes(), [2], "float64")
    assert [float(r) for r in rewards] == [0.5, -1.0]
    # Equality with a list stays a tuple's business, not elementwise.
    assert (batch == [0, 7, 2]) is False


def test_an_nd_batch_yields_sub_tensors_sharing_memory() -> None:
    source = np.arange(12, dtype=np.float32).reshape(3, 4)
    batch = Tensor(source.tobytes(), [3, 4], "float32")
    rows = list(batch)
    assert len(rows) == 3
    assert all(isinstance(r, Tensor) and r.shape == [4] for r in rows)
    assert rows[2].tolist() == [8.0, 9.0, 10.0, 11.0]
    assert rows[1].address == batch.address + 16
    assert batch[-1].tolist() == source[-1].tolist()
    cube = Tensor(np.arange(8, dtype=np.int16).tobytes(), [2, 2, 2], "int16")
    assert cube[1][0].tolist() == [4, 5]
    del batch
    assert rows[0].tolist() == [0.0, 1.0, 2.0, 3.0]  # a row keeps the storage alive


def test_indexing_errors_are_clear() -> None:
    batch = Tensor(bytes(16), [2], "int64")
    with pytest.raises(IndexError, match="out of range"):
        batch[2]
    with pytest.raises(IndexError):
        batch[-3]
    with pytest.raises(TypeError, match="integers"):
        batch[0:1]  # type: ignore[index]
    with pytest.raises(TypeError, match="integers"):
        batch[True]
    scalar = Tensor(bytes(8), [], "float64")
    with pytest.raises(TypeError, match="0-d"):
        scalar[0]
    with pytest.raises(TypeError, match="0-d"):
        iter(scalar)
    assert list(Tensor(b"", [0], "float32")) == []
