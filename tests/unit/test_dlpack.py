"""DLPack export and import of rlmesh.Tensor, against numpy and JAX."""

from __future__ import annotations

import ctypes
import gc
import json

import ml_dtypes
import numpy as np
import pytest

from rlmesh import Tensor, _dlpack
from tests.conftest import run_python

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")


def capsule_name(capsule: object) -> bytes | None:
    return _dlpack.capsule_name(capsule)


def floats(n: int = 12) -> Tensor:
    return Tensor(np.arange(n, dtype=np.float32).tobytes(), (3, n // 3), "float32")


def rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_default_capsule_is_legacy_and_versioned_on_request() -> None:
    tensor = floats()
    assert capsule_name(tensor.__dlpack__()) == b"dltensor"
    assert capsule_name(tensor.__dlpack__(max_version=(0, 8))) == b"dltensor"
    versioned = tensor.__dlpack__(max_version=(1, 0))
    assert capsule_name(versioned) == b"dltensor_versioned"
    imported = _dlpack.import_capsule(versioned)
    try:
        assert imported.read_only
        assert imported.address == tensor.address
        assert imported.shape == (3, 4)
        assert imported.dtype.name == "float32"
    finally:
        imported.release()
    assert tensor.__dlpack_device__() == (1, 0)


def test_stream_and_foreign_devices_raise_buffer_error() -> None:
    tensor = floats()
    with pytest.raises(BufferError, match="stream"):
        tensor.__dlpack__(stream=1)
    with pytest.raises(BufferError, match="device"):
        tensor.__dlpack__(dl_device=(2, 0))
    assert capsule_name(tensor.__dlpack__(dl_device=(1, 0))) == b"dltensor"


def test_copy_true_exports_a_copy() -> None:
    tensor = floats()
    imported = _dlpack.import_capsule(tensor.__dlpack__(max_version=(1, 0), copy=True))
    try:
        assert imported.address != tensor.address
        assert ctypes.string_at(imported.address, tensor.nbytes) == tensor.tobytes()
    finally:
        imported.release()


def test_numpy_from_dlpack_shares_memory_read_only() -> None:
    tensor = floats()
    view = np.from_dlpack(tensor)
    assert view.ctypes.data == tensor.address
    assert not view.flags.writeable
    with pytest.raises(ValueError):
        view[0, 0] = 1.0
    np.testing.assert_array_equal(view, np.arange(12, dtype=np.float32).reshape(3, 4))


def test_capsule_keeps_storage_alive_until_the_consumer_deleter_runs() -> None:
    tensor = Tensor(np.arange(10_000, dtype=np.int32).tobytes(), (10_000,), "int32")
    view = np.from_dlpack(tensor)
    address = tensor.address
    del tensor
    gc.collect()
    assert _dlpack.live_exports() >= 1
    assert view.ctypes.data == address
    assert int(view.sum()) == sum(range(10_000))
    del view
    gc.collect()
    assert _dlpack.live_exports() == 0


def test_from_dlpack_copies_numpy_including_strided_sources() -> None:
    source = np.arange(24, dtype=np.int16).reshape(4, 6)
    tensor = Tensor.from_dlpack(source)
    assert tensor.address != source.ctypes.data
    assert tensor.tolist() == source.tolist()
    strided = source[::2, 1::2]
    assert Tensor.from_dlpack(strided).tolist() == strided.tolist()
    transposed = source.T
    assert Tensor.from_dlpack(transposed).tolist() == transposed.tolist()
    assert _dlpack.live_exports() == 0


def test_a_capsule_consumed_twice_raises() -> None:
    capsule = floats().__dlpack__()
    first = Tensor.from_dlpack(capsule)
    assert first.tolist() == floats().tolist()
    with pytest.raises(BufferError, match="already consumed"):
        Tensor.from_dlpack(capsule)
    versioned = floats().__dlpack__(max_version=(1, 0))
    Tensor.from_dlpack(versioned)
    with pytest.raises(BufferError, match="already consumed"):
        Tensor.from_dlpack(versioned)
    del capsule, versioned
    gc.collect()
    assert _dlpack.live_exports() == 0


def test_from_dlpack_rejects_non_producers() -> None:
    with pytest.raises(TypeError):
        Tensor.from_dlpack([1, 2, 3])


def test_unconsumed_capsules_leak_no_memory() -> None:
    tensor = Tensor.zeros((256,), "float64")
    for _ in range(2_000):  # warm up allocator pools
        tensor.__dlpack__()
    gc.collect()
    before = rss_kib()
    for i in range(100_000):
        tensor.__dlpack__(max_version=(1, 0) if i % 2 else None)
    gc.collect()
    grown = rss_kib() - before
    assert _dlpack.live_exports() == 0
    # Each export allocates a few hundred bytes: a leak of 100,000 would be tens of MiB.
    assert grown < 4_096, f"RSS grew by {grown} KiB over 100,000 dropped capsules"


ZERO_COPY_DTYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "uint8",
    "uint16",
    "uint32",
    "float16",
    "bfloat16",
    "float32",
]


@pytest.mark.parametrize("name", ZERO_COPY_DTYPES)
def test_jax_from_dlpack_shares_memory(name: str) -> None:
    dtype = np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)
    source = (np.arange(64) % 3).astype(dtype).reshape(8, 8)
    tensor = Tensor(source.tobytes(), (8, 8), name)
    assert tensor.address % 64 == 0
    array = jnp.from_dlpack(tensor)
    assert array.dtype == dtype
    assert array.unsafe_buffer_pointer() == tensor.address
    assert np.asarray(array).tobytes() == source.tobytes()
    del tensor
    gc.collect()
    # The JAX array holds the storage through the capsule's owner.
    assert np.asarray(array).tobytes() == source.tobytes()
    del array
    gc.collect()
    assert _dlpack.live_exports() == 0


def test_bfloat16_reaches_jax_bit_for_bit() -> None:
    bits = np.array(
        [0x0000, 0x8000, 0x3F80, 0xBF80, 0x7F80, 0xFF80, 0x7FC0, 0x7FC1, 0xFFFF, 0x0001, 0x8001, 0x7F7F],
        dtype=np.uint16,
    )
    tensor = Tensor(bits.tobytes(), bits.shape, "bfloat16")
    array = jnp.from_dlpack(tensor)
    assert array.dtype == jnp.bfloat16
    assert np.asarray(array).view(np.uint16).tolist() == bits.tolist()
    back = Tensor.from_dlpack(array)
    assert back.dtype == "bfloat16"
    assert back.tobytes() == bits.tobytes()


def test_64_bit_dtypes_share_memory_in_x64_mode() -> None:
    out = run_python(
        """
import json, jax, numpy as np
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from rlmesh import Tensor
result = {}
for name in ["int64", "uint64", "float64"]:
    src = np.arange(16).astype(name)
    t = Tensor(src.tobytes(), (16,), name)
    a = jnp.from_dlpack(t)
    same = np.asarray(a).tobytes() == src.tobytes()
    result[name] = [str(a.dtype), a.unsafe_buffer_pointer() == t.address, same]
print(json.dumps(result))
"""
    )
    result = json.loads(out)
    for name in ["int64", "uint64", "float64"]:
        assert result[name] == [name, True, True], result
