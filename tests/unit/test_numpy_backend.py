from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import rlmesh.numpy as rnp
from rlmesh import Tensor
from rlmesh._dtypes import DTYPES
from tests.conftest import run_python


@pytest.mark.parametrize("name", list(DTYPES))
def test_from_array_and_asarray_round_trip_every_dtype(name: str) -> None:
    dtype = np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)
    source = (np.arange(12) % 5).astype(dtype).reshape(3, 4)
    tensor = rnp.from_array(source)
    assert isinstance(tensor, Tensor)
    assert tensor.dtype == name and tensor.shape == (3, 4)
    assert tensor.address % 64 == 0
    back = rnp.asarray(tensor)
    assert back.dtype == dtype
    assert back.tobytes() == source.tobytes()


def test_asarray_is_a_writable_copy() -> None:
    tensor = Tensor(np.arange(4, dtype=np.float32).tobytes(), (4,), "float32")
    obs = rnp.asarray(tensor)
    assert obs.flags.writeable and obs.flags.owndata
    assert obs.ctypes.data != tensor.address
    obs /= 2.0
    assert tensor.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert rnp.asarray(Tensor(np.float64(3.5).tobytes(), (), "float64")).shape == ()


def test_from_array_always_copies() -> None:
    source = np.arange(8, dtype=np.int32)
    tensor = rnp.from_array(source)
    source[:] = -1
    assert tensor.tolist() == list(range(8))


def test_from_array_handles_strides_and_byte_order() -> None:
    source = np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2]
    assert rnp.from_array(source).tolist() == source.tolist()
    big_endian = np.arange(5, dtype=">i4")
    tensor = rnp.from_array(big_endian)
    assert tensor.dtype == "int32" and tensor.tolist() == [0, 1, 2, 3, 4]
    assert tensor.tobytes() == np.arange(5, dtype="<i4").tobytes()


def test_from_array_scalars_become_primitives() -> None:
    assert rnp.from_array(np.float32(1.5)) == 1.5 and type(rnp.from_array(np.float32(1.5))) is float
    assert rnp.from_array(np.int64(3)) == 3 and type(rnp.from_array(np.int64(3))) is int
    assert rnp.from_array(np.array(True)) is True
    assert rnp.from_array(np.array(2, np.uint8)) == 2


def test_from_array_rejects_what_it_cannot_carry() -> None:
    with pytest.raises(TypeError, match="numpy.ndarray"):
        rnp.from_array([1, 2, 3])
    with pytest.raises(ValueError, match="unsupported tensor dtype"):
        rnp.from_array(np.zeros(2, np.complex64))
    with pytest.raises(ValueError, match="unsupported tensor dtype"):
        rnp.from_array(np.array(["a", "b"]))
    with pytest.raises(TypeError):
        rnp.asarray(np.zeros(2))


def test_zero_copy_view_versus_copy() -> None:
    tensor = rnp.from_array(np.arange(6, dtype=np.uint8))
    view = np.from_dlpack(tensor)
    assert view.ctypes.data == tensor.address and not view.flags.writeable
    assert rnp.asarray(tensor).ctypes.data != tensor.address


def test_bfloat16_without_ml_dtypes_names_the_extra() -> None:
    out = run_python(
        """
import sys
sys.modules["ml_dtypes"] = None  # as if it were not installed
import rlmesh.numpy as rnp
from rlmesh import Tensor
t = Tensor(b"\\x80\\x3f" * 2, (2,), "bfloat16")
try:
    rnp.asarray(t)
except ImportError as exc:
    print("ImportError:", exc)
print(rnp.asarray(Tensor(b"\\0" * 8, (2,), "float32")).tolist())
"""
    )
    assert "ImportError:" in out and "rlmesh[bfloat16]" in out
    assert "[0.0, 0.0]" in out


def test_without_numpy_ensure_available_raises_import_error() -> None:
    out = run_python(
        """
import sys
sys.modules["numpy"] = None
import rlmesh.numpy as rnp
for call in (rnp.ensure_available, lambda: rnp.asarray(None)):
    try:
        call()
    except ImportError as exc:
        print("ImportError:", exc)
    except TypeError as exc:
        print("TypeError:", exc)
"""
    )
    assert out.count("rlmesh[numpy]") == 1 and "TypeError" in out


def test_bridge_converts_trees() -> None:
    wire = {"a": Tensor.zeros((2,), "float32"), "b": [3, (Tensor.zeros((), "int8"), "s")]}
    from rlmesh.backends.numpy import BRIDGE

    native = BRIDGE.decode(wire)
    assert isinstance(native["a"], np.ndarray) and native["b"][0] == 3
    assert isinstance(native["b"][1][0], np.ndarray) and native["b"][1][1] == "s"
    again = BRIDGE.encode(native)
    assert isinstance(again["a"], Tensor) and again["b"][1][0] == 0


def test_asarray_of_python_scalars_is_a_writable_0d_array() -> None:
    assert rnp.asarray(1.5).item() == 1.5
    assert rnp.asarray(1.5).shape == ()
    assert rnp.asarray(True).dtype == np.bool_
    assert rnp.asarray(3).shape == () and rnp.asarray(3).dtype == np.int64
    out = rnp.asarray(3)
    out += 1
    assert out == 4
    with pytest.raises(TypeError, match="Python scalar"):
        rnp.asarray("3")
    with pytest.raises(TypeError):
        rnp.asarray(None)  # type: ignore[arg-type]
