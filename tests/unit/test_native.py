"""The C base of Tensor: the buffer protocol on every Python, DLPack lifetimes in C.

These follow the published API's description of ``Tensor`` (a read-only N-D
typed buffer with the struct formats ``? b B h H i I q Q e f d``) and the
DLPack spec's ownership rules, on Python 3.10+ (CI runs 3.11, where a Python
class alone cannot export a buffer).
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import pathlib
import socket
import struct
import sys
import weakref

import ml_dtypes
import numpy as np
import pytest

import rlmesh
from rlmesh import Tensor, _dlpack, _native
from rlmesh.errors import CapsuleConsumedError
from tests.conftest import run_python

PUBLISHED_FORMATS = {
    "bool": "?",
    "int8": "b",
    "uint8": "B",
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float16": "e",
    "float32": "f",
    "float64": "d",
}


def tensor_of(array: np.ndarray) -> Tensor:
    return Tensor(array.tobytes(), list(array.shape), str(array.dtype))


@pytest.mark.parametrize("name", list(PUBLISHED_FORMATS))
def test_memoryview_has_the_published_format_shape_and_strides(name: str) -> None:
    source = (np.arange(6) % 2 if name == "bool" else np.arange(6)).astype(name).reshape(2, 3)
    tensor = tensor_of(source)
    view = memoryview(tensor)
    assert view.format == PUBLISHED_FORMATS[name]
    assert view.itemsize == source.itemsize
    assert view.shape == (2, 3)
    assert view.strides == source.strides
    assert view.ndim == 2
    assert view.readonly
    assert view.c_contiguous
    assert view.obj is tensor
    assert view.nbytes == source.nbytes
    # numpy reads the format (memoryview itself reads "e" only from 3.12 on).
    np.testing.assert_array_equal(np.asarray(view), source)
    assert np.asarray(view).dtype == source.dtype


def test_memoryview_of_a_float32_matrix_indexes_like_the_published_example() -> None:
    tensor = Tensor(struct.pack("<6f", 1, 2, 3, 4, 5, 6), [2, 3], "float32")
    view = memoryview(tensor)
    assert (view.format, view.shape, view.strides, view.readonly) == ("f", (2, 3), (12, 4), True)
    assert view[1, 2] == 6.0
    assert view.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]


def test_zero_d_tensor_views_as_a_scalar() -> None:
    data = struct.pack("<d", 2.5)
    tensor = Tensor(data, [], "float64")
    view = memoryview(tensor)
    assert view.ndim == 0
    assert view.shape == ()
    assert view.tolist() == 2.5
    assert bytes(view) == data
    assert bytes(tensor) == data


def test_empty_tensor_gives_an_empty_view() -> None:
    tensor = Tensor(b"", [3, 0], "int32")
    view = memoryview(tensor)
    assert view.shape == (3, 0)
    assert view.nbytes == 0
    assert bytes(tensor) == b""


def test_writes_through_the_view_raise_type_error() -> None:
    tensor = Tensor(bytes(8), [2], "float32")
    view = memoryview(tensor)
    with pytest.raises(TypeError):
        view[0] = 1.0
    with pytest.raises(TypeError):
        view.cast("B")[0] = 1
    # A writable request is refused outright.
    with pytest.raises(TypeError):
        ctypes.c_char.from_buffer(tensor)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        np.frombuffer(tensor, np.float32).setflags(write=True)
    assert bytes(tensor) == bytes(8)


def test_bfloat16_has_no_buffer_format() -> None:
    tensor = Tensor(bytes(4), [2], "bfloat16")
    with pytest.raises(BufferError, match="no buffer-protocol format"):
        memoryview(tensor)
    with pytest.raises(BufferError, match="no buffer-protocol format"):
        bytes(tensor)
    # The documented ways still work: raw words, and ml_dtypes through asarray.
    assert tensor.buffer.format == "H"
    import rlmesh.numpy

    assert rlmesh.numpy.asarray(tensor).dtype == np.dtype(ml_dtypes.bfloat16)


def test_stdlib_and_numpy_consumers_read_the_bytes() -> None:
    source = np.arange(12, dtype=np.int32).reshape(3, 4)
    tensor = tensor_of(source)
    assert bytes(tensor) == source.tobytes()
    assert hashlib.sha256(tensor).hexdigest() == hashlib.sha256(source.tobytes()).hexdigest()
    assert struct.unpack_from("<2i", tensor, 8) == (2, 3)
    from_buffer = np.frombuffer(tensor, dtype=np.int32)
    assert from_buffer.ctypes.data == tensor.address  # zero-copy
    assert not from_buffer.flags.writeable
    np.testing.assert_array_equal(from_buffer, source.ravel())
    left, right = socket.socketpair()
    with left, right:
        assert left.send(tensor) == tensor.nbytes
        assert right.recv(1024) == source.tobytes()


def test_a_view_keeps_the_tensor_alive_until_released() -> None:
    tensor = Tensor(struct.pack("<4f", 1, 2, 3, 4), [4], "float32")
    alive = weakref.ref(tensor)
    view = memoryview(tensor)
    array = np.frombuffer(tensor, np.float32)
    del tensor
    gc.collect()
    assert alive() is not None
    assert view.tolist() == [1.0, 2.0, 3.0, 4.0]
    view.release()
    gc.collect()
    assert alive() is not None  # the numpy array still holds a view
    assert array.tolist() == [1.0, 2.0, 3.0, 4.0]
    del array
    gc.collect()
    assert alive() is None


def test_a_tensor_in_a_cycle_with_its_owner_is_collected() -> None:
    class Owner:
        tensor: Tensor | None = None

    owner = Owner()
    tensor = Tensor.wrap(bytearray(8), [2], "float32", owner=owner)
    owner.tensor = tensor
    alive = weakref.ref(tensor)
    del owner, tensor
    gc.collect()
    assert alive() is None


def test_simple_buffer_requests_see_plain_bytes() -> None:
    # hashlib and socket ask for PyBUF_SIMPLE; a simple request sees bytes.
    tensor = Tensor(np.arange(3, dtype=np.float64).tobytes(), [3], "float64")
    assert hashlib.md5(tensor).digest() == hashlib.md5(tensor.tobytes()).digest()
    assert memoryview(tensor).cast("B").nbytes == 24


def test_a_leased_shared_memory_tensor_is_zero_copy_and_keeps_its_lease(serve) -> None:
    from tests.envs import CountEnv

    served = serve(CountEnv(limit=10_000, width=4096))  # 16 KiB: slab blocks (smaller travel inline)
    env = served.client()
    assert env.data_plane == "shm"
    env.reset(seed=1)
    held = []
    for _ in range(40):  # far past the ring depth
        obs = env.step(0)[0]
        held.append((memoryview(obs), np.frombuffer(obs, np.float32), bytes(obs), obs.address))
        del obs
    for view, array, copy, address in held:
        # A Unix session's slab is a sealed memfd (named /dev/shm segments are TCP's).
        assert shm_path(address).startswith("/memfd:rlm-")
        assert array.ctypes.data == address
        assert view.tobytes() == copy
    for _ in range(40):
        env.step(1)
    # Every held view still shows its own step: no block was reused under it.
    assert [array[0] for _, array, _, _ in held] == [float(i + 1) for i in range(40)]
    assert [view.tobytes() for view, _, _, _ in held] == [copy for _, _, copy, _ in held]
    assert served.server.stats()["sessions"][0]["leases"] >= 40
    for view, _, _, _ in held:
        view.release()
    del held, view, array
    gc.collect()
    env.step(0)  # the releases ride on this request
    assert served.server.stats()["sessions"][0]["leases"] <= 2


def shm_path(address: int) -> str:
    for line in pathlib.Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= address < hi:
            return fields[5] if len(fields) == 6 else ""
    return ""


# -- DLPack, in C ------------------------------------------------------------------


def test_copy_true_export_is_writable_and_independent() -> None:
    tensor = Tensor(struct.pack("<3f", 1, 2, 3), [3], "float32")
    copied = np.from_dlpack(tensor, copy=True)
    assert copied.flags.writeable
    assert copied.ctypes.data != tensor.address
    copied[0] = 9.0
    assert tensor.tolist() == [1.0, 2.0, 3.0]
    view = np.from_dlpack(tensor)
    assert not view.flags.writeable


def test_a_consumed_capsule_is_both_type_error_and_buffer_error() -> None:
    capsule = Tensor.zeros([2]).__dlpack__()
    Tensor.from_dlpack(capsule)
    with pytest.raises(TypeError, match="already consumed"):
        Tensor.from_dlpack(capsule)
    with pytest.raises(BufferError, match="already consumed"):
        Tensor.from_dlpack(capsule)
    assert issubclass(CapsuleConsumedError, rlmesh.errors.RLMeshError)
    assert _dlpack.live_exports() == 0


def test_numpy_refusing_bfloat16_gives_its_own_error_and_leaks_nothing() -> None:
    tensor = Tensor(bytes(8), [4], "bfloat16")
    before = _dlpack.live_exports()
    for _ in range(1_000):
        with pytest.raises(Exception) as info:
            np.from_dlpack(tensor)
        # numpy's own refusal, never "returned NULL without setting an exception".
        assert not isinstance(info.value, SystemError), info.value
    assert _dlpack.live_exports() == before


def test_no_ctypes_pythonapi_state_anywhere_in_the_package() -> None:
    package = pathlib.Path(rlmesh.__file__).parent
    offenders = [p.name for p in package.rglob("*.py") if "pythonapi" in p.read_text()]
    assert offenders == []


POISONED_LOOP = """
import ctypes, gc, json, sys
poison_first = WHEN == "before"
def poison():
    api = ctypes.pythonapi
    api.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
    api.PyCapsule_IsValid.restype = ctypes.c_int
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyObject_GetBuffer.argtypes = [ctypes.py_object, ctypes.c_void_p, ctypes.c_int]
if poison_first:
    poison()
import numpy as np
from rlmesh import Tensor, _dlpack
if not poison_first:
    poison()
tensor = Tensor(bytes(4096), [1024], "float32")

def rss():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:"))

def once():
    tensor.__dlpack__()
    tensor.__dlpack__(max_version=(1, 0))
    tensor.__dlpack__(max_version=(1, 0), copy=True)
    np.from_dlpack(tensor)

for _ in range(2_000):
    once()
gc.collect()
before = rss()
for _ in range(20_000):
    once()
gc.collect()
grown = rss() - before
capsule = tensor.__dlpack__()
# Third-party code with its own prototypes still works next to rlmesh.
valid = ctypes.pythonapi.PyCapsule_IsValid(capsule, b"dltensor")
name = ctypes.pythonapi.PyCapsule_GetName(capsule)
del capsule
gc.collect()
print(json.dumps({"grown_kib": grown, "live": _dlpack.live_exports(), "valid": valid, "name": name.decode()}))
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_20000_capsule_lifecycles_leak_nothing_next_to_foreign_argtypes(when: str) -> None:
    result = json.loads(run_python(POISONED_LOOP.replace("WHEN", repr(when))))
    assert result["live"] == 0
    assert result["valid"] == 1 and result["name"] == "dltensor"
    # The ctypes destructor leaked 12.8 KB per iteration here (244 MiB in all).
    assert result["grown_kib"] < 2_048, result


def test_the_deleter_runs_once_whether_released_or_collected() -> None:
    tensor = Tensor.zeros([4])
    imported = _dlpack.import_capsule(tensor.__dlpack__(max_version=(1, 0)))
    assert _dlpack.live_exports() == 1
    imported.release()
    imported.release()
    assert _dlpack.live_exports() == 0
    forgotten = _dlpack.import_capsule(tensor.__dlpack__())
    assert _dlpack.live_exports() == 1
    del forgotten
    gc.collect()
    assert _dlpack.live_exports() == 0


def test_foreign_capsules_are_refused_without_consuming_them() -> None:
    with pytest.raises(BufferError, match="expected a DLPack capsule"):
        _dlpack.import_capsule(object())
    with pytest.raises(TypeError):
        _native.capsule_name(b"not a capsule")
    # A capsule with another name (datetime's C API capsule) is not ours to consume.
    import datetime

    other = datetime.datetime_CAPI
    with pytest.raises(BufferError, match="not a DLPack capsule"):
        _dlpack.import_capsule(other)
    assert _native.capsule_name(other) == b"datetime.datetime_CAPI"


@pytest.mark.skipif(sys.version_info < (3, 12), reason="PEP 688 __buffer__ exists from Python 3.12")
def test_pep_688_sees_the_native_buffer() -> None:
    tensor = Tensor(bytes(8), [2], "float32")
    view = tensor.__buffer__(0)
    assert view.nbytes == 8
