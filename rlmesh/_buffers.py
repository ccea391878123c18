"""Addresses of buffer-protocol objects, and views that keep an owner alive (layer 1)."""

from __future__ import annotations

import ctypes

try:
    # The first import of the C extension in the package: say how to build it.
    from ._native import buffer_address
except ImportError as exc:  # pragma: no cover - a source tree nobody installed
    raise ImportError(
        "rlmesh's C extension (rlmesh._native) is not built; install rlmesh with pip "
        "(`pip install -e .` in a checkout), which compiles it: it needs a C compiler and "
        "the Python headers"
    ) from exc

__all__ = ["buffer_address", "keepalive_view"]


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
