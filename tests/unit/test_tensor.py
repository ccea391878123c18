from __future__ import annotations

import array
import math

import ml_dtypes
import numpy as np
import pytest

from rlmesh import Tensor
from rlmesh._dtypes import DTYPES
from rlmesh.numpy import asarray

ALL_DTYPES = list(DTYPES)


def np_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name).newbyteorder("<")


def random_array(name: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = np_dtype(name)
    if name == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    # Random bit patterns: covers NaN payloads, infinities and subnormals for floats.
    raw = rng.integers(0, 256, size=math.prod(shape) * dtype.itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


@pytest.mark.parametrize("name", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(), (1,), (5,), (2, 3), (2, 3, 4), (0,), (3, 0, 2)])
def test_byte_exact_round_trip_against_numpy(name: str, shape: tuple[int, ...]) -> None:
    source = random_array(name, shape, seed=len(shape))
    tensor = Tensor(source.tobytes(), shape, name)
    assert tensor.dtype == name
    assert tensor.shape == shape
    assert tensor.ndim == len(shape)
    assert tensor.size == source.size
    assert tensor.nbytes == source.nbytes
    assert tensor.itemsize == source.itemsize
    if source.size:
        assert tensor.strides == source.strides
    assert tensor.device == "cpu"
    assert tensor.is_contiguous()
    assert tensor.tobytes() == source.tobytes()
    back = asarray(tensor)
    assert back.dtype == source.dtype and back.shape == shape
    assert back.tobytes() == source.tobytes()
    assert back.flags.writeable


@pytest.mark.parametrize("name", ALL_DTYPES)
def test_memoryview_is_read_only_and_typed(name: str) -> None:
    source = random_array(name, (2, 3))
    tensor = Tensor(source.tobytes(), (2, 3), name)
    view = tensor.buffer
    assert view.readonly
    assert view.shape == (2, 3)
    assert view.nbytes == source.nbytes
    assert view.tobytes() == source.tobytes()
    expected_format = {"float16": "e", "bfloat16": "H"}.get(name, DTYPES[name].struct_format)
    assert view.format == expected_format
    with pytest.raises(TypeError):
        # memoryview cannot read "e" before Python 3.12; write zero bytes instead.
        view[0, 0] = b"\x00" * view.itemsize if name in ("float16",) else view[0, 0]  # type: ignore[index]


@pytest.mark.parametrize("name", ALL_DTYPES)
def test_storage_is_aligned_and_reshape_is_zero_copy(name: str) -> None:
    tensor = Tensor(random_array(name, (4, 6)).tobytes(), (4, 6), name)
    assert tensor.address % 64 == 0
    reshaped = tensor.reshape(3, -1, 2)
    assert reshaped.shape == (3, 4, 2)
    assert reshaped.address == tensor.address
    assert reshaped.tobytes() == tensor.tobytes()
    assert tensor.reshape([24]).shape == (24,)
    copied = tensor.copy()
    assert copied.address != tensor.address and copied.address % 64 == 0
    assert copied.tobytes() == tensor.tobytes()


def test_numpy_asarray_of_tensor_is_a_zero_copy_read_only_view() -> None:
    tensor = Tensor(np.arange(6, dtype=np.float32).tobytes(), (2, 3), "float32")
    view = np.asarray(tensor)
    assert view.ctypes.data == tensor.address
    assert not view.flags.writeable
    np.testing.assert_array_equal(view, np.arange(6, dtype=np.float32).reshape(2, 3))


def test_view_keeps_storage_alive_after_tensor_is_dropped() -> None:
    tensor = Tensor(np.arange(1000, dtype=np.int64).tobytes(), (1000,), "int64")
    view = tensor.buffer
    arr = np.asarray(tensor)
    del tensor
    import gc

    gc.collect()
    assert view.tolist() == list(range(1000))
    assert arr.sum() == sum(range(1000))


@pytest.mark.parametrize(
    ("buffer", "shape", "dtype", "message"),
    [
        (b"\0" * 7, (2,), "float32", "byte length mismatch"),
        (b"\0" * 8, (3,), "float32", "byte length mismatch"),
        (b"\0" * 8, (2,), "complex64", "unsupported tensor dtype"),
        (b"\0" * 8, (2,), "float8", "unsupported tensor dtype"),
        (b"\0" * 8, (-2,), "float32", ">= 0"),
    ],
)
def test_constructor_validates(buffer: bytes, shape: tuple[int, ...], dtype: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Tensor(buffer, shape, dtype)


def test_constructor_rejects_non_buffers_and_bad_shapes() -> None:
    with pytest.raises(TypeError):
        Tensor([1, 2], (2,), "int64")
    with pytest.raises(TypeError):
        Tensor(b"\0" * 8, ("a",), "int64")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="C-contiguous"):
        Tensor(np.zeros((4, 4), np.float32)[:, ::2], (4, 2), "float32")


def test_constructor_copies_its_input() -> None:
    data = bytearray(np.arange(4, dtype=np.int32).tobytes())
    tensor = Tensor(data, (4,), "int32")
    data[:4] = b"\xff\xff\xff\xff"
    assert tensor.tolist() == [0, 1, 2, 3]
    assert Tensor(array.array("i", [5, 6]), (2,), "int32").tolist() == [5, 6]


def test_reshape_errors() -> None:
    tensor = Tensor.zeros((2, 3), "int8")
    with pytest.raises(ValueError, match="at most one -1"):
        tensor.reshape(-1, -1)
    with pytest.raises(ValueError, match="cannot reshape"):
        tensor.reshape(4, 2)
    with pytest.raises(ValueError, match="cannot reshape"):
        tensor.reshape(4, -1)


def test_wrap_shares_memory_and_keeps_owner_alive() -> None:
    backing = bytearray(np.arange(8, dtype=np.uint16).tobytes())

    class Owner:
        pass

    owner = Owner()
    import weakref

    alive = weakref.ref(owner)
    tensor = Tensor.wrap(backing, (8,), "uint16", owner=owner)
    del owner
    assert alive() is not None
    assert np.asarray(tensor).ctypes.data == np.frombuffer(backing, np.uint8).ctypes.data
    with pytest.raises(ValueError, match="byte length mismatch"):
        Tensor.wrap(backing, (9,), "uint16")
    del tensor
    import gc

    gc.collect()
    assert alive() is None


def test_tolist_item_and_repr() -> None:
    assert Tensor(np.array([1.5, -2.0], np.float16).tobytes(), (2,), "float16").tolist() == [1.5, -2.0]
    bf = np.array([1.0, -0.5, 3.0], ml_dtypes.bfloat16)
    assert Tensor(bf.tobytes(), (3,), "bfloat16").tolist() == [1.0, -0.5, 3.0]
    nested = Tensor(np.arange(6, dtype=np.int64).tobytes(), (2, 3), "int64")
    assert nested.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert Tensor(np.array(True).tobytes(), (), "bool").item() is True
    with pytest.raises(ValueError):
        nested.item()
    assert "shape=[2, 3]" in repr(nested) and "int64" in repr(nested)
    assert len(nested) == 2
    with pytest.raises(TypeError):
        len(Tensor.zeros((), "int8"))


def test_dtype_aliases() -> None:
    assert Tensor.zeros((2,), float).dtype == "float64"
    assert Tensor.zeros((2,), np.float32).dtype == "float32"
    assert Tensor.zeros((2,), np.dtype("uint16")).dtype == "uint16"
    assert Tensor.zeros((2,), ml_dtypes.bfloat16).dtype == "bfloat16"
    assert Tensor.zeros((2,), "bool").tolist() == [False, False]


def test_pickling_a_tensor_copies_it() -> None:
    import pickle

    tensor = Tensor(np.arange(3, dtype=np.float64).tobytes(), (3,), "float64")
    clone = pickle.loads(pickle.dumps(tensor))
    assert clone.tolist() == [0.0, 1.0, 2.0] and clone.address != tensor.address
