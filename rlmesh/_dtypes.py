"""The tensor dtypes rlmesh carries, and how each maps onto other type systems.

All tensor data is little-endian. This module is pure data: no I/O, no numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DTYPES",
    "DType",
    "DLPACK_BFLOAT",
    "DLPACK_BOOL",
    "DLPACK_FLOAT",
    "DLPACK_INT",
    "DLPACK_UINT",
    "dtype_info",
    "is_float",
    "is_integer",
    "integer_bounds",
]

# DLPack DLDataTypeCode values (dlpack.h).
DLPACK_INT = 0
DLPACK_UINT = 1
DLPACK_FLOAT = 2
DLPACK_BFLOAT = 4
DLPACK_BOOL = 6


@dataclass(frozen=True)
class DType:
    """One tensor element type.

    Attributes:
        name: the canonical name, as numpy spells it ("float32", "bfloat16").
        itemsize: bytes per element.
        struct_format: the format ``memoryview.cast`` accepts for a typed view, or
            None where none exists (float16 and bfloat16: their views are raw
            16-bit words, format "H").
        typestr: the numpy ``__array_interface__`` type string.
        dlpack_code: the DLPack type code.
    """

    name: str
    itemsize: int
    struct_format: str | None
    typestr: str
    dlpack_code: int

    @property
    def view_format(self) -> str:
        """The memoryview format used for views of this dtype."""
        return self.struct_format if self.struct_format is not None else "H"


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("bool", 1, "?", "|b1", DLPACK_BOOL),
        DType("int8", 1, "b", "|i1", DLPACK_INT),
        DType("int16", 2, "h", "<i2", DLPACK_INT),
        DType("int32", 4, "i", "<i4", DLPACK_INT),
        DType("int64", 8, "q", "<i8", DLPACK_INT),
        DType("uint8", 1, "B", "|u1", DLPACK_UINT),
        DType("uint16", 2, "H", "<u2", DLPACK_UINT),
        DType("uint32", 4, "I", "<u4", DLPACK_UINT),
        DType("uint64", 8, "Q", "<u8", DLPACK_UINT),
        # memoryview.cast refuses "e", so float16 views are raw 16-bit words.
        DType("float16", 2, None, "<f2", DLPACK_FLOAT),
        # bfloat16 has no struct format and no numpy typestr of its own; numpy
        # sees its raw 2-byte records, ml_dtypes gives them meaning.
        DType("bfloat16", 2, None, "<V2", DLPACK_BFLOAT),
        DType("float32", 4, "f", "<f4", DLPACK_FLOAT),
        DType("float64", 8, "d", "<f8", DLPACK_FLOAT),
    )
}

# Aliases accepted on input and normalised to the canonical name.
_ALIASES = {
    "bool_": "bool",
    "?": "bool",
    "float": "float64",
    "int": "int64",
    "half": "float16",
    "single": "float32",
    "double": "float64",
    "<f2": "float16",
    "<f4": "float32",
    "<f8": "float64",
    "<i2": "int16",
    "<i4": "int32",
    "<i8": "int64",
    "<u2": "uint16",
    "<u4": "uint32",
    "<u8": "uint64",
    "|i1": "int8",
    "|u1": "uint8",
    "|b1": "bool",
}


def dtype_info(dtype: object) -> DType:
    """Return the :class:`DType` for a dtype name or dtype-like object.

    Accepts canonical names ("float32"), a few aliases ("float", "double"), the
    builtins ``bool``/``int``/``float``, and objects whose ``str()`` is a
    canonical name (numpy dtypes, ml_dtypes' bfloat16, ``jnp.float32``).

    Raises:
        ValueError: the dtype is not one rlmesh supports.
    """
    if isinstance(dtype, DType):
        return dtype
    if dtype is bool:
        return DTYPES["bool"]
    if dtype is int:
        return DTYPES["int64"]
    if dtype is float:
        return DTYPES["float64"]
    name = dtype if isinstance(dtype, str) else getattr(dtype, "__name__", None) or str(dtype)
    if not isinstance(dtype, str) and name not in DTYPES and name not in _ALIASES:
        name = str(dtype)
    info = DTYPES.get(name)
    if info is None:
        alias = _ALIASES.get(name)
        if alias is not None:
            info = DTYPES[alias]
    if info is None:
        raise ValueError(f"unsupported tensor dtype {dtype!r}; supported: {', '.join(DTYPES)}")
    return info


def is_integer(dtype: DType) -> bool:
    """True for the signed and unsigned integer dtypes (not bool)."""
    return dtype.dlpack_code in (DLPACK_INT, DLPACK_UINT)


def is_float(dtype: DType) -> bool:
    """True for float16, bfloat16, float32 and float64."""
    return dtype.dlpack_code in (DLPACK_FLOAT, DLPACK_BFLOAT)


def integer_bounds(dtype: DType) -> tuple[int, int]:
    """The inclusive (min, max) of an integer or bool dtype.

    Raises:
        ValueError: the dtype is a float type.
    """
    bits = dtype.itemsize * 8
    if dtype.dlpack_code == DLPACK_BOOL:
        return 0, 1
    if dtype.dlpack_code == DLPACK_INT:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if dtype.dlpack_code == DLPACK_UINT:
        return 0, (1 << bits) - 1
    raise ValueError(f"{dtype.name} is not an integer dtype")
