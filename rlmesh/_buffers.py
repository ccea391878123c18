"""Addresses of buffer-protocol objects (stdlib ctypes only; layer 0)."""

from __future__ import annotations

import ctypes

__all__ = ["buffer_address", "keepalive_view"]


class _PyBuffer(ctypes.Structure):
    # CPython's Py_buffer; its layout has been stable since 3.3.
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.restype = ctypes.c_int
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.restype = None
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]


def buffer_address(obj: object) -> int:
    """Return the address of the first byte of a buffer-protocol object.

    Works for read-only buffers too (a ``PROT_READ`` mmap, bytes), which
    ``ctypes.c_char.from_buffer`` refuses.

    Raises:
        TypeError: ``obj`` does not support the buffer protocol.
    """
    view = _PyBuffer()
    _get_buffer(obj, ctypes.byref(view), 0)  # PyDLL: a failure raises TypeError
    try:
        return int(view.buf or 0)
    finally:
        _release_buffer(ctypes.byref(view))


def keepalive_view(address: int, nbytes: int, keep: object) -> memoryview:
    """A read-only byte view of ``nbytes`` at ``address`` that keeps ``keep`` alive.

    The view's exporter is a ctypes array carrying ``keep`` as an attribute,
    so every view derived from it (casts, slices, numpy arrays over it) keeps
    ``keep`` (a lease, say) alive too. The caller guarantees the memory stays
    mapped while ``keep`` lives.
    """
    array: ctypes.Array[ctypes.c_char] = (ctypes.c_char * nbytes).from_address(address)
    array.keep = keep  # type: ignore[attr-defined]
    return memoryview(array).cast("B").toreadonly()
