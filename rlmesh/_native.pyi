"""Type stubs for the C extension ``rlmesh._native`` (see ``_native.c``)."""

from typing import Any, TypeVar

from ._dtypes import DType

_T = TypeVar("_T", bound="TensorBase")

class TensorBase:
    """The native base of rlmesh.Tensor: its fields and the buffer protocol."""

    _view: memoryview
    _shape: tuple[int, ...]
    _dtype: DType
    _owner: object
    _address: int
    @classmethod
    def _from_parts(
        cls: type[_T], view: memoryview, shape: tuple[int, ...], dtype: DType, owner: object, address: int, /
    ) -> _T: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...

class DLPackImport:
    """A consumed DLPack tensor whose producer's deleter runs once."""

    def release(self) -> None: ...

def dlpack_export(
    owner: object, address: int, shape: tuple[int, ...], code: int, bits: int, versioned: bool, flags: int, /
) -> object: ...
def dlpack_take(
    capsule: object, /
) -> tuple[DLPackImport, int, tuple[int, ...], tuple[int, ...] | None, int, int, int, int, bool]: ...
def capsule_name(obj: object, /) -> bytes | None: ...
def live_exports() -> int: ...
def buffer_address(obj: Any, /) -> int: ...
def memory_barrier() -> None: ...
